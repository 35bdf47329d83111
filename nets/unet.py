"""UNet on an encoder of :data:`nets.backbones.BACKBONES` (the original's VGG16 or ResNet50, or
one of torchvision's); state-dict keys match the reference's weights files."""

from __future__ import annotations

import torch
from torch import nn

from nets.backbones import BACKBONES, backbone_named
from nets.errors import UserError
from nets.interpolate import UpsamplingBilinear2d


def backbone_prefixes() -> dict[str, str]:
    """The state-dict prefix of each backbone's encoder (the attribute it lives at)."""
    return {name: backbone.prefix for name, backbone in BACKBONES.items()}


def check_input_shape(height: int, width: int, backbone: str) -> None:
    """Raise a :class:`UserError` (a ``ValueError``) naming the nearest valid sizes if needed."""
    multiple = backbone_named(backbone).multiple
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value % multiple == 0 and value > 0:
            continue
        lower = value // multiple * multiple
        choices = [str(v) for v in (lower, lower + multiple) if v > 0]
        problems.append(f"{name} {value} -> {' or '.join(choices)}")
    if problems:
        raise UserError(
            f"input size {height}x{width} does not fit the {backbone} backbone, whose height and "
            f"width must be multiples of {multiple}; use the nearest valid size "
            f"({'; '.join(problems)})."
        )


def check_width_mult(width_mult: float, backbone: str, pretrained: bool = False) -> None:
    """Whole channels (64 x ``width_mult`` in the first layer), on an encoder that scales,
    from scratch unless at the ImageNet weights' width, 1."""
    if not (width_mult > 0 and float(64 * width_mult).is_integer()):
        raise UserError(
            f"width_mult (--width-mult) {width_mult:g} gives {64 * width_mult:g} channels in the "
            "first layer; use a multiple of 1/64 such as 0.25, 0.5 or 0.75."
        )
    if width_mult != 1 and not backbone_named(backbone).scales:
        scaled = ", ".join(name for name, row in BACKBONES.items() if row.scales)
        raise UserError(
            f"width_mult (--width-mult) {width_mult:g} scales the encoders built here ({scaled}), "
            f"but {backbone}'s channels are its ImageNet layout's; use --width-mult 1, or "
            "--backbone vgg."
        )
    if pretrained and width_mult != 1:
        raise UserError(
            f"pretrained (--pretrained) loads ImageNet weights at the original's width, but "
            f"width_mult (--width-mult) is {width_mult:g}; train from scratch "
            "(--no-pretrained), or use --width-mult 1."
        )


def width_mult_of(state: dict) -> float | None:
    """The ``width_mult`` a UNet state dict was built with, read from its head's input
    channels (64 at 1; None: no head)."""
    head = state.get("final.weight")
    return None if head is None else head.shape[1] / 64


def check_tile(tile: int | None, stride: int | None, backbone: str) -> None:
    """Windows must hold at least one network input multiple, and overlap or touch."""
    if tile is None:
        if stride is not None:
            raise UserError("--stride spaces the --tile windows; give --tile as well.")
        return
    multiple = backbone_named(backbone).multiple
    if tile < multiple:
        raise UserError(
            f"--tile {tile} is smaller than the {backbone} network's input multiple {multiple}; "
            f"use --tile {multiple} or more (the training input size is the usual choice)."
        )
    if stride is not None and not 0 < stride <= tile:
        raise UserError(f"--stride {stride} must be between 1 and --tile {tile}.")


class unetUp(nn.Module):  # noqa: N801 - the reference's name, kept for its users
    """Decoder block: upsample the deeper map x2, concat ``[skip, up]``, then two conv3x3+ReLU."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.up = UpsamplingBilinear2d(scale_factor=2)  # align_corners=True, as trained
        self.conv1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs1: torch.Tensor, inputs2: torch.Tensor) -> torch.Tensor:
        outputs = torch.cat([inputs1, self.up(inputs2)], 1)
        outputs = self.relu(self.conv1(outputs))
        return self.relu(self.conv2(outputs))


class Unet(nn.Module):
    """The reference's UNet: encoder features fused bottom-up, logits at input resolution.
    ``width_mult`` (not the original's: 1) scales the channels of a VGG encoder and of the
    decoder alike."""

    def __init__(
        self,
        num_classes: int = 21,
        pretrained: bool = False,
        backbone: str = "vgg",
        width_mult: float = 1.0,
    ):
        super().__init__()
        check_width_mult(width_mult, backbone, pretrained)
        row = backbone_named(backbone)
        if row.scales:
            setattr(self, row.attribute, row.build(pretrained, width_mult=width_mult))
        else:
            setattr(self, row.attribute, row.build(pretrained))
        # the decoder takes each map with the upsampled one below it
        c = [round(channels * width_mult) for channels in row.channels]
        out_filters = [round(channels * width_mult) for channels in (64, 128, 256, 512)]
        in_filters = [c[0] + out_filters[1], c[1] + out_filters[2], c[2] + out_filters[3],
                      c[3] + c[4]]  # fmt: skip
        self.up_concat4 = unetUp(in_filters[3], out_filters[3])
        self.up_concat3 = unetUp(in_filters[2], out_filters[2])
        self.up_concat2 = unetUp(in_filters[1], out_filters[1])
        self.up_concat1 = unetUp(in_filters[0], out_filters[0])
        if row.first_at_half:
            # the first feature map is at stride 2: one more upsampling restores full size
            self.up_conv = nn.Sequential(
                UpsamplingBilinear2d(scale_factor=2),
                nn.Conv2d(out_filters[0], out_filters[0], kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(out_filters[0], out_filters[0], kernel_size=3, padding=1),
                nn.ReLU(),
            )
        else:
            self.up_conv = None
        self.final = nn.Conv2d(out_filters[0], num_classes, 1)
        self.backbone, self.width_mult = backbone, width_mult

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, backbone_named(self.backbone).attribute)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        check_input_shape(inputs.shape[-2], inputs.shape[-1], self.backbone)
        feat1, feat2, feat3, feat4, feat5 = self.encoder(inputs)
        up4 = self.up_concat4(feat4, feat5)
        up3 = self.up_concat3(feat3, up4)
        up2 = self.up_concat2(feat2, up3)
        up1 = self.up_concat1(feat1, up2)
        if self.up_conv is not None:
            up1 = self.up_conv(up1)
        return self.final(up1)

    def freeze_backbone(self) -> None:
        self._set_backbone_trainable(False)

    def unfreeze_backbone(self) -> None:
        self._set_backbone_trainable(True)

    def _set_backbone_trainable(self, trainable: bool) -> None:
        for param in self.encoder.parameters():
            param.requires_grad = trainable
