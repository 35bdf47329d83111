"""The encoders a UNet can be built on, one row each in :data:`BACKBONES`.

A row says how to build the encoder (a module whose forward returns five feature maps, each
half the size of the one before: strides 1 to 16 for VGG, 2 to 32 for the others), where it
lives in the UNet (its attribute, hence its state-dict prefix), the channels of those five
maps, the multiple that the input's height and width must be, and whether its first map is at
stride 2 (the decoder then ends with one more upsampling). The original's ``vgg`` and
``resnet50`` are the first two rows, then VGG16 with batch norm (torchvision's ``vgg16_bn``
layout, built here); torchvision's ResNet-18, ResNet-34 and MobileNetV3-Large
follow, under their torchvision builder names, with their ImageNet weights found by
torchvision's weights API and read like VGG's (``model_data/`` first, a download otherwise).
A new encoder is one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nets.errors import UserError
from nets.pretrained import load_pretrained
from nets.resnet import resnet50
from nets.vgg import VGG16, vgg16_bn


@dataclass(frozen=True)
class Backbone:
    """One encoder of the table, and what the UNet needs to know of it."""

    name: str
    #: ``build(pretrained)``, or ``build(pretrained, width_mult)`` where ``scales``: the
    #: encoder, with ImageNet weights when ``pretrained``
    build: Callable[..., nn.Module]
    #: the UNet attribute that holds the encoder: its state-dict keys start with it and a dot
    attribute: str
    #: channels of the five feature maps, shallowest first
    channels: tuple[int, int, int, int, int]
    #: input height and width must be multiples of it (the deepest map's stride)
    multiple: int
    #: the shallowest map is at half the input's size: the decoder upsamples once more
    first_at_half: bool
    #: one line for the help and the docs
    summary: str
    #: its channels follow ``width_mult`` (built here, not by an ImageNet layout of torchvision's)
    scales: bool = False

    @property
    def prefix(self) -> str:
        return self.attribute + "."


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the table (``--backbone`` and the checks read it from there)."""
    BACKBONES[backbone.name] = backbone
    return backbone


def backbone_named(name: str) -> Backbone:
    """The row of ``name``; a :class:`UserError` naming the choices for another."""
    if name not in BACKBONES:
        raise UserError(f"unsupported backbone {name!r}; use one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


class TorchvisionEncoder(nn.Module):
    """A torchvision classifier's ``layers`` (named as torchvision names them, so its ImageNet
    file loads), run as the ``blocks`` in order (submodule names, looked up at each call, so
    that a layer replaced in place, as ``SyncBatchNorm.convert_sync_batchnorm`` does, is the
    one that runs), handing on the outputs of the blocks at ``taps``: the five feature maps."""

    def __init__(self, layers: dict[str, nn.Module], blocks: list[str], taps: tuple):
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.blocks, self.taps = blocks, frozenset(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, name in enumerate(self.blocks):
            x = self.get_submodule(name)(x)
            if index in self.taps:
                features.append(x)
        return features


def torchvision_encoder(name: str) -> Callable[[bool], nn.Module]:
    """torchvision's ``name`` without its pool and classifier. A ResNet hands on its stem's ReLU
    and layer1 to layer4 (after torchvision's own stem pool, which its weights were trained
    with); MobileNetV3 the last block at each stride of its ``features``."""

    def build(pretrained: bool) -> nn.Module:
        from torchvision import models  # a second at start-up: only for these encoders

        net = models.get_model(name, weights=None)
        if name.startswith("resnet"):
            names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
            layers = {n: getattr(net, n) for n in names}
            encoder = TorchvisionEncoder(layers, list(names), (2, 4, 5, 6, 7))
        else:
            blocks = [f"features.{i}" for i in range(len(net.features))]
            encoder = TorchvisionEncoder({"features": net.features}, blocks, MOBILENET_TAPS)
        if pretrained:
            url = models.get_model_weights(name).IMAGENET1K_V1.url
            load_pretrained(encoder, url, keep=lambda key: key.split(".")[0] in encoder._modules)
        return encoder

    return build


#: the last block of MobileNetV3-Large's ``features`` at strides 2, 4, 8, 16 and 32
MOBILENET_TAPS = (1, 3, 6, 12, 16)


register(Backbone("vgg", VGG16, "vgg", (64, 128, 256, 512, 512), 16, False,
                  "VGG16, the original's default", scales=True))  # fmt: skip
register(Backbone("resnet50", resnet50, "resnet", (64, 256, 512, 1024, 2048), 32, True,
                  "ResNet-50, the original's other"))  # fmt: skip
register(Backbone("vgg16_bn", vgg16_bn, "vgg16_bn", (64, 128, 256, 512, 512), 16, False,
                  "VGG16 with batch norm, as torchvision's vgg16_bn", scales=True))  # fmt: skip
for _name, _channels, _summary in (
    ("resnet18", (64, 64, 128, 256, 512), "torchvision's ResNet-18"),
    ("resnet34", (64, 64, 128, 256, 512), "torchvision's ResNet-34"),
    ("mobilenet_v3_large", (16, 24, 40, 112, 960), "torchvision's MobileNetV3-Large"),
):
    register(Backbone(_name, torchvision_encoder(_name), _name, _channels, 32, True, _summary))
