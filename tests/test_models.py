"""Reference models: shapes, parameter counts derived by hand, width multiplier, initialisation, tracing."""

from __future__ import annotations

import math

import pytest
import torch
import torch_pruning as tp

from earlyprune import models


def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def fc(cin, cout):
    return cin * cout + cout


def resnet_cifar_params(n, planes=(16, 32, 64), classes=10):
    total = conv(3, planes[0], 3) + bn(planes[0])
    cin = planes[0]
    for stage, p in enumerate(planes):
        for b in range(n):
            total += conv(cin, p, 3) + bn(p) + conv(p, p, 3) + bn(p)
            if cin != p:  # projection shortcut (option B)
                total += conv(cin, p, 1) + bn(p)
            cin = p
    return total + fc(cin, classes)


def resnet18_params(classes=10):
    total = conv(3, 64, 3) + bn(64)
    cin = 64
    for p in (64, 128, 256, 512):
        for b in range(2):
            total += conv(cin, p, 3) + bn(p) + conv(p, p, 3) + bn(p)
            if cin != p:
                total += conv(cin, p, 1) + bn(p)
            cin = p
    return total + fc(512, classes)


def vgg16_params(classes=10):
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for c in cfg:
        total += conv(cin, c, 3) + bn(c)
        cin = c
    return total + fc(512, classes)


EXPECTED = {
    "lenet300": fc(784, 300) + fc(300, 100) + fc(100, 10),  # 266,610
    "lenet5": conv(1, 20, 5, True) + conv(20, 50, 5, True) + fc(800, 500) + fc(500, 10),  # 431,080
    "resnet20": resnet_cifar_params(3),
    "resnet32": resnet_cifar_params(5),
    "vgg16": vgg16_params(),
    "resnet18": resnet18_params(),
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_counts_match_the_architecture(name):
    assert count(models.create(name)) == EXPECTED[name]


def test_known_published_sizes():
    assert EXPECTED["lenet300"] == 266_610 and EXPECTED["lenet5"] == 431_080


@pytest.mark.parametrize("name", models.names())
def test_every_model_runs_on_its_input(name):
    model = models.create(name, num_classes=7, width=0.25)
    assert model.input_shape == models.input_shape(name)
    out = model(torch.randn(2, *model.input_shape))
    assert out.shape == (2, 7)


def test_width_multiplier_scales_channels():
    half = models.create("resnet20", width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 32
    quarter = models.create("vgg16", width=0.25)
    assert quarter.classifier.in_features == 128
    lenet = models.create("lenet5", width=0.5)
    assert lenet.conv1.out_channels == 10 and lenet.fc1.out_features == 250


def test_lenet_sizes_itself_from_input_size():
    model = models.create("lenet5", in_channels=3, input_size=32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_variance_scaling_init_is_truncated_normal_with_std_sqrt_one_over_fan_in():
    torch.manual_seed(0)
    model = models.create("lenet300")  # variance scaling by default
    w = model.fc1.weight
    sigma = math.sqrt(1 / 784)
    assert w.abs().max() <= 2 * sigma + 1e-7
    # A normal truncated at ±2σ has std 0.8796σ.
    assert float(w.detach().std()) == pytest.approx(0.8796 * sigma, rel=0.02)
    assert torch.all(model.fc1.bias == 0)


def test_kaiming_init_has_std_sqrt_two_over_fan_in():
    torch.manual_seed(0)
    model = models.create("vgg16", width=0.5)
    w = model.features[3].weight  # second conv: fan_in = 32 * 9
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)
    default = models.create("lenet300", init="default")
    assert float(default.fc1.bias.detach().abs().sum()) > 0  # PyTorch's init leaves non-zero biases


def test_unknown_model_and_init_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="known models: lenet300, lenet5"):
        models.create("alexnet")
    with pytest.raises(ValueError, match="kaiming"):
        models.create("lenet5", init="xavier")


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "resnet20", "resnet18"])
def test_models_are_traceable_for_structured_surgery(name):
    model = models.create(name, width=0.25)
    example = torch.randn(1, *model.input_shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    group = graph.get_pruning_group(first_conv, tp.prune_conv_out_channels, idxs=[0, 1])
    group.prune()
    assert first_conv.out_channels == max(1, round({"lenet5": 20, "vgg11": 64, "resnet20": 16, "resnet18": 64}[name] * 0.25)) - 2
    assert model(example).shape == (1, 10)
