"""Regenerate the embedded MNIST sample: 600 train and 100 test images per class, chosen with a fixed seed.

Usage: python scripts/make_mnist_sample.py [MNIST_DIR]   (default: ../shared/data/mnist)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from earlyprune.data.idx import read_idx
from earlyprune.data.sample import SAMPLE_PATH


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist")
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, per_class in (("train", "train", 600), ("test", "t10k", 100)):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", expected_dims=3)
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", expected_dims=1)
        index = stratified(labels, per_class, rng)
        out[f"x_{split}"], out[f"y_{split}"] = images[index], labels[index]
    SAMPLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAMPLE_PATH, **out)
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
