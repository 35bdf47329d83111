"""ResNet50 as the UNet encoder: torchvision's network with the reference's stem max pool."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from nets.pretrained import load_pretrained

RESNET50_URL = "https://s3.amazonaws.com/pytorch/models/resnet50-19c8e357.pth"


class ResNet50(ResNet):
    """torchvision's ResNet50 returning five feature maps (strides 2, 4, 8, 16, 32).

    Key names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``) so the ImageNet
    file loads; ``fc`` and ``avgpool`` are dropped. The stem pool is the reference's
    ``MaxPool2d(3, 2, padding=0, ceil_mode=True)`` rather than torchvision's ``padding=1``:
    released UNet weights were trained with it.
    """

    def __init__(self):
        super().__init__(Bottleneck, [3, 4, 6, 3])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        del self.avgpool
        del self.fc

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feat1 = self.relu(self.bn1(self.conv1(x)))
        feat2 = self.layer1(self.maxpool(feat1))
        feat3 = self.layer2(feat2)
        feat4 = self.layer3(feat3)
        feat5 = self.layer4(feat4)
        return [feat1, feat2, feat3, feat4, feat5]


def resnet50(pretrained: bool = False) -> ResNet50:
    """The reference's constructor; ``pretrained`` loads ImageNet weights (all but ``fc``)."""
    model = ResNet50()
    if pretrained:
        load_pretrained(model, RESNET50_URL, keep=lambda key: not key.startswith("fc."))
    return model
