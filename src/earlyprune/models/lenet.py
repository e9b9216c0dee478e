"""The LeNets of the SNIP paper (Lee et al., ICLR 2019): LeNet-300-100 and LeNet-5-Caffe."""

from __future__ import annotations

from torch import nn


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class LeNet300100(nn.Module):
    """MLP 784-300-100-10 with ReLU (LeCun et al. 1998), on flattened images."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        h1, h2 = _scaled(300, width), _scaled(100, width)
        self.fc1 = nn.Linear(in_channels * input_size * input_size, h1)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(h1, h2)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5: conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2, fc 500, fc classes; no padding."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        c1, c2, h = _scaled(20, width), _scaled(50, width), _scaled(500, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet-5 needs inputs of at least 12x12 pixels, got {input_size}")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * side * side, h)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(h, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))
