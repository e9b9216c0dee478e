"""The embedded sample: 6,000 training and 1,000 test images of real MNIST (600 and 100 per class),
shipped inside the package so the demo and the tests run on a machine with no data at all.
Regenerate it with ``scripts/make_mnist_sample.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_PATH = Path(__file__).with_name("sample") / "mnist_sample.npz"


def load_sample() -> dict[str, np.ndarray]:
    """``x_train`` (6000, 28, 28), ``y_train``, ``x_test`` (1000, 28, 28), ``y_test``; uint8."""
    with np.load(SAMPLE_PATH, allow_pickle=False) as data:
        return {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
