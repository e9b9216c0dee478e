"""Datasets as users have them on disk, read without torchvision: MNIST and Fashion-MNIST (IDX),
CIFAR-10/100 (python batches, with a restricted unpickler, or an image-folder tree), and an embedded
MNIST sample. Decoded arrays are cached; batches come from a fast in-memory loader."""

from .errors import DataFormatError, DatasetNotFoundError
from .loader import TensorLoader
from .registry import DATASETS, DatasetSplit, load_dataset

__all__ = ["load_dataset", "DatasetSplit", "TensorLoader", "DATASETS", "DatasetNotFoundError", "DataFormatError"]
