#!/usr/bin/env bash
# Activation-density pruning's claim on a CPU schedule (Foldy-Porto et al., arXiv 2002.02949: networks
# "compressed at different epochs" train at "1.6x-3.2x lower" training compute "at near iso-accuracy" with
# a dense network trained for as long). For each model, the dense run and activation density resizing
# every P epochs up to epoch 2P (two resizes: `--prune-every P --option last_epoch=2P`), for P in $PERIODS,
# all for the same number of epochs. Stratified 10,000-image CIFAR-10 subset, cosine schedule, tested on all
# 10,000 test images. Runs go to the results store $OUT; `earlyprune report $OUT` draws accuracy against
# training FLOPs. Runs already in the store are skipped (a killed script resumes).
#
#   SEEDS=0 JOBS=2 benchmarks/cifar10_density.sh
set -euo pipefail
OUT=${OUT:-results/cifar10-density}
SEEDS=${SEEDS:-0}
JOBS=${JOBS:-2}
EPOCHS=${EPOCHS:-8}
PERIODS=${PERIODS:-"1 2 3"}
MODELS=${MODELS:-"vgg16:0.25 resnet20:0.5"}
DATA=${DATA:-../shared/data}
EARLYPRUNE=${EARLYPRUNE:-.venv/bin/earlyprune}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for spec in $MODELS; do
    model=${spec%%:*}; width=${spec#*:}
    common="--model $model --width $width --seed $seed"
    echo "$common --method dense"
    for p in $PERIODS; do
      echo "$common --method activation_density --prune-every $p --option last_epoch=$((2 * p))"
    done
  done
done | xargs -P "$JOBS" -L 1 $EARLYPRUNE run --dataset cifar10 --data-dir "$DATA" --train-subset 10000 \
  --epochs "$EPOCHS" --batch-size 128 --lr 0.1 --lr-schedule cosine --device cpu --threads 1 \
  --out "$OUT/runs.jsonl" --store "$OUT" --skip-existing >> "$OUT/log.txt" 2>&1
