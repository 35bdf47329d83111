"""Losses and the training f-score: hand-worked golden values and the reference's numbers."""

import math

import pytest
import torch

from nets.functional import class_sums
from nets.unet_training import CE_Loss, Dice_loss, Focal_Loss, one_hot_target
from oracle.original import ref_ce_loss, ref_dice_loss, ref_focal_loss
from utils.utils_metrics import f_score

LN3 = math.log(3)


@pytest.fixture
def three_pixels():
    """2 classes; pixels A (p=.25/.75, label 1), B (p=.75/.25, label 0), C (p=.5/.5, ignored)."""
    logits = torch.tensor([[[[0.0, LN3, 0.0]], [[LN3, 0.0, 0.0]]]])
    labels = torch.tensor([[[1, 0, 2]]])
    return logits, labels


def test_ce_golden_value_ignores_label_num_classes(three_pixels):
    logits, labels = three_pixels
    loss = CE_Loss(logits, labels, torch.ones(2), num_classes=2)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_ce_class_weights_weight_the_mean(three_pixels):
    logits, labels = three_pixels
    labels = torch.tensor([[[1, 1, 2]]])  # A: -ln .75, B: -ln .25
    loss = CE_Loss(logits, labels, torch.tensor([5.0, 2.0]), num_classes=2)
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    labels = torch.tensor([[[1, 0, 2]]])  # weights 2 (A) and 5 (B), both -ln .75
    loss = CE_Loss(logits, labels, [5.0, 2.0], num_classes=2)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_focal_golden_value_averages_over_all_pixels(three_pixels):
    logits, labels = three_pixels
    loss = Focal_Loss(logits, labels, torch.ones(2), num_classes=2, alpha=0.5, gamma=2)
    per_pixel = -(0.25**2) * 0.5 * math.log(0.75)
    assert loss.item() == pytest.approx(2 * per_pixel / 3, rel=1e-6)


def test_focal_with_gamma_0_alpha_1_equals_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    weights = torch.ones(4)
    focal = Focal_Loss(logits, labels, weights, num_classes=4, alpha=1, gamma=0)
    torch.testing.assert_close(focal, CE_Loss(logits, labels, weights, num_classes=4))


def test_dice_golden_value_counts_ignored_mass_as_false_positive(three_pixels):
    logits, labels = three_pixels
    target = one_hot_target(labels, num_classes=2)
    # per class: tp .75, fp .25 + .5 from the ignored pixel, fn .25 -> 1.5 / 2.5
    assert Dice_loss(logits, target).item() == pytest.approx(1 - 0.6, rel=1e-5)


def test_f_score_golden_value_thresholds_the_softmax(three_pixels):
    logits, labels = three_pixels
    target = one_hot_target(labels, num_classes=2)
    # A and B are right after thresholding, C (0.5) is no prediction at all -> perfect score
    assert f_score(logits, target).item() == pytest.approx(1.0, rel=1e-6)


def test_one_hot_target_keeps_ignore_channel_last():
    target = one_hot_target(torch.tensor([[[0, 2, 1]]]), num_classes=2)
    assert target.shape == (1, 1, 3, 3)
    assert target[0, 0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]


@pytest.fixture
def random_batch():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 16, 24)
    labels = torch.randint(0, 6, (2, 16, 24))  # 5 = ignore
    return logits, labels, torch.rand(5) + 0.5


def test_losses_match_the_reference_code(random_batch):
    logits, labels, weights = random_batch
    torch.testing.assert_close(
        CE_Loss(logits, labels, weights, 5), ref_ce_loss(logits, labels, weights, 5)
    )
    torch.testing.assert_close(
        Focal_Loss(logits, labels, weights, 5), ref_focal_loss(logits, labels, weights, 5)
    )
    target = one_hot_target(labels, 5)
    torch.testing.assert_close(Dice_loss(logits, target), ref_dice_loss(logits, target))
    torch.testing.assert_close(
        f_score(logits, target), ref_dice_loss(logits, target, hard_threshold=0.5)
    )


@pytest.mark.parametrize("logit_size", [(8, 12), (16, 12), (8, 24)])
def test_logits_are_resized_when_either_side_differs(random_batch, logit_size):
    _, labels, weights = random_batch
    logits = torch.randn(2, 5, *logit_size)
    resized = torch.nn.functional.interpolate(
        logits, size=(16, 24), mode="bilinear", align_corners=True
    )
    target = one_hot_target(labels, 5)
    torch.testing.assert_close(
        CE_Loss(logits, labels, weights, 5), CE_Loss(resized, labels, weights, 5)
    )
    torch.testing.assert_close(
        Focal_Loss(logits, labels, weights, 5), Focal_Loss(resized, labels, weights, 5)
    )
    torch.testing.assert_close(Dice_loss(logits, target), Dice_loss(resized, target))
    torch.testing.assert_close(f_score(logits, target), f_score(resized, target))


