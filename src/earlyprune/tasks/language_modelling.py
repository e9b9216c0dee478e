"""Language modelling: next-token cross-entropy of outputs ``(batch, seq, vocab)`` against token ids
``(batch, seq)``; perplexity (``exp`` of the mean cross-entropy per token), lower is better; the
next-token accuracy is reported too.

The targets are already the next tokens: ``targets[b, t]`` is the token that follows input position ``t``
(the data gives the sequence shifted by one); nothing is shifted here. Target positions equal to
``ignore_index`` (-100, PyTorch's default, e.g. padding) count in neither the loss nor the metrics.

SynFlow's all-ones input is, for integer token inputs, a sequence of token id 1 (the input keeps its
dtype): the data-free flow then runs through the embedding row of token 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PruningError
from .base import Meter, Task, require_tensor, shape, sum_dtype

IGNORE_INDEX = -100


class LanguageModelling(Task):
    name = "language_modelling"
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def check(self, outputs: Any, targets: torch.Tensor) -> None:
        require_tensor(self.name, outputs)
        if outputs.dim() != 3:
            raise PruningError(
                f"task 'language_modelling' needs outputs of shape (batch, seq, vocab), one distribution per "
                f"position; the model gives {shape(outputs)}, which has no sequence dimension (a model "
                "predicting one class per sequence is task='classification')"
            )
        if targets.is_floating_point() or tuple(targets.shape) != tuple(outputs.shape[:2]):
            raise PruningError(
                f"task 'language_modelling' needs integer token targets of shape (batch, seq) = "
                f"{tuple(outputs.shape[:2])} for outputs {shape(outputs)}; got {targets.dtype} targets of shape "
                f"{shape(targets)}"
            )
        valid = targets[targets != self.ignore_index]
        if not valid.numel():
            raise PruningError("task 'language_modelling': every target position is ignore_index; nothing to score")
        vocab = outputs.shape[-1]
        if int(valid.min()) < 0 or int(valid.max()) >= vocab:
            raise PruningError(
                f"token targets range over [{int(valid.min())}, {int(valid.max())}] but the model gives {vocab} "
                "outputs per position; check the vocabulary size"
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1),
                               ignore_index=self.ignore_index)

    def meter(self) -> Meter:
        return PerplexityMeter(self.ignore_index)


class PerplexityMeter(Meter):
    """Summed next-token cross-entropy and correct next tokens over the counted positions."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        # the sums stay tensors on the outputs' device (read once, in result() or count: no host
        # synchronisation per batch)
        self.nll: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | int = 0
        self.counted: torch.Tensor | int = 0

    @property
    def count(self) -> int:  # type: ignore[override]
        """Tokens measured so far (positions whose target is not ``ignore_index``)."""
        return int(self.counted)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits, flat = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
        counted = flat != self.ignore_index
        nll = F.cross_entropy(logits, flat, ignore_index=self.ignore_index, reduction="sum")
        self.nll = self.nll + nll.to(sum_dtype(outputs.device))
        self.correct = self.correct + ((logits.argmax(-1) == flat) & counted).sum()
        self.counted = self.counted + counted.sum()

    def result(self) -> dict[str, float]:
        count = self.count
        if not count:
            raise PruningError("no tokens were measured")
        loss = float(self.nll) / count
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
                "token_accuracy": int(self.correct) / count}


LANGUAGE_MODELLING = LanguageModelling()
