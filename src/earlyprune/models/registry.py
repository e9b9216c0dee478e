"""Model registry: ``create(name, ...)`` builds a reference model with its paper's initialisation.

Every model built here carries ``input_shape`` (C, H, W), the shape it was sized for, and
``default_dataset``: the data-free criteria (SynFlow's all-ones input) and the FLOPs counter use the
former when they get no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from torch import nn

from .init import initialize
from .lenet import LeNet5Caffe, LeNet300100
from .resnet18 import resnet18
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56
from .vgg import vgg11, vgg16, vgg19


@dataclass(frozen=True)
class ModelSpec:
    """What ``create`` needs to know about one reference model."""

    name: str
    builder: Callable[..., nn.Module]  # (num_classes, width, in_channels, input_size) -> model
    init: str  # the paper's initialisation scheme, see :mod:`.init`
    input_shape: tuple[int, int, int]  # (C, H, W)
    dataset: str  # the dataset the papers use it with
    paper: str


_MNIST, _CIFAR = (1, 28, 28), (3, 32, 32)
_SPECS = [
    ModelSpec("lenet300", LeNet300100, "variance_scaling", _MNIST, "mnist", "LeNet-300-100; SNIP (Lee et al. 2019)"),
    ModelSpec("lenet5", LeNet5Caffe, "variance_scaling", _MNIST, "mnist", "LeNet-5-Caffe; SNIP (Lee et al. 2019)"),
    ModelSpec("vgg11", vgg11, "kaiming", _CIFAR, "cifar10", "VGG-11-BN, GraSP CIFAR form"),
    ModelSpec("vgg16", vgg16, "kaiming", _CIFAR, "cifar10", "VGG-16-BN, GraSP CIFAR form"),
    ModelSpec("vgg19", vgg19, "kaiming", _CIFAR, "cifar10", "VGG-19-BN, GraSP CIFAR form"),
    ModelSpec("resnet20", resnet20, "kaiming", _CIFAR, "cifar10", "ResNet-20 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet32", resnet32, "kaiming", _CIFAR, "cifar10", "ResNet-32 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet44", resnet44, "kaiming", _CIFAR, "cifar10", "ResNet-44 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet56", resnet56, "kaiming", _CIFAR, "cifar10", "ResNet-56 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet18", resnet18, "kaiming", _CIFAR, "cifar10", "ResNet-18 with a 3x3 stem for 32x32 inputs"),
]

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
ALIASES: Mapping[str, str] = MappingProxyType({
    "lenet-300-100": "lenet300",
    "lenet300100": "lenet300",
    "lenet-5-caffe": "lenet5",
    "lenet5-caffe": "lenet5",
    "lenet-5": "lenet5",
    "vgg-11": "vgg11",
    "vgg-16": "vgg16",
    "vgg-19": "vgg19",
    "resnet-20": "resnet20",
    "resnet-32": "resnet32",
    "resnet-44": "resnet44",
    "resnet-56": "resnet56",
    "resnet-18": "resnet18",
})


def names() -> list[str]:
    """The canonical names ``create`` accepts (aliases such as ``"lenet-5-caffe"`` are in :data:`ALIASES`)."""
    return list(MODELS)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (a canonical name or an alias, any case).

    Raises ``ValueError`` listing the known names if there is no such model.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)} (aliases: {', '.join(ALIASES)})"
        )
    return MODELS[key]


def input_shape(name: str) -> tuple[int, int, int]:
    """The default input shape (C, H, W) of model ``name``, e.g. ``(1, 28, 28)`` for ``"lenet5"``."""
    return spec(name).input_shape


def default_dataset(name: str) -> str:
    """The dataset the papers use model ``name`` with: ``"mnist"`` for the LeNets, else ``"cifar10"``."""
    return spec(name).dataset


def create(
    name: str,
    num_classes: int = 10,
    width: float = 1.0,
    init: str | None = None,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> nn.Module:
    """Build model ``name`` (see :func:`names`) and initialise it.

    Args:
        name: a canonical name or an alias, e.g. ``"resnet20"`` or ``"lenet-5-caffe"``.
        num_classes: outputs of the final Linear layer.
        width: multiplies every hidden width (channels = ``max(1, round(c * width))``), for CPU-sized
            variants such as ``vgg16`` at ``width=0.25``; the classifier's outputs stay ``num_classes``.
        init: ``"kaiming"``, ``"variance_scaling"`` or ``"default"``; ``None`` means the paper's
            (variance scaling for the LeNets, Kaiming normal for VGG and ResNets).
        in_channels, input_size: the input images' channels and side (or ``(H, W)``), by default the
            model's dataset's; the LeNets' first layers and the VGG's minimum size depend on them.

    Returns:
        The model, with attributes ``input_shape`` (C, H, W), ``default_dataset`` and ``arch`` (the
        canonical name).
    """
    model_spec = spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    channels, height, wide = model_spec.input_shape
    model = model_spec.builder(
        num_classes=num_classes,
        width=width,
        in_channels=in_channels or channels,
        input_size=input_size or (height, wide),
    )
    model.default_dataset = model_spec.dataset
    model.arch = model_spec.name
    return initialize(model, init or model_spec.init)
