"""Regenerate the embedded MNIST sample: 600 train and 100 test images per class, chosen with a fixed seed.

Usage: python scripts/make_mnist_sample.py [MNIST_DIR] [--out FILE]
(defaults: ../shared/data/mnist, and the sample shipped with the package)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from earlyprune.data.idx import read_idx
from earlyprune.data.sample import SAMPLE_PATH


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir", nargs="?", default="../shared/data/mnist", help="folder of the MNIST idx files")
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH, help="where the .npz goes (default: %(default)s)")
    args = parser.parse_args()
    root, out_path = Path(args.mnist_dir), args.out
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, per_class in (("train", "train", 600), ("test", "t10k", 100)):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", expected_dims=3)
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", expected_dims=1)
        index = stratified(labels, per_class, rng)
        out[f"x_{split}"], out[f"y_{split}"] = images[index], labels[index]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
