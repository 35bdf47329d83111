"""VGG16 (configuration D) as the UNet encoder, laid out as torchvision's: the original's, without
batch norm, and torchvision's ``vgg16_bn``, with it."""

from __future__ import annotations

import torch
from torch import nn

from nets.pretrained import load_pretrained

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
#: VGG configuration D: conv3x3 output channels, "M" for a 2x2 max pool.
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]  # fmt: skip


def make_layers(
    config: list, in_channels: int = 3, batch_norm: bool = False, width_mult: float = 1.0
) -> nn.Sequential:
    """Conv3x3 (padding 1) (+ batch norm) + ReLU per number (times ``width_mult``) and a 2x2 max
    pool per "M", at torchvision's indices (this module does not import torchvision, which
    costs a second at start-up)."""
    layers: list[nn.Module] = []
    for value in config:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            value = round(value * width_mult)
            layers.append(nn.Conv2d(in_channels, value, kernel_size=3, padding=1))
            layers += [nn.BatchNorm2d(value)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            in_channels = value
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG16 ``features`` split before each max pool into five feature maps.

    ``features`` keeps torchvision's indices, so ``vgg16-397923af.pth`` loads into it and the
    UNet state-dict keys read ``vgg.features.N.*`` like the reference's. The classifier and
    average pool are not built: the encoder never uses them. ``width_mult`` scales every
    layer's channels (0.5: 32 to 256, a quarter of the computation; ImageNet's are at 1).
    """

    def __init__(self, in_channels: int = 3, batch_norm: bool = False, width_mult: float = 1.0):
        super().__init__()
        self.features = make_layers(
            VGG16_CONFIG, in_channels, batch_norm=batch_norm, width_mult=width_mult
        )
        pools = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        # each map ends before a pool and the next begins with it (without batch norm: the
        # reference's slices [:4], [4:9], [9:16], [16:23], [23:-1]); the last pool is unused
        self.stages = list(zip([0] + pools[:4], pools, strict=True))
        self._initialize_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []  # strides 1 to 16; 64, 128, 256, 512 and 512 channels
        for start, end in self.stages:
            x = self.features[start:end](x)
            features.append(x)
        return features

    def _initialize_weights(self) -> None:
        """torchvision's (and the reference's) VGG init: Kaiming fan-out convs, zero biases;
        batch norm at scale 1, shift 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def VGG16(pretrained: bool = False, in_channels: int = 3, width_mult: float = 1.0) -> VGG:
    """The reference's constructor; ``pretrained`` loads the ImageNet ``features`` weights."""
    return _vgg16(pretrained, in_channels, batch_norm=False, width_mult=width_mult)


def vgg16_bn(pretrained: bool = False, in_channels: int = 3, width_mult: float = 1.0) -> VGG:
    """VGG16 with batch norm after each conv (torchvision's ``vgg16_bn``); ``pretrained`` loads
    torchvision's ImageNet ``features`` weights."""
    return _vgg16(pretrained, in_channels, batch_norm=True, width_mult=width_mult)


def _vgg16(pretrained: bool, in_channels: int, batch_norm: bool, width_mult: float) -> VGG:
    model = VGG(in_channels, batch_norm=batch_norm, width_mult=width_mult)
    if pretrained:
        url = VGG16_BN_URL if batch_norm else VGG16_URL
        load_pretrained(model, url, keep=lambda key: key.startswith("features."))
    return model
