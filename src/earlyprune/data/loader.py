"""A fast in-memory loader: batches sliced from tensors, with the usual CIFAR augmentation done on the
whole batch at once (a per-sample DataLoader pipeline costs more than the model on two CPU cores)."""

from __future__ import annotations

from typing import Iterator

import torch


class TensorLoader:
    """Iterates ``(inputs, targets)`` batches over in-memory tensors.

    ``shuffle`` draws a new order every epoch from a generator seeded with ``seed`` (reproducible).
    ``augment`` applies a random crop with zero padding 4 and a random horizontal flip per image.
    ``num_replicas``/``rank`` give each process of a distributed run its own disjoint shard.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False, padding: int = 4,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.padding = drop_last, padding
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_replicas, self.rank = num_replicas, rank
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_samples(self) -> int:
        """Examples this loader yields per epoch (this rank's shard under ``num_replicas > 1``)."""
        return self.images.shape[0] // self.num_replicas

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        total = self.images.shape[0]
        order = torch.randperm(total, generator=self.generator) if self.shuffle else torch.arange(total)
        # Every rank draws the same permutation (same seed) and takes its own equal-sized slice of it.
        n = self.num_samples
        order = order[self.rank :: self.num_replicas][:n]
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.drop_last and index.numel() < self.batch_size:
                break
            inputs = self.images[index]
            if self.augment:
                inputs = random_crop_flip(inputs, self.padding, self.generator)
            yield inputs, self.labels[index]


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and random horizontal flip of each image of a batch."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(c)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
