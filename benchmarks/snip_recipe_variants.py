"""SNIP on LeNet-300-100 / LeNet-5 (MNIST) under the official SNIP code's departures from the paper's text.

The official code (namhoonlee/snip-public) scores one draw of the initialisation and trains another
(``weights_bp`` / ``weights_ap``), puts biases in the mask (zero at init, so they score 0 and are pruned),
and uses TensorFlow's variance scaling, whose truncated normal is rescaled to keep std sqrt(1/fan_in).
Each variant below adds one or more of these to the library's default recipe (SGD 0.1, momentum 0.9,
weight decay 5e-4, batch 100, x0.1 at 50% and 75% of the epochs) and prints one JSON line.

Usage: python benchmarks/snip_recipe_variants.py MODEL SPARSITY VARIANT SEED [EPOCHS] [--data-dir DIR]
VARIANT: "base", or any of "reinit", "tfvs", "nobias" joined by "-" (e.g. "tfvs-reinit").
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

import earlyprune as ep
from earlyprune.data import load_dataset
from earlyprune.masking import binding
from earlyprune.models.init import TRUNCATED_STD_FACTOR, initialize
from earlyprune.train import TrainConfig, train


def tensorflow_variance_scaling_(model: nn.Module) -> None:
    """TF's variance scaling (scale 1, fan-in, truncated normal with the std corrected for the truncation)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                std = math.sqrt(1.0 / module.weight[0].numel()) / TRUNCATED_STD_FACTOR
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("sparsity", type=float)
    parser.add_argument("variant")
    parser.add_argument("seed", type=int)
    parser.add_argument("epochs", type=int, nargs="?", default=20)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    parts = set(args.variant.split("-")) - {"base"}
    unknown = parts - {"reinit", "tfvs", "nobias"}
    if unknown:
        parser.error(f"unknown variant part(s) {sorted(unknown)}")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train_split, test_split = load_dataset("mnist", data_dir=args.data_dir)
    model = ep.models.create(args.model)
    if "tfvs" in parts:
        tensorflow_variance_scaling_(model)
    masks = ep.prune(model, "snip", sparsity=args.sparsity, data=train_split.loader(100, shuffle=True, seed=args.seed + 1))
    if "reinit" in parts:  # train a fresh draw of the same initialisation under the mask
        binding(model).remove()
        tensorflow_variance_scaling_(model) if "tfvs" in parts else initialize(model, "variance_scaling")
        masks.apply(model)
    if "nobias" in parts:  # the official mask prunes every (zero-initialised) bias
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.bias = None
    started = time.time()
    result = train(model, train_split.loader(100, shuffle=True, seed=args.seed), test_split.loader(500),
                   TrainConfig(epochs=args.epochs, progress=False))
    print(json.dumps({"model": args.model, "sparsity": args.sparsity, "variant": args.variant, "seed": args.seed,
                      "epochs": args.epochs, "final": result.final_accuracy, "best": result.best_accuracy,
                      "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
