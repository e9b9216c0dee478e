"""Model registry: ``create(name, ...)`` builds a reference model with its paper's initialisation."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .init import initialize
from .lenet import LeNet5Caffe, LeNet300100
from .resnet import cifar_resnet, resnet18
from .vgg import VGG

# name -> (builder, default init, default (in_channels, input_size))
_MODELS: dict[str, tuple[Callable[..., nn.Module], str, tuple[int, int]]] = {
    "lenet300": (LeNet300100, "variance_scaling", (1, 28)),
    "lenet5": (LeNet5Caffe, "variance_scaling", (1, 28)),
    "vgg11": (lambda **k: VGG("vgg11", **k), "kaiming", (3, 32)),
    "vgg16": (lambda **k: VGG("vgg16", **k), "kaiming", (3, 32)),
    "vgg19": (lambda **k: VGG("vgg19", **k), "kaiming", (3, 32)),
    "resnet20": (lambda **k: cifar_resnet(20, **k), "kaiming", (3, 32)),
    "resnet32": (lambda **k: cifar_resnet(32, **k), "kaiming", (3, 32)),
    "resnet44": (lambda **k: cifar_resnet(44, **k), "kaiming", (3, 32)),
    "resnet56": (lambda **k: cifar_resnet(56, **k), "kaiming", (3, 32)),
    "resnet18": (resnet18, "kaiming", (3, 32)),
}
_ALIASES = {"lenet-300-100": "lenet300", "lenet-5-caffe": "lenet5", "lenet-5": "lenet5"}


def names() -> list[str]:
    """Names ``create`` accepts."""
    return list(_MODELS)


def _resolve(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}")
    return key


def input_shape(name: str) -> tuple[int, int, int]:
    """The default input shape (C, H, W) of model ``name``."""
    channels, size = _MODELS[_resolve(name)][2]
    return (channels, size, size)


def create(
    name: str,
    num_classes: int = 10,
    width: float = 1.0,
    init: str | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Build model ``name`` (see :func:`names`) with the paper's initialisation unless ``init`` is given.

    ``width`` multiplies every hidden width (CPU-sized variants: e.g. ``vgg16`` with ``width=0.25``).
    The model has an ``input_shape`` attribute (C, H, W).
    """
    key = _resolve(name)
    builder, default_init, (channels, size) = _MODELS[key]
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    model = builder(num_classes=num_classes, width=width, in_channels=in_channels or channels,
                    input_size=input_size or size)
    return initialize(model, init or default_init)
