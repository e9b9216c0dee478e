"""Reference models in their papers' form and initialisation: LeNet-300-100, LeNet-5-Caffe, VGG-11/16/19
and ResNet-20/32/44/56 for CIFAR, ResNet-18 for 32x32 inputs. ``create(name)`` builds one."""

from .init import SCHEMES, initialize
from .registry import create, input_shape, names

__all__ = ["create", "names", "input_shape", "initialize", "SCHEMES"]
