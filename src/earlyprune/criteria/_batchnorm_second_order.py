"""Training-mode batch normalisation with a cheap second derivative, for GraSP's and CroP's Hg.

GraSP (Wang et al., ICLR 2020) and CroP (Rachwan et al., ICML 2022) differentiate the loss gradient once
more (double backpropagation). Through a training-mode BatchNorm layer PyTorch's second derivative
(``NativeBatchNormBackwardBackward0``) is a chain of about thirty full-size elementwise operations; on
ResNet-20 it was a quarter of a GraSP call on the development CPU. Here the layer's input gradient

    gI = γ σ⁻¹ P(gO),   P(v) = v − mean(v) − x̂ · mean(v x̂)   (per channel; x̂ = (x − μ) σ⁻¹)

is its own autograd node, whose derivative with respect to its two inputs is written out:

* with respect to gO: P is self-adjoint, so it is the same map applied to the incoming cotangent ggI,
  one fused ``native_batch_norm_backward`` call, which also returns Σ ggI and Σ ggI x̂;
* with respect to x: ``-(s σ⁻¹ / M) x̂ − (γ σ⁻² / M) [Σ(gO x̂) P(ggI) + Σ(ggI x̂) P(gO)]`` with
  ``s = <ggI, gI>`` per channel and M the number of values per channel, folded into
  ``A x + B ggI + C gO + D`` with per-channel coefficients: one product-sum and four passes.

γ and β get theirs the same way (gγ = Σ gO x̂ and gβ = Σ gO are differentiable outputs too: their
cotangents add ggγ x̂ + ggβ to the gradient for gO, ggγ σ⁻¹ P(gO) to the one for x, and γ's own is
<ggI, σ⁻¹ P(gO)>), so ProsPr, which steps γ and β, can use it as well.

The first derivative is PyTorch's own kernel (the same values, bit for bit); the second equals PyTorch's
to float rounding (tests compare it in float64 with the native double backward and with
``torch.autograd.gradgradcheck``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_FLOATS = (torch.float32, torch.float64)


def _per_channel(x: torch.Tensor) -> tuple[list[int], list[int], int]:
    """(the dimensions a channel's statistics run over, the shape of a per-channel broadcast, M)."""
    dims = [0, *range(2, x.dim())]
    return dims, [1, -1] + [1] * (x.dim() - 2), x.numel() // x.shape[1]


class _Gradients(torch.autograd.Function):
    """(gI, gγ, gβ) of training-mode batch norm as functions of (gO, x, γ), with the second derivatives
    written out (module docstring)."""

    @staticmethod
    def forward(ctx: Any, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                invstd: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad_in, sum_go_xhat, sum_go = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(grad_out, x, weight, mean, invstd, sum_go_xhat, sum_go)
        ctx.eps = eps
        return grad_in, sum_go_xhat, sum_go  # gI, gγ = Σ gO x̂, gβ = Σ gO

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, ggi: torch.Tensor | None, ggw: torch.Tensor | None,
                 ggb: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        grad_out, x, weight, mean, invstd, sum_go_xhat, sum_go = ctx.saved_tensors
        dims, shape, count = _per_channel(x)
        want_go, want_x, want_w = ctx.needs_input_grad[:3]
        zero = torch.zeros_like(invstd)
        ggw = zero if ggw is None else ggw
        coef_go, coef_xhat, constant = ggw * invstd, -ggw * invstd * sum_go_xhat / count, -ggw * invstd * sum_go / count
        ggo = grad_w = None
        if ggi is not None:  # the terms of gI = γ σ⁻¹ P(gO)
            ggo, sum_ggi_xhat, sum_ggi = torch.ops.aten.native_batch_norm_backward(
                ggi, x, weight, None, None, mean, invstd, True, ctx.eps, [want_go, True, True])
            projected = (ggi * grad_out).sum(dims) - sum_ggi * sum_go / count - sum_ggi_xhat * sum_go_xhat / count
            if want_w:
                grad_w = invstd * projected  # <ggI, σ⁻¹ P(gO)>
            scale = weight * invstd  # γ σ⁻¹
            k = -scale * invstd / count
            coef_go = coef_go + k * sum_ggi_xhat
            coef_xhat = coef_xhat - scale * projected * invstd / count - 2.0 * k * sum_go_xhat * sum_ggi_xhat / count
            constant = constant - k * (sum_go_xhat * sum_ggi + sum_ggi_xhat * sum_go) / count
            coef_ggi = k * sum_go_xhat
        grad_x = None
        if want_x:
            coef_x = coef_xhat * invstd  # x̂ = (x − μ) σ⁻¹
            grad_x = grad_out * coef_go.view(shape)
            if ggi is not None:
                grad_x.addcmul_(ggi, coef_ggi.view(shape))
            grad_x.addcmul_(x, coef_x.view(shape)).add_((constant - coef_x * mean).view(shape))
        if want_go:  # gγ and gβ add ggγ x̂ + ggβ
            ggo = torch.zeros_like(grad_out) if ggo is None else ggo
            shift = (zero if ggb is None else ggb) - ggw * invstd * mean
            ggo.addcmul_(x, (ggw * invstd).view(shape)).add_(shift.view(shape))
        return ggo, grad_x, grad_w, None, None, None


class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm (PyTorch's kernel, running statistics updated as F.batch_norm does)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                eps: float) -> torch.Tensor:
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                             momentum, eps)
        ctx.affine = weight is not None, bias is not None
        gamma = weight if weight is not None else torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        ctx.save_for_backward(x, gamma, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, gamma, mean, invstd = ctx.saved_tensors
        grad_in, grad_weight, grad_bias = _Gradients.apply(grad_out, x, gamma, mean, invstd, ctx.eps)
        has_weight, has_bias = ctx.affine
        return (grad_in, grad_weight if has_weight else None, grad_bias if has_bias else None,
                None, None, None, None)


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            fused = _fused_call(*args, **kwargs)
            if fused is not None:
                return fused
        return func(*args, **kwargs)


def _fused_call(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor | None:
    """The fused layer's output for an ``F.batch_norm`` call it can take, else None (PyTorch's own)."""
    if not training or input.dim() < 2 or input.dtype not in _FLOATS:
        return None
    if input.numel() // max(input.shape[1], 1) <= 1:  # PyTorch's own raises (one value per channel) or copes (empty)
        return None
    if any(t is not None and t.dtype != input.dtype for t in (weight, bias)):
        return None
    return _BatchNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps)


@contextmanager
def fused_batchnorm_second_order(model: nn.Module | None = None) -> Iterator[None]:
    """Inside, training-mode ``F.batch_norm`` (every ``nn.BatchNorm*`` layer) in float32 or float64 has
    the cheap second derivative of this module; eval mode (an affine map, already cheap), other dtypes and
    batches with one value per channel stay PyTorch's. Scoped to the calling thread (a
    ``TorchFunctionMode``). Given the ``model``, nothing is installed when it has no BatchNorm layer (the
    mode sees every torch call, a little Python per operation)."""
    if model is not None and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        yield
        return
    with _Mode():
        yield
