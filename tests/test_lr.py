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


def conv_init_statistics(init_type: str) -> dict[str, float]:
    """Mean, standard deviation and orthogonality error of a big conv's weights after
    ``weights_init``: (out, in, k, k) = (128, 64, 3, 3), fan_in 576, fan_out 1152."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 128, 3)
    conv.bias.data.fill_(0.5)
    weights_init(torch.nn.Sequential(conv), init_type=init_type)
    flat = conv.weight.detach().reshape(128, -1).double()
    gram = flat @ flat.T  # orthogonal rows of norm gain: gain^2 * I
    return {
        "mean": flat.mean().item(),
        "std": flat.std().item(),
        "ortho": (gram - 0.02**2 * torch.eye(128, dtype=torch.double)).abs().max().item(),
        "bias": conv.bias.detach().unique().tolist(),
    }


@pytest.mark.parametrize(
    ("init_type", "std"),
    [
        ("normal", 0.02),  # N(0, gain)
        ("xavier", 0.02 * math.sqrt(2 / (576 + 1152))),  # xavier_normal with gain
        ("kaiming", math.sqrt(2 / 576)),  # kaiming_normal, fan_in, a=0
        ("orthogonal", 0.02 / math.sqrt(576)),  # rows of norm gain over 576 entries
    ],
)
def test_each_init_type_draws_its_own_statistics(init_type, std):
    stats = conv_init_statistics(init_type)
    assert stats["std"] == pytest.approx(std, rel=0.05)
    assert abs(stats["mean"]) < 0.05 * std
    assert stats["bias"] == [0.5]  # biases untouched, as the original's init
    # only the orthogonal init gives orthogonal rows (the others' rows overlap by chance)
    assert (stats["ortho"] < 1e-9) == (init_type == "orthogonal"), stats["ortho"]


def test_weights_init_draws_batchnorm_weights_near_one_and_zeroes_the_bias():
    torch.manual_seed(0)
    model = Unet(num_classes=2, backbone="resnet50")
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.bias.data.fill_(0.3)  # torch starts at weight 1, bias 0: move them off first
    weights_init(model, "kaiming")
    weights = torch.cat([bn.weight.detach() for bn in batchnorms])
    assert weights.mean().item() == pytest.approx(1.0, abs=0.002)
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)  # N(1, 0.02), not all 1
    assert all(torch.equal(bn.bias, torch.zeros_like(bn.bias)) for bn in batchnorms)


def test_unknown_init_type_is_a_clear_error():
    with pytest.raises(UserError, match="use one of normal, xavier, kaiming, orthogonal"):
        weights_init(torch.nn.Conv2d(1, 1, 1), "uniform")
