"""How many of LeNet-300-100's first-layer units keep any input after pruning at 98%, with and without
Frankle et al.'s shuffle (the measurement behind BENCHMARKS.md's "Sanity checks" section).

    EARLYPRUNE_DATA=../shared/data .venv/bin/python benchmarks/sanity_fc1_units.py
"""

import os

import torch

import earlyprune as ep
from earlyprune import models
from earlyprune.data import load_dataset

train, _ = load_dataset("mnist", data_dir=os.environ.get("EARLYPRUNE_DATA"))
subset = train.subset(6000)  # the benchmark's training set; scoring data as `earlyprune run` draws it (seed 0)
for method in ("snip", "grasp", "synflow", "prospr"):
    for ablation in (None, "shuffle"):
        torch.manual_seed(0)
        model = models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
        loader = subset.loader(100, shuffle=True, augment=False, seed=1)
        masks = ep.prune(model, method, 0.98, data=loader, ablation=ablation, on_collapse="warn")
        fc1 = masks["fc1.weight"].bool()
        print(f"{method:8s} {ablation or 'none':8s} fc1 kept {int(fc1.sum()):5d}, units with any input "
              f"{int(fc1.any(1).sum())}/{fc1.shape[0]}")
