"""--width-mult: a UNet with every channel scaled (0.5 computes a quarter as much; the ISBI CPU
recipe trains at 0.25), saved with its width, predicted with it, and refused in a sentence
where it does not fit."""

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import train
import unet
from nets.unet import Unet, width_mult_of
from tests.conftest import base_argv
from utils.errors import UserError
from utils.settings.model import settings_path


def forward_flops(model: nn.Module, size: int = 64) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops()


@pytest.mark.parametrize("backbone", ["vgg", "vgg16_bn"])
def test_half_width_halves_every_channel_and_quarters_the_work(backbone):
    full = Unet(num_classes=3, backbone=backbone).eval()
    half = Unet(num_classes=3, backbone=backbone, width_mult=0.5).eval()
    full_state, half_state = full.state_dict(), half.state_dict()
    assert full_state.keys() == half_state.keys()  # the same layers, the reference's names
    for key, tensor in full_state.items():
        shape = list(tensor.shape)
        if key.endswith("num_batches_tracked"):
            continue
        if key == "final.weight":  # the head keeps its classes and reads half the channels
            shape[1] //= 2
        elif key != "final.bias":
            shape[0] //= 2
            if len(shape) == 4 and key not in (
                "vgg.features.0.weight",
                "vgg16_bn.features.0.weight",
            ):
                shape[1] //= 2  # every conv but the first, which reads the image's 3 channels
        assert list(half_state[key].shape) == shape, key
    assert half(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    # a conv's multiply-adds scale with its in times out channels: a quarter, save the first
    # conv and the head (one input or output side each), a few percent of the whole
    assert 0.24 < forward_flops(half) / forward_flops(full) < 0.26
    assert width_mult_of(half_state) == 0.5 and width_mult_of(full_state) == 1
    with pytest.raises(UserError, match="train from scratch"):  # before any download
        Unet(num_classes=3, backbone=backbone, pretrained=True, width_mult=0.5)


def test_a_half_width_model_travels_with_its_width_and_a_wrong_one_is_named(
    data_root, tmp_path, cli
):
    argv = base_argv(data_root, tmp_path / "half", "--width-mult", "0.5", "--no-freeze-train",
                     "--unfreeze-epoch", "1", "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    weights = tmp_path / "half" / "last_epoch_weights.pth"
    predictor = unet.Unet(model_path=str(weights), device="cpu")  # the width from beside it
    assert predictor.settings.width_mult == 0.5
    mask = predictor.get_miou_png(Image.new("RGB", (40, 48), (90, 120, 60)))
    assert mask.size == (40, 48)
    with pytest.raises(UserError, match="trained with width_mult 0.5 but width_mult is 1; set "
                                        r"width_mult \(--width-mult\) to 0.5"):  # fmt: skip
        unet.Unet(model_path=str(weights), device="cpu", width_mult=1.0)
    settings_path(weights).unlink()  # as the original's files come: the weights say it
    with pytest.raises(UserError, match="trained with width_mult 0.5 but width_mult is 1"):
        unet.Unet(model_path=str(weights), device="cpu", num_classes=4, input_shape=[32, 32])
    argv = base_argv(data_root, tmp_path / "full", "--model-path", str(weights))
    code, _, err = cli(train.main, argv)
    assert (
        code == 2
        and "trained with width_mult 0.5 but width_mult is 1; set width_mult (--width-mult) to "
        "0.5, or give weights of width 1."
        in err
    )
    assert "Traceback" not in err
