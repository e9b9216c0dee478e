"""Initialisation schemes of the papers. Initialisation matters as much as the pruning method.

* ``"variance_scaling"``: the SNIP paper's (Lee et al., 2019) for LeNets: truncated normal with
  std sqrt(1/fan_in), truncated at two standard deviations; biases zero.
* ``"kaiming"``: He et al. 2015 normal, fan-in, ReLU gain, as the GraSP and SynFlow code use for VGG
  and ResNets; biases zero; BatchNorm weight 1, bias 0.
* ``"default"``: PyTorch's own initialisation, left as it is.
"""

from __future__ import annotations

import math

from torch import nn

SCHEMES = ("kaiming", "variance_scaling", "default")

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Initialise ``model``'s Linear/Conv weights and biases (and norms) in place with ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "default":
        return model
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                fan_in = module.weight[0].numel()
                std = math.sqrt(1.0 / fan_in)
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
