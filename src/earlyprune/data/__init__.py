"""Datasets as users have them on disk, read without torchvision: MNIST and Fashion-MNIST (IDX),
CIFAR-10/100 (python batches, with a restricted unpickler, or an image-folder tree), and an embedded
MNIST sample; sentence classification (SST-2, TREC), character-level language modelling (Tiny
Shakespeare) and tabular regression (California Housing). Decoded image arrays are cached; batches come
from a fast in-memory loader."""

from .errors import DataFormatError, DatasetNotFoundError
from .loader import TensorLoader
from .registry import DATASETS, DatasetSplit, load_dataset, load_splits

__all__ = ["load_dataset", "load_splits", "DatasetSplit", "TensorLoader", "DATASETS", "DatasetNotFoundError", "DataFormatError"]
