"""One split of a dataset in memory, for every task: inputs and targets as tensors, plus what a model
and a loss need to know about them.

* ``task``: ``"classification"`` (images and sentences), ``"language_modelling"`` or ``"regression"``.
* ``inputs``: float32 images (N, C, H, W), int64 token ids (N, seq_len), or float32 features (N, F).
* ``targets``: int64 class labels (N,), int64 next tokens (N, seq_len), or float32 values (N, 1).
* ``num_classes``: the classes (classification), the vocabulary size (language modelling: the model
  predicts one of ``vocab_size`` tokens at each position), or 1 (regression).
* ``num_outputs``: the model's output units per prediction (``num_classes``, ``vocab_size`` or 1).
* ``vocab_size``, ``seq_len``, ``vocab``: set for token inputs (text classification, language
  modelling), ``None`` elsewhere.
* :meth:`model_kwargs`: the keyword arguments ``earlyprune.models.create`` takes to size a model for
  these inputs.

``images``/``labels`` are the historical names of ``inputs``/``targets`` and stay available.
Batches come from :class:`~earlyprune.data.loader.TensorLoader` (shuffling, seeds, sharding); integer
inputs stay integer all the way.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .loader import TensorLoader

TASKS = ("classification", "language_modelling", "regression")


class DatasetSplit:
    """One split in memory: ``inputs`` and ``targets`` tensors of the same length, and their task."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 classes: Sequence[str], augmentable: bool, *, task: str = "classification",
                 vocab: Sequence[str] | None = None, seq_len: int | None = None,
                 info: dict[str, Any] | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: {images.shape[0]} inputs but {labels.shape[0]} targets")
        self.name, self.images, self.labels = name, images, labels
        self.num_classes, self.classes, self.augmentable = num_classes, list(classes), augmentable
        self.task = task
        self.vocab = list(vocab) if vocab is not None else None
        self.seq_len = seq_len
        #: how the split was made (split sizes, statistics used for standardisation, ...)
        self.info = dict(info or {})

    @property
    def inputs(self) -> torch.Tensor:
        return self.images

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    @property
    def vocab_size(self) -> int | None:
        return len(self.vocab) if self.vocab is not None else None

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's input shape: (C, H, W) images, (seq_len,) token ids, (F,) features."""
        return tuple(self.images.shape[1:])

    @property
    def input_dtype(self) -> torch.dtype:
        return self.images.dtype

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``earlyprune.models.create`` that size a model for this split's inputs
        and outputs: ``num_classes`` plus ``in_channels``/``input_size`` (images), ``vocab_size``/``seq_len``
        (tokens) or ``in_features`` (features)."""
        if self.vocab is not None:
            return {"num_classes": self.num_classes, "vocab_size": self.vocab_size, "seq_len": self.seq_len}
        if self.images.dim() == 4:
            return {"num_classes": self.num_classes, "in_channels": self.input_shape[0],
                    "input_size": self.input_shape[1:]}
        return {"num_classes": self.num_outputs, "in_features": self.input_shape[0]}

    def __len__(self) -> int:
        return self.images.shape[0]

    def loader(self, batch_size: int = 128, shuffle: bool = False, augment: bool = False, seed: int = 0,
               drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> TensorLoader:
        """Batches of this split; ``augment`` (random crop + flip) applies to CIFAR only."""
        return TensorLoader(self.images, self.labels, batch_size, shuffle=shuffle,
                            augment=augment and self.augmentable, seed=seed, drop_last=drop_last,
                            num_replicas=num_replicas, rank=rank)

    def subset(self, n: int) -> "DatasetSplit":
        """``n`` examples, deterministically: for classification the first examples of each class, as equal
        per class as possible; otherwise the first ``n`` (the splits of the other tasks are already in a
        fixed order: shuffled with a fixed seed for regression, in text order for language modelling)."""
        if not 0 < n <= len(self):
            raise ValueError(f"subset size must be in 1..{len(self)}, got {n}")
        if self.task == "classification":
            picked = []
            per_class, extra = divmod(n, self.num_classes)
            for label in range(self.num_classes):
                where = torch.nonzero(self.labels == label).flatten()
                picked.append(where[: per_class + (1 if label < extra else 0)])
            index = torch.cat(picked).sort().values
        else:
            index = torch.arange(n)
        return self._with(self.images[index], self.labels[index])

    def _with(self, images: torch.Tensor, labels: torch.Tensor) -> "DatasetSplit":
        return DatasetSplit(self.name, images, labels, self.num_classes, self.classes, self.augmentable,
                            task=self.task, vocab=self.vocab, seq_len=self.seq_len, info=self.info)

    def __repr__(self) -> str:
        extra = f", vocab_size={self.vocab_size}, seq_len={self.seq_len}" if self.vocab is not None else ""
        return (f"DatasetSplit({self.name!r}, task={self.task!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}{extra})")
