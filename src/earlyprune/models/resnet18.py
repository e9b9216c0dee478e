"""ResNet-18 (He et al., CVPR 2016) adapted to 32x32 inputs, the form common in CIFAR pruning work.

Four stages of two basic blocks with 64, 128, 256 and 512 channels. The ImageNet stem (7x7 stride-2
conv and 3x3 max-pool, a 4x reduction) is replaced by a 3x3 stride-1 conv without max-pool, so a 32x32
image reaches the last stage at 4x4. Projection shortcuts (1x1 conv + BN) at the first block of stages
2-4 (see :mod:`._resnet`). 11,173,962 parameters for 10 classes.
"""

from __future__ import annotations

from ._resnet import ResNet

PLANES = (64, 128, 256, 512)
BLOCKS = (2, 2, 2, 2)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 for 32x32 images; keyword arguments go to :class:`ResNet`."""
    return ResNet(BLOCKS, PLANES, **kwargs)
