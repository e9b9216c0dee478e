"""The residual network body shared by the CIFAR ResNets and ResNet-18 (He et al., CVPR 2016).

A 3x3 stride-1 stem (Conv-BN-ReLU), stages of basic blocks (the first block of every stage after the
first halves the resolution with stride 2), a global average pool, a flatten and one Linear layer.

Shortcuts are He et al.'s *option B*: the identity where input and output shapes agree, a projection
(1x1 convolution with the block's stride, no bias, then BatchNorm) where the channel count or the
resolution changes. This is the form of the GraSP, SynFlow (OpenLTH) and ProsPr code; it differs from
the parameter-free zero-padding shortcut (option A) of the original CIFAR experiments by the few
projection weights. Projections are plain Conv-BN modules, so torch-pruning ties the channels of a
stage through the residual additions and can remove them physically.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._common import check_width, image_size, scaled


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with a ReLU between; the shortcut is added, then a final ReLU.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, ``len(blocks)`` stages of basic blocks, global average pool, Linear classifier.

    ``blocks[i]`` blocks of ``planes[i]`` channels (times ``width``) in stage ``i``. Module names:
    ``conv1``, ``bn1``, ``relu``, ``layers`` (``layers.<stage>.<block>``), ``pool``, ``flatten``, ``fc``.
    """

    def __init__(self, blocks: Sequence[int], planes: Sequence[int], num_classes: int = 10, width: float = 1.0,
                 in_channels: int = 3, input_size: int | tuple[int, int] = 32):
        super().__init__()
        if len(blocks) != len(planes) or not blocks or min(blocks) < 1:
            raise ValueError(f"need one positive block count per stage, got blocks={blocks}, planes={planes}")
        width = check_width(width)
        height, wide = image_size(input_size)
        self.input_shape = (in_channels, height, wide)
        widths = [scaled(p, width) for p in planes]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        in_planes = widths[0]
        for index, (count, out) in enumerate(zip(blocks, widths)):
            stage = []
            for b in range(count):
                stride = 2 if index > 0 and b == 0 else 1
                stage.append(BasicBlock(in_planes, out, stride))
                in_planes = out
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))
