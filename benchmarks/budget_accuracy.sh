#!/usr/bin/env bash
# Accuracy of cost-aware structured pruning (default: MNIST, LeNet-5, CPU-sized): dense; random channels and CroP at
# 50% of the channels (the criterion's own ranking); CroP at 50% of the channels chosen per unit of FLOPs
# (--budget channels=0.5); CroP to 25% of the dense FLOPs (--budget flops=0.25). All pruned at initialisation,
# then trained for $EPOCHS epochs on the first $SUBSET training images; tested on all 10,000.
#
#   SEEDS="0 1" benchmarks/budget_accuracy.sh && earlyprune report results/budget-mnist-lenet5
#   DATASET=cifar10 MODEL=resnet20 BATCH=128 EPOCHS=4 SUBSET=10000 SEEDS=0 benchmarks/budget_accuracy.sh
set -euo pipefail
DATASET=${DATASET:-mnist}
MODEL=${MODEL:-lenet5}
BATCH=${BATCH:-100}
OUT=${OUT:-results/budget-$DATASET-$MODEL}
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
EPOCHS=${EPOCHS:-3}
SUBSET=${SUBSET:-20000}
DATA=${DATA:-../shared/data}
EARLYPRUNE=${EARLYPRUNE:-.venv/bin/earlyprune}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for run in "--method dense" "--method random --structured --sparsity 0.5" "--method crop --structured --sparsity 0.5" \
             "--method crop --structured --budget channels=0.5" "--method crop --structured --budget flops=0.25"; do
    echo "--seed $seed $run"
  done
done | xargs -P "$JOBS" -L 1 $EARLYPRUNE run --dataset "$DATASET" --data-dir "$DATA" --model "$MODEL" --epochs "$EPOCHS" \
  --train-subset "$SUBSET" --batch-size "$BATCH" --device cpu --threads 1 --out "$OUT/runs.jsonl" --store "$OUT" \
  --skip-existing >> "$OUT/log.txt" 2>&1