def test_losses_backpropagate_under_bf16_autocast(random_batch):
    logits, labels, weights = random_batch
    logits = logits.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = logits * 1.0
        loss = CE_Loss(x, labels, weights, 5) + Dice_loss(x, one_hot_target(labels, 5))
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_and_f_score_from_class_indices_equal_the_one_hot_versions(random_batch):
    logits, labels, _ = random_batch
    target = one_hot_target(labels, 5)
    torch.testing.assert_close(Dice_loss(logits, labels), Dice_loss(logits, target))
    torch.testing.assert_close(f_score(logits, labels), f_score(logits, target))


def test_dice_from_class_indices_has_the_one_hot_gradient(random_batch):
    logits, labels, _ = random_batch
    grads = []
    for target in (labels, one_hot_target(labels, 5)):
        x = logits.clone().requires_grad_(True)
        Dice_loss(x, target).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_deterministic_cross_entropy_equals_f_cross_entropy(reduction, weighted):
    """Under --deterministic on CUDA the loss is log-softmax + gather + weighted mean, because
    CUDA's NLL kernel is refused there; values and gradients are those of F.cross_entropy."""
    from nets.unet_training import gathered_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (2, 5, 6))  # 4 is the ignore index
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64) if weighted else None
    ours = gathered_cross_entropy(logits, target, weight, 4, reduction)
    theirs = torch.nn.functional.cross_entropy(
        logits, target, weight=weight, ignore_index=4, reduction=reduction
    )
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_theirs)


@pytest.mark.parametrize("bins", [3, 22])
def test_class_sums_compare_and_scatter_give_the_same_counts(bins):
    """CUDA compares and sums per class, the CPU scatters; on mostly-background labels (the case
    a GPU's atomics serialise on) both count the same integers, and their float sums differ
    only by rounding: 20,000 values of at most 1 summed in another order, well within 1e-5."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, bins, (20_000,), generator=generator)
    labels = torch.where(torch.rand(20_000, generator=generator) < 0.9, 0, labels)
    values = torch.rand(20_000, generator=generator)
    counts = [class_sums(labels, bins, compare=way) for way in (True, False)]
    assert counts[0].dtype == counts[1].dtype == torch.int64
    assert torch.equal(counts[0], counts[1]) and counts[0][0] > 0.9 * 20_000
    sums = [class_sums(labels, bins, values, compare=way) for way in (True, False)]
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-5, atol=0)


def test_the_training_loss_is_a_sum_of_named_terms_and_the_switches_pick_the_originals(
    random_batch,
):
    from nets.losses import LOSSES, SegmentationLoss

    logits, labels, weights = random_batch
    num_classes = logits.shape[1]
    ce = CE_Loss(logits, labels, weights, num_classes=num_classes)
    focal = Focal_Loss(logits, labels, weights, num_classes=num_classes)
    dice = Dice_loss(logits, labels)
    for switches, expected in (({}, ce), ({"dice": True}, ce + dice),
                               ({"focal": True, "dice": True}, focal + dice)):  # fmt: skip
        loss = SegmentationLoss(num_classes, weights.tolist(), **switches)(logits, labels)
        assert torch.equal(loss, expected), switches  # the same sum, in the same order
    by_name = SegmentationLoss(num_classes, weights.tolist(), terms=["dice", "focal"])
    torch.testing.assert_close(by_name(logits, labels), dice + focal)
    assert list(LOSSES)[:3] == ["ce", "focal", "dice"]
    with pytest.raises(ValueError, match=r"unknown loss term 'dcie'; use one or more of ce, "):
        SegmentationLoss(num_classes, terms=["ce", "dcie"])


def test_a_loss_term_registered_by_a_test_trains_by_its_name(data_root, tmp_path, monkeypatch,
                                                             cli):  # fmt: skip
    import train
    from nets.losses import LOSSES, LossTerm
    from tests.conftest import base_argv

    calls = []

    def half_ce(outputs, labels, cls_weights, num_classes):
        calls.append(outputs.shape)
        return 0.5 * CE_Loss(outputs, labels, cls_weights, num_classes=num_classes)

    monkeypatch.setitem(LOSSES, "half_ce", LossTerm("half_ce", "a test's", half_ce))
    argv = base_argv(data_root, tmp_path / "logs", "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag", "--loss", "half_ce", "dice")  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert calls and "loss: [half_ce, dice]" in (tmp_path / "logs" / "config.yaml").read_text()
