#!/usr/bin/env bash
# Reinforcement learning, CPU-sized: DQN on CartPole-v1 (gymnasium: pip install earlyprune[rl]) with the
# dqn-mlp Q-network (256-256). Dense; SNIP, GraSP, SynFlow and random at initialisation (90%, scored on
# random-policy transitions); EarlyCroP unstructured (90%) and structured (50% of the hidden units), scored on
# the replay buffer; activation density. An epoch is 1,000 environment steps (--steps-per-epoch); RL
# Baselines3 Zoo's tuned CartPole DQN (Adam 2.3e-3, batch 64; the agent's other hyperparameters are
# earlyprune.rl.DQNConfig's defaults) takes 50 epochs; here 25 (25,000 steps) with a cosine learning rate, to
# fit a loaded 2-core machine (EPOCHS=50 SCHEDULE=constant for the Zoo's). The metric is the greedy policy's mean return over
# ten fixed evaluation seeds (500 is the most CartPole-v1 gives). Runs go to the results store $OUT (and its
# runs.jsonl); `earlyprune report $OUT` makes the tables. Runs already in the store are skipped, so a killed
# script resumes by running it again.
#
#   SEEDS="0 1" JOBS=2 benchmarks/tasks_rl.sh
set -euo pipefail
OUT=${OUT:-results/tasks/rl}
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
EPOCHS=${EPOCHS:-25}
SCHEDULE=${SCHEDULE:-cosine}
EARLYPRUNE=${EARLYPRUNE:-.venv/bin/earlyprune}

RECIPE="--dataset cartpole --model dqn-mlp --epochs $EPOCHS --steps-per-epoch 1000 --batch-size 64 --optimizer adam --lr 0.0023 --weight-decay 0 --lr-schedule $SCHEDULE"
RUNS=(
  "--method dense"
  "--method snip --sparsity 0.9"
  "--method grasp --sparsity 0.9"
  "--method synflow --sparsity 0.9"
  "--method random --sparsity 0.9"
  "--method crop --sparsity 0.9 --when early"
  "--method crop --sparsity 0.5 --when early --structured"
  "--method activation_density --prune-every 2"
)
mkdir -p "$OUT"
for seed in $SEEDS; do
  for run in "${RUNS[@]}"; do
    echo "$RECIPE --seed $seed $run --out $OUT/runs.jsonl --store $OUT"
  done
done | xargs -P "$JOBS" -L 1 $EARLYPRUNE run --device cpu --threads "$THREADS" --skip-existing \
  >> "$OUT/log.txt" 2>&1
