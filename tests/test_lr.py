"""Weight init and the LR schedules, against values worked out from REFERENCE.md's formulas."""

import math

import pytest
import torch

from nets.unet import Unet
from nets.unet_training import get_lr_scheduler, set_optimizer_lr, weights_init
from utils.errors import UserError


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 1e-5),  # warm-up starts at 0.1 * lr
        (1, 2e-5),  # (1e-4 - 1e-5) * (1/3)^2 + 1e-5
        (3, 1e-4),  # end of the 3-epoch warm-up
        (49, 1e-6 + 0.5 * 99e-6),  # half way through the cosine (46 / 92)
        (94, 1e-6 + 0.5 * 99e-6 * (1 + math.cos(math.pi * 91 / 92))),
        (95, 1e-6),  # the last 5 epochs sit at min_lr
        (99, 1e-6),
    ],
)
def test_cos_schedule_golden_values(epoch, expected):
    schedule = get_lr_scheduler("cos", 1e-4, 1e-6, 100)
    assert schedule(epoch) == pytest.approx(expected, rel=1e-12)


def test_cos_schedule_short_run_warms_up_one_epoch():
    schedule = get_lr_scheduler("cos", 1e-2, 1e-4, 10)  # warm-up 1, no-aug 1
    assert schedule(0) == pytest.approx(1e-3)
    assert schedule(1) == pytest.approx(1e-2)
    assert schedule(9) == pytest.approx(1e-4)
    assert schedule(5) == pytest.approx(
        1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + math.cos(math.pi * 4 / 8))
    )


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1e-4), (9, 1e-4), (10, 1e-4 * 0.01 ** (1 / 9)), (25, 1e-4 * 0.01 ** (2 / 9)), (99, 1e-6)],
)
def test_step_schedule_golden_values(epoch, expected):
    schedule = get_lr_scheduler("step", 1e-4, 1e-6, 100)
    assert schedule(epoch) == pytest.approx(expected, rel=1e-9)


def test_step_schedule_too_short_is_a_clear_error():
    with pytest.raises(UserError, match="at least 10 epochs"):
        get_lr_scheduler("step", 1e-4, 1e-6, 5)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(UserError, match="use one of cos, step"):
        get_lr_scheduler("linear", 1e-4, 1e-6, 5)


def test_set_optimizer_lr_sets_every_group():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    lr = set_optimizer_lr(optimizer, get_lr_scheduler("cos", 1e-4, 1e-6, 100), 3)
    assert lr == pytest.approx(1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [lr, lr]


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_weights_init_reinitialises_conv_weights_not_biases(init_type):
    torch.manual_seed(0)
    model = Unet(num_classes=2, backbone="vgg")
    bias_before = model.final.bias.clone()
    weight_before = model.up_concat1.conv1.weight.clone()
    weights_init(model, init_type=init_type)
    assert not torch.equal(model.up_concat1.conv1.weight, weight_before)
    assert torch.equal(model.final.bias, bias_before)
    if init_type == "normal":
        assert model.up_concat4.conv1.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_weights_init_batchnorm_is_near_one_and_zero():
    model = Unet(num_classes=2, backbone="resnet50")
    weights_init(model, "kaiming")
    assert model.resnet.bn1.weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(model.resnet.bn1.bias, torch.zeros(64))


def test_unknown_init_type_is_a_clear_error():
    with pytest.raises(UserError, match="use one of normal, xavier, kaiming, orthogonal"):
        weights_init(torch.nn.Conv2d(1, 1, 1), "uniform")
