"""Test oracle: the seed's reference code for the VGG UNet and the losses, nearly verbatim.

Our modules must reproduce these numbers; it is never imported by the project itself.
"""

import torch
import torch.nn.functional as F
from torch import nn


def make_layers(cfg, in_channels=3):
    layers = []
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class RefVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make_layers(CFG_D)

    def forward(self, x):
        feat1 = self.features[:4](x)
        feat2 = self.features[4:9](feat1)
        feat3 = self.features[9:16](feat2)
        feat4 = self.features[16:23](feat3)
        feat5 = self.features[23:-1](feat4)
        return [feat1, feat2, feat3, feat4, feat5]


class RefUp(nn.Module):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.conv1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs1, inputs2):
        outputs = torch.cat([inputs1, self.up(inputs2)], 1)
        outputs = self.relu(self.conv1(outputs))
        return self.relu(self.conv2(outputs))


class RefVggUnet(nn.Module):
    def __init__(self, num_classes=21):
        super().__init__()
        self.vgg = RefVGG()
        in_filters, out_filters = [192, 384, 768, 1024], [64, 128, 256, 512]
        self.up_concat4 = RefUp(in_filters[3], out_filters[3])
        self.up_concat3 = RefUp(in_filters[2], out_filters[2])
        self.up_concat2 = RefUp(in_filters[1], out_filters[1])
        self.up_concat1 = RefUp(in_filters[0], out_filters[0])
        self.final = nn.Conv2d(out_filters[0], num_classes, 1)

    def forward(self, inputs):
        feat1, feat2, feat3, feat4, feat5 = self.vgg.forward(inputs)
        up4 = self.up_concat4(feat4, feat5)
        up3 = self.up_concat3(feat3, up4)
        up2 = self.up_concat2(feat2, up3)
        up1 = self.up_concat1(feat1, up2)
        return self.final(up1)


def ref_ce_loss(inputs, target, cls_weights, num_classes=21):
    n, c, h, w = inputs.size()
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    return nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes)(
        temp_inputs, temp_target
    )


def ref_focal_loss(inputs, target, cls_weights, num_classes=21, alpha=0.5, gamma=2):
    n, c, h, w = inputs.size()
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    logpt = -nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes, reduction="none")(
        temp_inputs, temp_target
    )
    pt = torch.exp(logpt)
    if alpha is not None:
        logpt *= alpha
    loss = -((1 - pt) ** gamma) * logpt
    return loss.mean()


def ref_dice_loss(inputs, target, beta=1, smooth=1e-5, hard_threshold=None):
    n, c, h, w = inputs.size()
    nt, ht, wt, ct = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = torch.softmax(
        inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c), -1
    )
    if hard_threshold is not None:  # f_score
        temp_inputs = torch.gt(temp_inputs, hard_threshold).float()
    temp_target = target.view(n, -1, ct)
    tp = torch.sum(temp_target[..., :-1] * temp_inputs, axis=[0, 1])
    fp = torch.sum(temp_inputs, axis=[0, 1]) - tp
    fn = torch.sum(temp_target[..., :-1], axis=[0, 1]) - tp
    score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
    if hard_threshold is not None:
        return torch.mean(score)
    return 1 - torch.mean(score)
