"""VGG for CIFAR (Simonyan & Zisserman 2015, in the CIFAR form of the GraSP and SynFlow code).

3x3 conv - BatchNorm - ReLU blocks, a 2x2 max-pool after each stage, and one Linear classifier on the
512 features (after the fifth pool a 32x32 input is 1x1; an adaptive average pool makes other sizes work
and is the identity at 32x32).
"""

from __future__ import annotations

from torch import nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: str = "vgg16", num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
                 input_size: int = 32):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, round(int(item) * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
