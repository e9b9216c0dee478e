"""The two LeNets of the SNIP paper (Lee, Ajanthan, Torr, ICLR 2019), the standard MNIST pruning benchmarks.

* LeNet-300-100 (LeCun et al. 1998): a 784-300-100-10 MLP with ReLU on the flattened image;
  266,610 parameters.
* LeNet-5-Caffe (the Caffe ``examples/mnist`` LeNet, as used by SNIP and the pruning literature after
  Han et al. 2015): conv 20 5x5 - max-pool 2 - conv 50 5x5 - max-pool 2 - fc 500 - fc 10, ReLU after
  every hidden layer, no padding; 431,080 parameters. (LeCun's original LeNet-5 is a different, 60k
  parameter network.)

Both take 1x28x28 images by default; ``in_channels`` and ``input_size`` size the first layers for
other small images. ``width`` scales every hidden layer (not the classifier's outputs).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import check_width, image_size, scaled


class LeNet300100(nn.Module):
    """MLP ``C*H*W - 300 - 100 - num_classes`` with ReLU, flattening its image input itself."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1,
                 input_size: int | tuple[int, int] = 28):
        super().__init__()
        width = check_width(width)
        height, wide = image_size(input_size)
        self.input_shape = (in_channels, height, wide)
        hidden1, hidden2 = scaled(300, width), scaled(100, width)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * height * wide, hidden1)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


def _after_conv_pool(side: int) -> int:
    """Side length after a 5x5 valid convolution and a 2x2 max-pool (floor, like Caffe/PyTorch)."""
    return (side - 4) // 2


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5: conv(20, 5x5) - pool - conv(50, 5x5) - pool - fc(500) - fc(num_classes), ReLU.

    A 28x28 input gives 50 maps of 4x4, so the first fully connected layer has 800 inputs.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1,
                 input_size: int | tuple[int, int] = 28):
        super().__init__()
        width = check_width(width)
        height, wide = image_size(input_size)
        self.input_shape = (in_channels, height, wide)
        out_h, out_w = _after_conv_pool(_after_conv_pool(height)), _after_conv_pool(_after_conv_pool(wide))
        if out_h < 1 or out_w < 1:
            raise ValueError(f"LeNet-5-Caffe needs inputs of at least 16x16 pixels, got {height}x{wide}")
        channels1, channels2, hidden = scaled(20, width), scaled(50, width), scaled(500, width)
        self.conv1 = nn.Conv2d(in_channels, channels1, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(channels1, channels2, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels2 * out_h * out_w, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))
