"""VGG16 (configuration D, no batch norm) as the UNet encoder, laid out as torchvision's."""

from __future__ import annotations

import torch
from torch import nn

from nets.pretrained import load_pretrained

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: VGG configuration D: conv3x3 output channels, "M" for a 2x2 max pool.
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]  # fmt: skip


def make_layers(config: list, in_channels: int = 3) -> nn.Sequential:
    """Conv3x3 (padding 1) + ReLU per number and a 2x2 max pool per "M", at torchvision's
    indices (this module does not import torchvision, which costs a second at start-up)."""
    layers: list[nn.Module] = []
    for value in config:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, value, kernel_size=3, padding=1),
                       nn.ReLU(inplace=True)]  # fmt: skip
            in_channels = value
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG16 ``features`` split before each max pool into five feature maps.

    ``features`` keeps torchvision's indices, so ``vgg16-397923af.pth`` loads into it and the
    UNet state-dict keys read ``vgg.features.N.*`` like the reference's. The classifier and
    average pool are not built: the encoder never uses them.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.features = make_layers(VGG16_CONFIG)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        self._initialize_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feat1 = self.features[:4](x)  # stride 1, 64 channels
        feat2 = self.features[4:9](feat1)  # stride 2, 128
        feat3 = self.features[9:16](feat2)  # stride 4, 256
        feat4 = self.features[16:23](feat3)  # stride 8, 512
        feat5 = self.features[23:-1](feat4)  # stride 16, 512; the last pool is unused
        return [feat1, feat2, feat3, feat4, feat5]

    def _initialize_weights(self) -> None:
        """torchvision's (and the reference's) VGG init: Kaiming fan-out convs, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def VGG16(pretrained: bool = False, in_channels: int = 3) -> VGG:
    """The reference's constructor; ``pretrained`` loads the ImageNet ``features`` weights."""
    model = VGG(in_channels)
    if pretrained:
        load_pretrained(model, VGG16_URL, keep=lambda key: key.startswith("features."))
    return model
