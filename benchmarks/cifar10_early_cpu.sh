#!/usr/bin/env bash
# EarlyCroP against pruning at initialisation on CIFAR-10, sized for a 2-core CPU:
# ResNet-20 at half width, a stratified 10,000-image training subset, 8 epochs, cosine schedule.
# Every run is added to the store in $OUT; `earlyprune report $OUT` makes the tables and plots.
set -euo pipefail
OUT=${OUT:-results/cifar10-early}
DATA=${DATA:-../shared/data}
SEEDS=${SEEDS:-"0 1"}
run() { .venv/bin/earlyprune run --dataset cifar10 --data-dir "$DATA" --model resnet20 --width 0.5 \
          --train-subset 10000 --epochs 8 --batch-size 128 --lr 0.1 --lr-schedule cosine \
          --threads ${THREADS:-1} --out "$OUT/runs.jsonl" --store "$OUT" "$@" > /dev/null; }
for seed in $SEEDS; do
  run --seed "$seed" --method dense &
  run --seed "$seed" --method snip --sparsity 0.9
  wait
  run --seed "$seed" --method crop --sparsity 0.9 &
  run --seed "$seed" --method crop --sparsity 0.9 --when early
  wait
  run --seed "$seed" --method crop --sparsity 0.98 --when early &
  run --seed "$seed" --method crop --sparsity 0.5 --when early --structured
  wait
  run --seed "$seed" --method crop --sparsity 0.75 --when early --structured &
  run --seed "$seed" --method activation_density --prune-every 2
  wait
done
