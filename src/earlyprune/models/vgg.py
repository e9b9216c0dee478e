"""VGG-11/16/19 (Simonyan & Zisserman, ICLR 2015) in the CIFAR form of the pruning-at-initialisation code.

The form chosen is the one of the GraSP code (Wang et al., ICLR 2020), which the SynFlow code (Tanaka et
al., NeurIPS 2020, via OpenLTH) shares up to the conv bias:

* five stages of 3x3 convolutions (padding 1), each followed by BatchNorm and ReLU, with the standard
  configuration lists (A = VGG-11, D = VGG-16, E = VGG-19);
* a 2x2 max-pool after each of the first four stages, *none* after the fifth;
* a global average pool over the remaining map (2x2 for a 32x32 input, exactly the ``AvgPool2d(2)`` of
  both codebases; 4x4 for 64x64, GraSP's Tiny-ImageNet ``AvgPool2d(4)``), a flatten, and a single
  ``Linear(512, num_classes)`` classifier, no hidden fully connected layers (those of ImageNet VGG
  would be 90% of the parameters and are absent in the papers' CIFAR numbers).
* Convolutions have no bias (GraSP's choice; SynFlow's have one, which is redundant before BatchNorm
  and adds 4,224 parameters to VGG-16). VGG-16 at width 1 has 14,724,042 parameters for 10 classes.

Why this form: it is the one the GraSP, SynFlow and ProsPr tables were produced with, so accuracies
and sparsities are comparable, and its Conv-BN-ReLU chain is the standard shape that dependency-graph
surgery (torch-pruning) handles without special cases.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import check_width, image_size, scaled

# Output channels of each 3x3 conv, stage by stage; a max-pool separates consecutive stages.
STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}

_POOLS = 4  # max-pools between the five stages
_MIN_SIZE = 2**_POOLS


class VGG(nn.Module):
    """CIFAR VGG: ``features`` (Conv-BN-ReLU stages with max-pools between), global average pool, Linear.

    ``depth`` is a key of :data:`STAGES`. Module names: ``features`` (an ``nn.Sequential``), ``pool``,
    ``flatten``, ``classifier``.
    """

    def __init__(self, depth: str = "vgg16", num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
                 input_size: int | tuple[int, int] = 32):
        super().__init__()
        if depth not in STAGES:
            raise ValueError(f"unknown VGG depth {depth!r}; choose one of {', '.join(STAGES)}")
        width = check_width(width)
        height, wide = image_size(input_size)
        if min(height, wide) < _MIN_SIZE:
            raise ValueError(f"VGG needs inputs of at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got {height}x{wide}")
        self.input_shape = (in_channels, height, wide)
        layers: list[nn.Module] = []
        channels = in_channels
        for index, stage in enumerate(STAGES[depth]):
            if index > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for out in stage:
                out = scaled(out, width)
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg(depth: int, **kwargs) -> VGG:
    """VGG-``depth`` (11, 16 or 19); keyword arguments go to :class:`VGG`."""
    return VGG(f"vgg{depth}", **kwargs)


def vgg11(**kwargs) -> VGG:
    """VGG-11 (configuration A) with BatchNorm, CIFAR form."""
    return VGG("vgg11", **kwargs)


def vgg16(**kwargs) -> VGG:
    """VGG-16 (configuration D) with BatchNorm, CIFAR form."""
    return VGG("vgg16", **kwargs)


def vgg19(**kwargs) -> VGG:
    """VGG-19 (configuration E) with BatchNorm, CIFAR form."""
    return VGG("vgg19", **kwargs)
