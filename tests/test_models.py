"""Reference models: shapes, parameter counts derived by hand, width multiplier, initialisation, tracing."""

from __future__ import annotations

import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from earlyprune import models
from earlyprune.models.init import TRUNCATED_STD_FACTOR


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models at batch 1-2 are dominated by thread synchronisation: one thread keeps this file fast,
    especially when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Parameter counts at width 1 and 10 classes, derived by hand from the architectures (not from the
# models). Notation: conv(i->o, k) = i*o*k*k (no bias unless said), BN(c) = 2c, fc(i->o) = i*o + o.
#
# LeNet-300-100: fc(784->300) + fc(300->100) + fc(100->10) = 235,500 + 30,100 + 1,010 = 266,610.
# LeNet-5-Caffe (28x28 -> conv5 24 -> pool 12 -> conv5 8 -> pool 4, so 50*4*4 = 800 features):
#   conv(1->20,5)+20 = 520; conv(20->50,5)+50 = 25,050; fc(800->500) = 400,500; fc(500->10) = 5,010
#   -> 431,080.
# ResNet-20, option B (n = 3 blocks per stage):
#   stem conv(3->16,3) + BN(16) = 432 + 32 = 464
#   stage 1: 3 x [2 conv(16->16,3) + 2 BN(16)] = 3 x (4,608 + 64) = 14,016
#   stage 2: first block conv(16->32,3) 4,608 + conv(32->32,3) 9,216 + 2 BN 128 + projection
#            conv(16->32,1) 512 + BN 64 = 14,528; two more blocks 2 x (18,432 + 128) = 37,120 -> 51,648
#   stage 3: first block 18,432 + 36,864 + 256 + projection 2,048 + 128 = 57,728;
#            two more 2 x (73,728 + 256) = 147,968 -> 205,696
#   fc(64->10) = 650.  Total 464 + 14,016 + 51,648 + 205,696 + 650 = 272,474.
# ResNet-32 (n = 5): 464 + 5 x 4,672 + (14,528 + 4 x 18,560) + (57,728 + 4 x 73,984) + 650 = 466,906.
# ResNet-56 (n = 9): 464 + 9 x 4,672 + (14,528 + 8 x 18,560) + (57,728 + 8 x 73,984) + 650 = 855,770.
# VGG-16 (GraSP CIFAR form: bias-free 3x3 convs + BN, one fc(512->10)):
#   convs 1,728 + 36,864 + 73,728 + 147,456 + 294,912 + 2 x 589,824 + 1,179,648 + 5 x 2,359,296
#         = 14,710,464
#   BN 2 x (2x64 + 2x128 + 3x256 + 6x512) = 2 x 4,224 = 8,448;  fc 5,130.  Total 14,724,042.
# VGG-11: convs 1,728 + 73,728 + 294,912 + 589,824 + 1,179,648 + 3 x 2,359,296 = 9,217,728;
#   BN 2 x (64 + 128 + 2x256 + 4x512) = 5,504; fc 5,130.  Total 9,228,362.
# VGG-19: convs 1,728 + 36,864 + 73,728 + 147,456 + 294,912 + 3 x 589,824 + 1,179,648
#         + 7 x 2,359,296 = 20,018,880; BN 2 x (2x64 + 2x128 + 4x256 + 8x512) = 11,008; fc 5,130.
#   Total 20,035,018.
# ResNet-18 (3x3 stem, option B):
#   stem 1,728 + 128 = 1,856; stage 1: 2 x (2 x 36,864 + 256) = 147,968
#   stage 2: (73,728 + 147,456 + 512 + 8,192 + 256) + (2 x 147,456 + 512) = 230,144 + 295,424 = 525,568
#   stage 3: (294,912 + 589,824 + 1,024 + 32,768 + 512) + (2 x 589,824 + 1,024) = 919,040 + 1,180,672
#            = 2,099,712
#   stage 4: (1,179,648 + 2,359,296 + 2,048 + 131,072 + 1,024) + (2 x 2,359,296 + 2,048)
#            = 3,673,088 + 4,720,640 = 8,393,728
#   fc 5,130.  Total 11,173,962.
# ---------------------------------------------------------------------------------------------------
EXPECTED = {
    "lenet300": 266_610,
    "lenet5": 431_080,
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "vgg11": 9_228_362,
    "vgg16": 14_724_042,
    "vgg19": 20_035_018,
    "resnet18": 11_173_962,
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def cifar_resnet_params(n: int, planes=(16, 32, 64), classes: int = 10) -> int:
    """The same sum as above, as a formula: used for narrowed or pruned ResNets."""
    total = 3 * planes[0] * 9 + 2 * planes[0]
    cin = planes[0]
    for p in planes:
        for _ in range(n):
            total += cin * p * 9 + p * p * 9 + 4 * p
            if cin != p:
                total += cin * p + 2 * p
            cin = p
    return total + cin * classes + classes


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_counts_match_the_hand_derivation(name):
    assert count(models.create(name)) == EXPECTED[name]


def test_resnet_formula_agrees_with_the_hand_numbers():
    assert cifar_resnet_params(3) == EXPECTED["resnet20"] and cifar_resnet_params(9) == EXPECTED["resnet56"]


@pytest.mark.parametrize("name", models.names())
def test_every_model_runs_on_its_input(name):
    model = models.create(name, num_classes=7, width=0.25)
    assert model.input_shape == models.input_shape(name)
    assert model.default_dataset == models.default_dataset(name) and model.arch == name
    assert model(torch.randn(2, *model.input_shape)).shape == (2, 7)


def test_registry_names_aliases_and_shapes():
    assert models.names() == ["lenet300", "lenet5", "vgg11", "vgg16", "vgg19",
                              "resnet20", "resnet32", "resnet44", "resnet56", "resnet18"]
    assert models.input_shape("lenet5") == (1, 28, 28) and models.default_dataset("lenet5") == "mnist"
    assert models.input_shape("resnet20") == (3, 32, 32) and models.default_dataset("vgg16") == "cifar10"
    assert models.create("LeNet-5-Caffe").arch == "lenet5"
    assert count(models.create("lenet-300-100")) == EXPECTED["lenet300"]
    assert models.spec("resnet20").init == "kaiming" and models.spec("lenet300").init == "variance_scaling"


def test_width_multiplier_scales_channel_counts():
    half = models.create("resnet20", width=0.5)
    assert {c.out_channels for c in convs(half)} == {8, 16, 32} and half.fc.in_features == 32
    assert count(half) == cifar_resnet_params(3, planes=(8, 16, 32))
    quarter = models.create("vgg16", width=0.25)
    assert [c.out_channels for c in convs(quarter)] == [16, 16, 32, 32, 64, 64, 64] + [128] * 6
    assert quarter.classifier.in_features == 128
    lenet = models.create("lenet5", width=0.5)
    assert (lenet.conv1.out_channels, lenet.conv2.out_channels, lenet.fc1.out_features) == (10, 25, 250)
    mlp = models.create("lenet300", width=0.1)
    assert (mlp.fc1.out_features, mlp.fc2.out_features, mlp.fc3.out_features) == (30, 10, 10)
    r18 = models.create("resnet18", width=0.125)
    assert {c.out_channels for c in convs(r18)} == {8, 16, 32, 64}
    tiny = models.create("resnet20", width=0.01)  # never below one channel
    assert {c.out_channels for c in convs(tiny)} == {1} and tiny(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="width"):
        models.create("resnet20", width=0)


def test_vgg_is_the_grasp_synflow_cifar_form():
    model = models.create("vgg16")
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4  # none after the fifth stage; global average pool instead
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert [m for m in model.modules() if isinstance(m, nn.Linear)] == [model.classifier]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs(model))
    assert len(convs(models.create("vgg11"))) == 8 and len(convs(models.create("vgg19", width=0.1))) == 16
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("name, projections", [("resnet20", 2), ("resnet56", 2), ("resnet18", 3)])
def test_resnets_use_projection_shortcuts_only_where_the_shape_changes(name, projections):
    model = models.create(name, width=0.25)
    shortcuts = [m.shortcut for m in model.modules() if hasattr(m, "shortcut")]
    projected = [s for s in shortcuts if not isinstance(s, nn.Identity)]
    assert len(projected) == projections
    for s in projected:
        assert isinstance(s[0], nn.Conv2d) and s[0].kernel_size == (1, 1) and s[0].stride == (2, 2)
        assert isinstance(s[1], nn.BatchNorm2d)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_models_size_themselves_from_the_input():
    assert models.create("lenet5", in_channels=3, input_size=32)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert models.create("lenet300", in_channels=3, input_size=32).fc1.in_features == 3072
    vgg = models.create("vgg11", width=0.125, input_size=64)
    assert vgg(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    gray = models.create("resnet20", width=0.25, in_channels=1, input_size=28)
    assert gray.input_shape == (1, 28, 28) and gray(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    assert models.create("lenet5", input_size=(28, 20)).input_shape == (1, 28, 20)
    with pytest.raises(ValueError, match="16x16"):
        models.create("lenet5", input_size=12)
    with pytest.raises(ValueError, match="16x16"):
        models.create("vgg16", input_size=8)


def test_variance_scaling_is_a_normal_truncated_at_two_sigma_with_sigma_sqrt_one_over_fan_in():
    torch.manual_seed(0)
    model = models.create("lenet5")  # the SNIP paper's init by default
    for layer, fan_in in [(model.fc1, 800), (model.conv2, 20 * 25)]:
        w = layer.weight.detach()
        sigma = math.sqrt(1 / fan_in)
        assert float(w.abs().max()) <= 2 * sigma + 1e-7
        assert float(w.abs().max()) > 1.9 * sigma  # the tails are really used
        assert float(w.std()) == pytest.approx(TRUNCATED_STD_FACTOR * sigma, rel=0.03)
        assert float(w.mean()) == pytest.approx(0, abs=0.02 * sigma)
        assert torch.all(layer.bias == 0)
    assert TRUNCATED_STD_FACTOR == pytest.approx(0.8796, abs=1e-4)


def test_kaiming_is_normal_with_std_sqrt_two_over_fan_in():
    torch.manual_seed(0)
    model = models.create("vgg16", width=0.5)  # Kaiming by default
    second = convs(model)[1]  # fan_in = 32 * 9
    assert float(second.weight.detach().std()) == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)
    big = convs(models.create("resnet20"))[-1]  # fan_in = 64 * 9
    assert float(big.weight.detach().std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert torch.all(model.classifier.bias == 0)
    mlp = models.create("lenet300", init="kaiming")  # override the paper's default
    assert float(mlp.fc1.weight.detach().std()) == pytest.approx(math.sqrt(2 / 784), rel=0.03)


def test_default_init_is_pytorchs_own():
    torch.manual_seed(0)
    model = models.create("lenet300", init="default")
    bound = 1 / math.sqrt(784)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    w, b = model.fc1.weight.detach(), model.fc1.bias.detach()
    assert float(w.abs().max()) <= bound and float(b.abs().sum()) > 0
    reset = models.initialize(models.create("lenet300"), "default")
    assert float(reset.fc1.bias.detach().abs().sum()) > 0  # re-initialises a model already initialised


def test_unknown_model_and_init_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="known models: lenet300, lenet5, vgg11, vgg16, vgg19, resnet20"):
        models.create("alexnet")
    with pytest.raises(ValueError, match="kaiming, variance_scaling, default"):
        models.create("lenet5", init="xavier")


def first_prunable(model: nn.Module) -> tuple[nn.Module, object]:
    layer = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
    return layer, fn


@pytest.mark.parametrize("name", models.names())
def test_every_model_is_traceable_and_prunable_by_torch_pruning(name):
    model = models.create(name, width=0.25)
    example = torch.randn(1, *model.input_shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    layer, fn = first_prunable(model)
    before = layer.weight.shape[0]
    graph.get_pruning_group(layer, fn, idxs=[0, 1]).prune()
    assert layer.weight.shape[0] == before - 2
    assert model(example).shape == (1, 10)


def test_pruning_resnet20_stem_channels_shrinks_the_whole_first_stage():
    torch.manual_seed(0)
    model = models.create("resnet20")
    example = torch.randn(2, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    # The residual additions tie the stem to every block output of stage 1 (and to stage 2's inputs).
    assert model.conv1.out_channels == 14 and model.bn1.num_features == 14
    assert all(block.conv2.out_channels == 14 and block.conv1.in_channels == 14 for block in model.layers[0])
    assert model.layers[1][0].shortcut[0].in_channels == 14
    # Stage-1 inner channels (conv1 of each block) are a separate group and stay at 16.
    assert all(block.conv1.out_channels == 16 for block in model.layers[0])
    hand = cifar_resnet_params(3) - (  # removed: 2 stem filters, their BN, and 2 of 16 channels where tied
        2 * 3 * 9 + 2 * 2 + 3 * (2 * 16 * 9 + 2 * 16 * 9 + 2 * 2) + 2 * 32 * 9 + 2 * 32)
    assert count(model) == hand
    model(example).sum().backward()  # still trains
    assert model.conv1.weight.grad.shape == (14, 3, 3, 3)
