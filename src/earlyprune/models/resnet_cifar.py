"""ResNet-20/32/44/56 for CIFAR (He et al., CVPR 2016, section 4.2), as in the GraSP/SynFlow/ProsPr code.

Depth 6n + 2: a 3x3 stem with 16 channels, three stages of n basic blocks with 16, 32 and 64 channels
(the second and third start with stride 2: 32x32 -> 16x16 -> 8x8), a global average pool and one Linear
layer. BatchNorm after every convolution; projection shortcuts (1x1 conv + BN, "option B") where the
shape changes, i.e. at the first block of stages 2 and 3 (see :mod:`._resnet`). ResNet-20 has
272,474 parameters for 10 classes; the two projections account for 2,752 of them (the paper's
parameter-free option A gives 269,722, the "0.27M" of He et al.'s table 6).

Some pruning-at-initialisation papers use wider variants of these networks; ``width`` scales all three
stages (``width=2`` gives 32/64/128 channels).
"""

from __future__ import annotations

from ._resnet import ResNet

PLANES = (16, 32, 64)
DEPTHS = (20, 32, 44, 56, 110)


def cifar_resnet(depth: int, **kwargs) -> ResNet:
    """ResNet-``depth`` for CIFAR, ``depth = 6n + 2``; keyword arguments go to :class:`ResNet`."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], PLANES, **kwargs)


def resnet20(**kwargs) -> ResNet:
    """ResNet-20 (n = 3)."""
    return cifar_resnet(20, **kwargs)


def resnet32(**kwargs) -> ResNet:
    """ResNet-32 (n = 5)."""
    return cifar_resnet(32, **kwargs)


def resnet44(**kwargs) -> ResNet:
    """ResNet-44 (n = 7)."""
    return cifar_resnet(44, **kwargs)


def resnet56(**kwargs) -> ResNet:
    """ResNet-56 (n = 9)."""
    return cifar_resnet(56, **kwargs)
