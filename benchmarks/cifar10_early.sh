#!/usr/bin/env bash
# EarlyCroP against pruning at initialisation, and activation-density pruning, on CIFAR-10: every run of
# one model with the same schedule; each run is added to the results store in $OUT (and $OUT/runs.jsonl);
# `earlyprune report $OUT` makes the tables and plots.
#
# Defaults are sized for a 2-core CPU: ResNet-20 at half width, a stratified 10,000-image training subset,
# 8 epochs, cosine schedule, two runs at a time. On a GPU, for example:
#   DEVICE=cuda WIDTH=1 SUBSET= EPOCHS=20 JOBS=4 OUT=results/cifar10-gpu benchmarks/cifar10_early.sh
# RUNS picks configurations by name (default: all of them, listed below). Runs already in the store are
# skipped, so a killed script resumes by running it again.
set -euo pipefail
OUT=${OUT:-results/cifar10-early}
DATA=${DATA:-../shared/data}
MODEL=${MODEL:-resnet20}
WIDTH=${WIDTH:-0.5}
SUBSET=${SUBSET-10000}
EPOCHS=${EPOCHS:-8}
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}
EARLYPRUNE=${EARLYPRUNE:-.venv/bin/earlyprune}
RUNS=${RUNS:-"dense snip90 crop90 early90 early98 early-s50 early-s75 ad"}

declare -A CONFIG=(
  [dense]="--method dense"
  [snip90]="--method snip --sparsity 0.9"
  [crop90]="--method crop --sparsity 0.9"
  [early90]="--method crop --sparsity 0.9 --when early"
  [early98]="--method crop --sparsity 0.98 --when early"
  [early-s50]="--method crop --sparsity 0.5 --when early --structured"
  [early-s75]="--method crop --sparsity 0.75 --when early --structured"
  [early-s90]="--method crop --sparsity 0.9 --when early --structured"
  [ad]="--method activation_density --prune-every 2"
)
mkdir -p "$OUT"
for seed in $SEEDS; do
  for name in $RUNS; do
    echo "--seed $seed ${CONFIG[$name]:?unknown run name $name (known: ${!CONFIG[*]})}"
  done
done | xargs -P "$JOBS" -L 1 $EARLYPRUNE run --dataset cifar10 --data-dir "$DATA" --model "$MODEL" \
  --width "$WIDTH" ${SUBSET:+--train-subset "$SUBSET"} --epochs "$EPOCHS" --batch-size 128 --lr 0.1 \
  --lr-schedule cosine --device "$DEVICE" --threads "$THREADS" --out "$OUT/runs.jsonl" --store "$OUT" --skip-existing \
  >> "$OUT/log.txt" 2>&1
