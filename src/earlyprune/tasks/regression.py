"""Regression: mean squared error of the outputs against target values of the same shape; reports the
RMSE (the main metric, lower is better) and R² (the coefficient of determination, averaged over the
output columns as scikit-learn's ``r2_score`` does by default).

Targets have the outputs' shape; the one allowed difference is a trailing dimension of one (outputs
``(N, 1)`` against targets ``(N,)`` or the other way round), which is the same values and is read so.
Any other mismatch is an error: mean squared error would broadcast ``(N, 1)`` against ``(N, 2)`` or
``(N,)`` against ``(N, 1)`` silently into a loss of the wrong thing.

GraSP's temperature T divides the outputs for every task: in regression the criterion then scores the
MSE of predictions shrunk T-fold against unscaled targets (so its gradients are dominated by the
targets' size); pass ``temperature=1`` to score the plain MSE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PruningError
from .base import Meter, Task, require_tensor, shape, sum_dtype


class Regression(Task):
    name = "regression"
    metric = "rmse"
    higher_is_better = False

    def check(self, outputs: Any, targets: torch.Tensor) -> None:
        require_tensor(self.name, outputs)
        if not outputs.is_floating_point():
            raise PruningError(f"task 'regression': the model's outputs are {outputs.dtype}, not floating point")
        if _aligned(outputs, targets) is None:
            hint = ""
            if not targets.is_floating_point() and outputs.dim() == 2 and outputs.shape[1] > 1 \
                    and tuple(targets.shape) == (outputs.shape[0],):
                hint = ": the targets look like class indices; for classification pass task='classification'"
            raise PruningError(
                f"task 'regression': targets of shape {shape(targets)} do not match the model's outputs of "
                f"shape {shape(outputs)} (mean squared error would broadcast them into a loss of the wrong "
                f"thing); give targets of the outputs' shape{hint}"
            )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, _aligned(outputs, targets))

    def meter(self) -> Meter:
        return RegressionMeter()


def _aligned(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """``targets`` as a tensor of the outputs' shape and dtype, or None when they do not match."""
    out, tgt = tuple(outputs.shape), tuple(targets.shape)
    if out == tgt or (out[:-1] == tgt and out[-1:] == (1,)) or (tgt[:-1] == out and tgt[-1:] == (1,)):
        return targets.reshape(out).to(outputs.dtype)
    return None


class RegressionMeter(Meter):
    """Sum of squared errors over every target value, and per output column the targets' mean and sum of
    squared deviations (Chan et al.'s pairwise update, so R² loses no precision to large means)."""

    def __init__(self) -> None:
        self.sse: torch.Tensor | float = 0.0  # a tensor on the outputs' device once updated (float64 but on MPS)
        self.count = 0
        self.rows = 0
        self.mean: torch.Tensor | None = None  # per column
        self.m2: torch.Tensor | None = None
        self.column_sse: torch.Tensor | None = None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        aligned = _aligned(outputs, targets)
        if aligned is None:
            raise PruningError(f"regression targets of shape {shape(targets)} do not match outputs {shape(outputs)}")
        targets = aligned
        # everything stays on the outputs' device, in float64 where it has it (read once, in result(): no
        # host synchronisation per batch)
        dtype = sum_dtype(outputs.device)
        y = targets.detach().to(device=outputs.device, dtype=dtype)
        y = y.reshape(targets.shape[0] if targets.dim() else 1, -1)
        f = outputs.detach().to(dtype).reshape(y.shape)
        err = ((f - y) ** 2).sum(0)
        n = y.shape[0]
        mean, m2 = y.mean(0), ((y - y.mean(0)) ** 2).sum(0)
        if self.mean is None:
            self.mean, self.m2, self.column_sse = mean, m2, err
        else:
            total = self.rows + n
            delta = mean - self.mean
            self.m2 = self.m2 + m2 + delta**2 * self.rows * n / total
            self.mean = self.mean + delta * n / total
            self.column_sse = self.column_sse + err
        self.rows += n
        self.sse = self.sse + err.sum()
        self.count += y.numel()

    def result(self) -> dict[str, float]:
        if not self.count:
            raise PruningError("no examples were measured")
        mse = float(self.sse) / self.count
        varying = self.m2 > 0
        r2 = float((1 - self.column_sse[varying] / self.m2[varying]).mean()) if bool(varying.any()) else math.nan
        return {"loss": mse, "rmse": math.sqrt(mse), "r2": r2}


REGRESSION = Regression()
