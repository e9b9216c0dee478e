"""Model registry: ``create(name, ...)`` builds a reference model with its paper's initialisation.

Every model built here carries ``input_shape``, the shape of one input it was sized for ((C, H, W)
images, (seq_len,) token ids, (F,) features), ``input_dtype`` (float32, or int64 for token ids),
``task`` and ``default_dataset``: the data-free criteria (SynFlow's all-ones input) and the FLOPs
counter use ``input_shape`` when they get no data. Token models take a floating all-ones input as token
ids (token 1) and have ``example_input(batch_size)`` giving int64 ids; ``vocab_size`` and ``seq_len``
are attributes of theirs.

Kinds of input (``ModelSpec.inputs``): ``"image"`` (the LeNets, VGG, ResNets; what :func:`names` lists
by default, as before), ``"tokens"`` (``textcnn``, ``transformer-encoder``, ``lstm-lm``, ``gpt-mini``) and
``"features"`` (``mlp-regressor``) and ``"observations"`` (``dqn-mlp``, a Q-network for reinforcement
learning).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .init import initialize
from .language import GPTMini, LSTMLanguageModel
from .lenet import LeNet5Caffe, LeNet300100
from .qnetwork import QNetworkMLP
from .resnet18 import resnet18
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56
from .tabular import MLPRegressor
from .text import TextCNN, TransformerEncoderClassifier
from .vgg import vgg11, vgg16, vgg19

INPUT_KINDS = ("image", "tokens", "features", "observations")


@dataclass(frozen=True)
class ModelSpec:
    """What ``create`` needs to know about one reference model."""

    name: str
    builder: Callable[..., nn.Module]  # (num_classes, width, in_channels, input_size) -> model for images
    init: str  # the paper's initialisation scheme, see :mod:`.init`
    input_shape: tuple[int, ...]  # (C, H, W) images; the default (seq_len,) or (F,) otherwise
    dataset: str  # the dataset the papers use it with
    paper: str
    inputs: str = "image"  # "image", "tokens", "features" or "observations"
    task: str = "classification"  # or "language_modelling", "regression", "reinforcement_learning"


_MNIST, _CIFAR = (1, 28, 28), (3, 32, 32)
_SPECS = [
    ModelSpec("lenet300", LeNet300100, "variance_scaling", _MNIST, "mnist", "LeNet-300-100; SNIP (Lee et al. 2019)"),
    ModelSpec("lenet5", LeNet5Caffe, "variance_scaling", _MNIST, "mnist", "LeNet-5-Caffe; SNIP (Lee et al. 2019)"),
    ModelSpec("vgg11", vgg11, "kaiming", _CIFAR, "cifar10", "VGG-11-BN, GraSP CIFAR form"),
    ModelSpec("vgg16", vgg16, "kaiming", _CIFAR, "cifar10", "VGG-16-BN, GraSP CIFAR form"),
    ModelSpec("vgg19", vgg19, "kaiming", _CIFAR, "cifar10", "VGG-19-BN, GraSP CIFAR form"),
    ModelSpec("resnet20", resnet20, "kaiming", _CIFAR, "cifar10", "ResNet-20 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet32", resnet32, "kaiming", _CIFAR, "cifar10", "ResNet-32 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet44", resnet44, "kaiming", _CIFAR, "cifar10", "ResNet-44 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet56", resnet56, "kaiming", _CIFAR, "cifar10", "ResNet-56 CIFAR (He et al. 2016), option B"),
    ModelSpec("resnet18", resnet18, "kaiming", _CIFAR, "cifar10", "ResNet-18 with a 3x3 stem for 32x32 inputs"),
    ModelSpec("textcnn", TextCNN, "kaiming", (64,), "sst2", "CNN for sentence classification (Kim 2014)",
              inputs="tokens"),
    ModelSpec("transformer-encoder", TransformerEncoderClassifier, "gpt2", (64,), "sst2",
              "small pre-LN transformer encoder, mean pooling (Vaswani et al. 2017; BERT-style head)",
              inputs="tokens"),
    ModelSpec("lstm-lm", LSTMLanguageModel, "default", (128,), "tinyshakespeare",
              "2-layer LSTM language model (Zaremba et al. 2014; PyTorch word_language_model)",
              inputs="tokens", task="language_modelling"),
    ModelSpec("gpt-mini", GPTMini, "gpt2", (128,), "tinyshakespeare",
              "small GPT-style causal decoder (Radford et al. 2019; nanoGPT shakespeare_char)",
              inputs="tokens", task="language_modelling"),
    ModelSpec("mlp-regressor", MLPRegressor, "kaiming", (13,), "california-housing",
              "MLP 128-64-1 for tabular regression (Géron, Hands-On ML ch. 10)", inputs="features",
              task="regression"),
    ModelSpec("dqn-mlp", QNetworkMLP, "default", (4,), "cartpole",
              "DQN Q-network MLP 256-256 (Mnih et al. 2015; RL Baselines3 Zoo's CartPole-v1 DQN)",
              inputs="observations", task="reinforcement_learning"),
]

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
ALIASES: Mapping[str, str] = MappingProxyType({
    "lenet-300-100": "lenet300",
    "lenet300100": "lenet300",
    "lenet-5-caffe": "lenet5",
    "lenet5-caffe": "lenet5",
    "lenet-5": "lenet5",
    "vgg-11": "vgg11",
    "vgg-16": "vgg16",
    "vgg-19": "vgg19",
    "resnet-20": "resnet20",
    "resnet-32": "resnet32",
    "resnet-44": "resnet44",
    "resnet-56": "resnet56",
    "resnet-18": "resnet18",
    "text-cnn": "textcnn",
    "kim-cnn": "textcnn",
    "transformer": "transformer-encoder",
    "transformer_encoder": "transformer-encoder",
    "lstm": "lstm-lm",
    "lstm_lm": "lstm-lm",
    "gpt": "gpt-mini",
    "gpt_mini": "gpt-mini",
    "mlp": "mlp-regressor",
    "mlp_regressor": "mlp-regressor",
    "dqn": "dqn-mlp",
    "dqn_mlp": "dqn-mlp",
})


def names(inputs: str | None = "image") -> list[str]:
    """The canonical names of the models taking ``inputs``: ``"image"`` (the default: the image
    classifiers, the list of earlier versions), ``"tokens"``, ``"features"``, or ``None`` for every model
    ``create`` accepts. Aliases such as ``"lenet-5-caffe"`` are in :data:`ALIASES`."""
    if inputs is not None and inputs not in INPUT_KINDS:
        raise ValueError(f"unknown kind of input {inputs!r}; one of {', '.join(INPUT_KINDS)} or None")
    return [n for n, s in MODELS.items() if inputs is None or s.inputs == inputs]


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (a canonical name or an alias, any case).

    Raises ``ValueError`` listing the known names if there is no such model.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)} (aliases: {', '.join(ALIASES)})"
        )
    return MODELS[key]


def input_shape(name: str) -> tuple[int, ...]:
    """The default input shape of model ``name``, e.g. ``(1, 28, 28)`` for ``"lenet5"``, ``(64,)`` token ids
    for ``"textcnn"``, ``(13,)`` features for ``"mlp-regressor"``."""
    return spec(name).input_shape


def default_dataset(name: str) -> str:
    """The dataset the papers use model ``name`` with: ``"mnist"`` for the LeNets, ``"cifar10"`` for VGG and
    the ResNets, ``"sst2"``, ``"tinyshakespeare"`` or ``"california-housing"`` for the others."""
    return spec(name).dataset


def create(
    name: str,
    num_classes: int | None = None,
    width: float = 1.0,
    init: str | None = None,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    **options: Any,
) -> nn.Module:
    """Build model ``name`` (see :func:`names`) and initialise it.

    Args:
        name: a canonical name or an alias, e.g. ``"resnet20"``, ``"lenet-5-caffe"`` or ``"textcnn"``.
        num_classes: outputs of the final layer: classes (default 10 for image models, 2 for the
            sentence classifiers), the vocabulary of a language model (it must equal ``vocab_size`` when
            both are given), or a regressor's outputs (default 1). ``num_outputs=`` is the same setting.
        width: multiplies every hidden width (channels = ``max(1, round(c * width))``), for CPU-sized
            variants such as ``vgg16`` at ``width=0.25``; the classifier's outputs stay ``num_classes``.
        init: ``"kaiming"``, ``"variance_scaling"``, ``"gpt2"`` or ``"default"``; ``None`` means the
            paper's (variance scaling for the LeNets, Kaiming normal for VGG, ResNets, TextCNN and the MLP,
            GPT-2's N(0, 0.02) for the transformers, PyTorch's for the LSTM).
        in_channels, input_size: image models only: the input images' channels and side (or ``(H, W)``),
            by default the model's dataset's; the LeNets' first layers and the VGG's minimum size depend
            on them.
        options: further keyword arguments of the model's constructor, e.g. ``vocab_size``, ``seq_len``
            (token models), ``in_features`` (``mlp-regressor``), ``tie_weights`` (``lstm-lm``),
            ``dropout``. An option the model does not take is an error naming the ones it takes; an option
            given as ``None`` means the model's default. ``DatasetSplit.model_kwargs()`` gives the ones
            that size a model for a split.

    Returns:
        The model, with attributes ``input_shape``, ``input_dtype``, ``task``, ``default_dataset``,
        ``arch`` (the canonical name) and ``create_arguments`` (what built it, for reloading it shrunk).
    """
    model_spec = spec(name)
    options = {k: v for k, v in options.items() if v is not None}
    if "num_outputs" in options:
        outputs = options.pop("num_outputs")
        if num_classes is not None and num_classes != outputs:
            raise ValueError(f"num_classes ({num_classes}) and num_outputs ({outputs}) differ: give one")
        num_classes = outputs
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    kwargs: dict[str, Any] = {"width": width}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if model_spec.inputs == "image":
        channels, height, wide = model_spec.input_shape
        kwargs["in_channels"] = in_channels or channels
        kwargs["input_size"] = input_size or (height, wide)
    else:
        for key, value in (("in_channels", in_channels), ("input_size", input_size)):
            if value is not None:
                sizing = {"tokens": "vocab_size and seq_len", "observations": "obs_dim"}.get(model_spec.inputs,
                                                                                             "in_features")
                raise ValueError(f"model {model_spec.name!r} takes {model_spec.inputs}, not images: it has no "
                                 f"{key} (size it with {sizing})")
    taken = [p for p in inspect.signature(model_spec.builder).parameters
             if p not in ("num_classes", "width", "in_channels", "input_size", "self")]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(f"model {model_spec.name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(taken) or 'none'}")
    model = model_spec.builder(**kwargs, **options)
    model.default_dataset = model_spec.dataset
    model.arch = model_spec.name
    model.task = model_spec.task
    # how to build it again at full width (earlyprune.structured.saving rebuilds a shrunk model from it)
    model.create_arguments = {"name": model_spec.name, **kwargs, **options}
    if not hasattr(model, "input_dtype"):
        model.input_dtype = torch.float32
    return initialize(model, init or model_spec.init)
