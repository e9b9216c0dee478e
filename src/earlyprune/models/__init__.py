"""Reference models in their papers' form and initialisation, no torchvision needed.

LeNet-300-100 and LeNet-5-Caffe (SNIP's MNIST models), VGG-11/16/19 in the CIFAR form of the GraSP and
SynFlow code, ResNet-20/32/44/56 for CIFAR (option-B shortcuts) and ResNet-18 for 32x32 inputs; for
the other tasks TextCNN (Kim 2014) and a small transformer encoder on token ids, an LSTM language model
and a small GPT (next-token logits (B, seq, vocab)), and an MLP regressor::

    from earlyprune import models
    model = models.create("resnet20", num_classes=10, width=0.5)   # Kaiming normal, as the papers
    models.names()                  # ['lenet300', 'lenet5', 'vgg11', ...]
    models.input_shape("lenet5")    # (1, 28, 28); also model.input_shape
    models.names(None)              # every model, the token and feature models included
    models.create("gpt-mini", vocab_size=65, seq_len=128)   # or **split.model_kwargs()
"""

from .init import SCHEMES, initialize
from .registry import ALIASES, MODELS, ModelSpec, create, default_dataset, input_shape, names, spec

__all__ = [
    "create", "names", "spec", "input_shape", "default_dataset", "MODELS", "ALIASES", "ModelSpec",
    "initialize", "SCHEMES",
]
