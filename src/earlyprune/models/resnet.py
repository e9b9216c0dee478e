"""ResNets for 32x32 images (He et al., CVPR 2016).

* ResNet-20/32/44/56: the CIFAR form, three stages of n basic blocks with 16/32/64 channels, as in the
  GraSP and ProsPr code, with projection shortcuts (1x1 conv + BatchNorm, "option B") where the shape
  changes. Depth = 6n + 2.
* ResNet-18: four stages of two basic blocks, 64/128/256/512 channels, with a 3x3 stride-1 stem and no
  max-pool, the usual adaptation to 32x32 inputs.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu_out = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of basic blocks, global average pooling and one Linear classifier."""

    def __init__(self, blocks: list[int], planes: list[int], num_classes: int = 10, width: float = 1.0,
                 in_channels: int = 3, input_size: int = 32):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        planes = [max(1, round(p * width)) for p in planes]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        stages = []
        in_planes = planes[0]
        for index, (count, out) in enumerate(zip(blocks, planes)):
            stride = 1 if index == 0 else 2
            layer = []
            for b in range(count):
                layer.append(BasicBlock(in_planes, out, stride if b == 0 else 1))
                in_planes = out
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))


def cifar_resnet(depth: int, **kwargs) -> ResNet:
    """ResNet-(6n+2) for CIFAR with 16/32/64 channels."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], [16, 32, 64], **kwargs)


def resnet18(**kwargs) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], **kwargs)
