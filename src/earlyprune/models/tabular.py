"""An MLP for tabular regression: features (B, in_features) float -> predictions (B, num_classes), one
output by default (``num_classes`` is the number of outputs; ``num_outputs`` is accepted by ``create``)."""

from __future__ import annotations

from torch import Tensor, nn

from ._common import check_positive, check_width, scaled


class MLPRegressor(nn.Module):
    """``in_features - 128 - 64 - 1`` with ReLU: the small fully connected regressor of the usual
    California Housing recipe (Géron, "Hands-On Machine Learning", ch. 10, a Keras MLP on standardised
    features trained with MSE), two hidden layers here. ``width`` scales the hidden layers;
    ``in_features`` defaults to California Housing's 13 (8 standardised numbers + 5 one-hot categories).
    Parameters at width 1: (F + 1) * 128 + 129 * 64 + 65 * num_outputs.
    """

    def __init__(self, num_classes: int = 1, width: float = 1.0, in_features: int = 13,
                 hidden: tuple[int, int] = (128, 64)):
        super().__init__()
        width = check_width(width)
        check_positive("in_features", in_features)
        self.input_shape = (in_features,)
        first, second = scaled(hidden[0], width), scaled(hidden[1], width)
        self.fc1 = nn.Linear(in_features, first)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(first, second)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(second, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))
