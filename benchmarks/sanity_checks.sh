#!/usr/bin/env bash
# Frankle et al.'s sanity checks (ICLR 2021) and the default-vs-official presets on MNIST, CPU-sized.
#
#   benchmarks/sanity_checks.sh [RESULTS_ROOT]       (default: results/)
#
# 1. LeNet-300-100 on MNIST, SNIP / GraSP / SynFlow / ProsPr pruned at initialisation to 90% and 98%, then
#    trained 3 epochs on the first 6,000 training images (SGD 0.1, momentum 0.9, wd 5e-4, lr x0.1 after
#    epoch 2, batch 100; tested on all 10,000), 3 seeds, with no ablation and each of shuffle / reinit /
#    invert (plus the dense reference): 99 runs. A CPU-sized schedule: the accuracies are far below
#    full-training ones; what is compared is the ablations against no ablation under the same recipe.
#    Collapsed layers are kept (on_collapse = "warn": inverted scores cut SynFlow's networks, which is what
#    the check measures). The same for LeNet-5 (Caffe) at 98% only (a conv net is ~20x slower here) in sanity-mnist-lenet5.
# 2. The same recipe at 98%, SNIP / GraSP / SynFlow / ProsPr / CroP, preset paper vs official, 3 seeds,
#    in the same results store (the paper cells of SNIP/GraSP/SynFlow/ProsPr are shared with sweep 1).
# Each sweep is resumable (stop and start again: finished cells are skipped); the report (tables, the
# sanity-check section and the layer-wise density plot) is written beside the results.
set -euo pipefail
ROOT=${1:-results}
EP=${EARLYPRUNE:-earlyprune}
export EARLYPRUNE_DATA=${EARLYPRUNE_DATA:-../shared/data}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
cat > "$ROOT/sanity.toml" <<TOML
results = "$ROOT/sanity-mnist-lenet300"
[recipe]
epochs = 3
train_subset = 6000
on_collapse = "warn"
[grid]
datasets = ["mnist"]
models = ["lenet300"]
methods = ["dense", "snip", "grasp", "synflow", "prospr"]
sparsities = [0.9, 0.98]
seeds = [0, 1, 2]
ablations = ["none", "shuffle", "reinit", "invert"]
TOML
cat > "$ROOT/presets.toml" <<TOML
results = "$ROOT/sanity-mnist-lenet300"
[recipe]
epochs = 3
train_subset = 6000
[grid]
datasets = ["mnist"]
models = ["lenet300"]
methods = ["snip", "grasp", "synflow", "prospr", "crop"]
sparsities = [0.98]
seeds = [0, 1, 2]
presets = ["paper", "official"]
TOML
$EP sweep "$ROOT/sanity.toml" --device cpu
$EP sweep "$ROOT/presets.toml" --device cpu
$EP report "$ROOT/sanity-mnist-lenet300"
sed -e 's/lenet300/lenet5/g' -e 's/sparsities = \[0.9, 0.98\]/sparsities = [0.98]/' "$ROOT/sanity.toml" \
    > "$ROOT/sanity-lenet5.toml"
$EP sweep "$ROOT/sanity-lenet5.toml" --device cpu
$EP report "$ROOT/sanity-mnist-lenet5"
