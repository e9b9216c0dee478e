#!/usr/bin/env bash
# Every task beyond image classification, CPU-sized: dense; SNIP, GraSP, SynFlow and random at initialisation
# (90%); EarlyCroP unstructured (90%) and structured (50% of units); activation density where the model has
# ReLU modules. Each domain's runs go to the results store in $OUT/<domain> (and its runs.jsonl);
# `earlyprune report $OUT/<domain>` makes the tables. Runs already in a store are skipped, so a killed script
# resumes by running it again.
#
#   DOMAINS="regression text lm" SEEDS="0 1" JOBS=2 benchmarks/tasks_cpu.sh
set -euo pipefail
OUT=${OUT:-results/tasks}
DATA=${DATA:-../shared/data}
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
DOMAINS=${DOMAINS:-"regression text lm"}
EARLYPRUNE=${EARLYPRUNE:-.venv/bin/earlyprune}

declare -A RECIPE=(
  # California Housing, MLP 128-64, MSE; RMSE in $100k
  [regression]="--dataset california-housing --model mlp-regressor --epochs 20 --batch-size 100 --optimizer adam --lr 0.001 --weight-decay 0 --lr-schedule cosine"
  # SST-2, Kim's text CNN at half width, cross-entropy; accuracy
  [text]="--dataset sst2 --model textcnn --width 0.5 --epochs 6 --batch-size 50 --optimizer adam --lr 0.001 --weight-decay 0 --lr-schedule cosine"
  # Tiny Shakespeare, 2-layer LSTM LM at half width (hidden 100), 3,000 windows of 128 characters; perplexity
  [lm]="--dataset tinyshakespeare --model lstm-lm --width 0.5 --train-subset 3000 --epochs 4 --batch-size 50 --optimizer adam --lr 0.003 --weight-decay 0 --lr-schedule cosine"
)
declare -A RELU=([regression]=1 [text]=1 [lm]=0)
RUNS=(
  "--method dense"
  "--method snip --sparsity 0.9"
  "--method grasp --sparsity 0.9"
  "--method synflow --sparsity 0.9"
  "--method random --sparsity 0.9"
  "--method crop --sparsity 0.9 --when early"
  "--method crop --sparsity 0.5 --when early --structured"
)
for domain in $DOMAINS; do
  mkdir -p "$OUT/$domain"
  for seed in $SEEDS; do
    for run in "${RUNS[@]}"; do
      echo "${RECIPE[$domain]:?unknown domain $domain} --seed $seed $run --out $OUT/$domain/runs.jsonl --store $OUT/$domain"
    done
    if [ "${RELU[$domain]}" = 1 ]; then
      echo "${RECIPE[$domain]} --seed $seed --method activation_density --prune-every 2 --out $OUT/$domain/runs.jsonl --store $OUT/$domain"
    fi
  done
done | xargs -P "$JOBS" -L 1 $EARLYPRUNE run --data-dir "$DATA" --device cpu --threads "$THREADS" --skip-existing \
  >> "$OUT/log.txt" 2>&1
