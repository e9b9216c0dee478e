"""What the library reads of a model (its device and dtype) and how it leaves a model as it found it.

Scoring, tracing and FLOPs counting must not change anything the caller can see: weights, buffers
(BatchNorm running statistics), the train/eval mode of *every* submodule (a frozen BatchNorm stays in
eval mode inside a training model), accumulated gradients, or the global random-number state (dropout
during scoring would otherwise shift the caller's RNG stream).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in _tensors(model):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (or buffer); float32 otherwise."""
    for tensor in _tensors(model):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


@contextlib.contextmanager
def preserved_modes(model: nn.Module, train: bool | None = None) -> Iterator[None]:
    """Run the body with the whole model in train (``True``) or eval (``False``) mode, or in its modes as
    they are (``None``), and give every submodule back its own mode afterwards, also on error.

    ``model.train(was_training)`` is not the same: it puts every submodule into the root's mode, so a
    BatchNorm the caller froze in eval mode inside a training model would come back in training mode.
    """
    modes = {module: module.training for module in model.modules()}
    try:
        if train is not None:
            model.train(train)
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def math_attention() -> contextlib.AbstractContextManager:
    """Scaled dot-product attention on the math kernel only (differentiable twice), where torch has the
    switch; a no-op context otherwise."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@contextlib.contextmanager
def isolated(model: nn.Module, train: bool | None = None, seed: int | None = None) -> Iterator[None]:
    """Run the body on ``model`` and restore everything the caller could see afterwards.

    Restores parameter values, buffers, ``.grad`` of every parameter, each submodule's ``training``
    flag and the global RNG state. ``train`` sets the mode used inside (None keeps the current one);
    ``seed``, if given, seeds the RNG inside so scoring is reproducible.

    Attention (``F.scaled_dot_product_attention``, and ``nn.MultiheadAttention`` through it) runs on the
    math kernel inside: the fused kernels (flash, memory-efficient) have no second derivative, which
    GraSP, ProsPr and CroP take (``derivative for aten::_scaled_dot_product_flash_attention..._backward is
    not implemented``). The math kernel computes the same function.
    """
    params = dict(model.named_parameters())
    saved_params = {n: p.detach().clone() for n, p in params.items()}
    saved_grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in params.items()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    devices = [d.index for d in {t.device for t in _tensors(model)} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices), preserved_modes(model, train), math_attention():
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved_params[n])
                    p.grad = saved_grads[n]
                buffers = dict(model.named_buffers())
                for n, b in saved_buffers.items():
                    if n in buffers:
                        buffers[n].copy_(b)
