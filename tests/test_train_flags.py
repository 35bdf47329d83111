"""Every train.py setting that changes behaviour, each checked by its effect: the optimizer's
param groups, the loss against a hand computation, the LR at an epoch, the weights kept as
best, the precision and layout a step runs in, and the claims the docs make about them."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from nets.unet import Unet
from tests.conftest import base_argv
from tests.train_driver import poisoned_forward
from utils import device as device_module
from utils.device import prefers_channels_last, resolve_runtime
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.training import trainer as trainer_module
from utils.training.budget import EpochBudget
from utils.training.checkpoint import atomic_save
from utils.training.phases import Phase, check_batches
from utils.training.timing import TimeSplit
from utils.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def build(data_root, tmp_path, *flags) -> Trainer:
    """The Trainer that ``train.py`` builds for these flags, without training."""
    config, _, _ = train.get_config(base_argv(data_root, tmp_path, *flags))
    settings = config.runtime
    runtime = resolve_runtime("cpu", settings.precision, channels_last=settings.channels_last)
    return Trainer(config, runtime)


def test_adam_takes_momentum_as_beta1_and_the_weight_decay(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "--momentum", "0.8", "--weight-decay", "0.01")
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert group["betas"] == (0.8, 0.999) and group["weight_decay"] == 0.01


def test_sgd_is_nesterov_with_the_momentum(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "--optimizer-type", "sgd", "--momentum", "0.7",
                    "--weight-decay", "5e-4")  # fmt: skip
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert (group["nesterov"], group["momentum"], group["weight_decay"]) == (True, 0.7, 5e-4)


@pytest.fixture
def logits_and_labels():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1], [3, 4]]])  # 4 = ignored (num_classes)
    return torch.randn(1, 4, 2, 2), labels


def test_focal_loss_is_the_focal_formula(data_root, tmp_path, logits_and_labels):
    logits, labels = logits_and_labels
    trainer = build(data_root, tmp_path, "--focal-loss", "--no-dice-loss")
    log_p = F.log_softmax(logits, dim=1)
    picked = [log_p[0, c, i, j].item() for (i, j), c in np.ndenumerate(labels[0].numpy()) if c < 4]
    # -(1 - pt)^2 * 0.5 * log(pt), averaged over every pixel, the ignored one counting 0
    expected = sum(-((1 - math.exp(lp)) ** 2) * 0.5 * lp for lp in picked) / 4
    assert trainer.criterion(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    plain = build(data_root, tmp_path, "--no-dice-loss").criterion(logits, labels)
    assert plain.item() == pytest.approx(-sum(picked) / 3, rel=1e-5)  # cross entropy


def test_cls_weights_weight_the_cross_entropy(data_root, tmp_path, logits_and_labels):
    logits, labels = logits_and_labels
    trainer = build(data_root, tmp_path, "--no-dice-loss", "--cls-weights", "1", "2", "3", "4")
    assert trainer.criterion.cls_weights.tolist() == [1, 2, 3, 4]
    log_p = F.log_softmax(logits, dim=1)
    terms = [(c + 1, -log_p[0, c, i, j].item())
             for (i, j), c in np.ndenumerate(labels[0].numpy()) if c < 4]  # fmt: skip
    expected = sum(w * nll for w, nll in terms) / sum(w for w, _ in terms)
    assert trainer.criterion(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_dice_loss_adds_one_minus_the_dice_score(data_root, tmp_path, logits_and_labels):
    logits, labels = logits_and_labels
    with_dice = build(data_root, tmp_path, "--dice-loss").criterion(logits, labels)
    without = build(data_root, tmp_path, "--no-dice-loss").criterion(logits, labels)
    probs = torch.softmax(logits, dim=1)[0]
    one_hot = F.one_hot(labels[0].clamp(max=3), 4).permute(2, 0, 1) * (labels[0] < 4)
    tp = (probs * one_hot).sum((1, 2))
    fp, fn = probs.sum((1, 2)) - tp, one_hot.sum((1, 2)) - tp
    dice = ((2 * tp + 1e-5) / (2 * tp + fn + fp + 1e-5)).mean()
    assert (with_dice - without).item() == pytest.approx(1 - dice.item(), rel=1e-5)


def test_the_step_schedule_sets_each_epochs_lr(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "--lr-decay-type", "step", "--no-freeze-train",
                    "--unfreeze-epoch", "20", "--init-lr", "1e-2", "--min-lr", "1e-4",
                    "--optimizer-type", "sgd")  # fmt: skip
    schedule = trainer.lr_schedule(Phase(False, 2))
    lr = min(max(2 / 16 * 1e-2, 5e-4), 0.1)  # the original's fit for SGD at batch 2
    min_lr = min(max(2 / 16 * 1e-4, 5e-6), 1e-3)
    decay = (min_lr / lr) ** (1 / 9)
    assert [schedule(e) for e in (0, 1, 2, 3, 19)] == pytest.approx(
        [lr, lr, lr * decay, lr * decay, lr * decay**9]
    )  # 20 epochs in 10 steps of 2


def test_init_epoch_starts_there_with_that_epochs_lr(data_root, tmp_path, monkeypatch, cli):
    seen = []
    real = trainer_module.train_one_epoch

    def spy(model, loader, **kwargs):
        seen.append((kwargs["epoch"], kwargs["optimizer"].param_groups[0]["lr"]))
        return real(model, loader, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", spy)
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--init-epoch", "4",
                     "--unfreeze-epoch", "5", "--init-lr", "1e-3", "--no-lr-fit",
                     "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    assert seen == [(4, pytest.approx(1e-5))]  # the cos schedule's last epoch: min_lr
    assert [p.name[:5] for p in tmp_path.glob("ep*.pth")] == ["ep005"]
    assert len(next(tmp_path.glob("loss_*")).joinpath("epoch_loss.txt").read_text().split()) == 1


def last_weights(data_root, save_dir, cli, *flags) -> dict:
    argv = base_argv(data_root, save_dir, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag", *flags)  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    return torch.load(save_dir / "last_epoch_weights.pth", weights_only=True)


@pytest.mark.slow
def test_the_seed_repeats_a_run_and_another_seed_changes_it(data_root, tmp_path, cli):
    runs = [last_weights(data_root, tmp_path / name, cli, "--seed", seed)
            for name, seed in (("a", "3"), ("b", "3"), ("c", "4"))]  # fmt: skip
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["final.weight"], runs[2]["final.weight"])


@pytest.mark.parametrize(("init_type", "std"), [("normal", 0.02), ("kaiming", math.sqrt(2 / 9216))])
def test_init_type_initialises_the_model_from_scratch(data_root, tmp_path, init_type, std):
    trainer = build(data_root, tmp_path, "--init-type", init_type)
    weight = trainer.model.up_concat4.conv1.weight  # (512, 1024, 3, 3): fan_in 9216
    assert weight.std().item() == pytest.approx(std, rel=0.02)


def test_allow_backbone_mismatch_keeps_what_fits(data_root, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.manual_seed(1)
    torch.save(Unet(num_classes=4, backbone="resnet50").state_dict(), path)
    trainer = build(data_root, tmp_path, "--model-path", str(path), "--allow-backbone-mismatch")
    saved = torch.load(path, weights_only=True)
    assert torch.equal(trainer.model.final.weight, saved["final.weight"])  # the head fits
    assert torch.equal(trainer.model.up_concat1.conv1.weight, saved["up_concat1.conv1.weight"])
    assert trainer.model.up_concat4.conv1.weight.shape != saved["up_concat4.conv1.weight"].shape


def test_val_batch_size_sets_the_val_loaders_batch(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "--val-batch-size", "1", "--unfreeze-batch-size", "4",
                    "--no-freeze-train")  # fmt: skip
    loaders = trainer.start_phase(Phase(False, 4))
    assert (loaders.train.batch_size, loaders.val.batch_size, loaders.val_steps) == (4, 1, 4)
    loaders = build(data_root, tmp_path, "--unfreeze-batch-size", "8").start_phase(Phase(False, 8))
    assert loaders.val.batch_size == 4  # the phase's 8, capped at the 4 val images


def test_num_workers_sets_the_loaders_processes(data_root, tmp_path):
    trainer = build(data_root, tmp_path, "--num-workers", "2")
    loaders = trainer.start_phase(Phase(False, 2))
    assert loaders.train.num_workers == 2 and loaders.train.persistent_workers


def autocast_spy(monkeypatch) -> list:
    seen = []
    real = Unet.forward

    def spy(self, x):
        dtype = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        layout = torch.channels_last
        weight = self.up_concat1.conv1.weight  # 3x3: a 1x1 weight fits either layout
        seen.append((dtype, x.is_contiguous(memory_format=layout),
                     weight.is_contiguous(memory_format=layout)))  # fmt: skip
        return real(self, x)

    monkeypatch.setattr(Unet, "forward", spy)
    return seen


@pytest.mark.bf16
def test_bf16_and_channels_last_train_on_the_cpu(data_root, tmp_path, monkeypatch, cli):
    seen = autocast_spy(monkeypatch)
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag", "--precision", "bf16", "--channels-last")  # fmt: skip
    code, _, err = cli(train.main, argv)
    assert code == 0, err
    assert seen and all(s == (torch.bfloat16, True, True) for s in seen[:4])  # the train steps
    state = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_fp32_nchw_is_the_default_step(data_root, tmp_path, monkeypatch, cli):
    seen = autocast_spy(monkeypatch)
    last_weights(data_root, tmp_path, cli)
    assert seen and all(s == (False, False, False) for s in seen)


def test_fp16_is_refused_on_the_cpu_by_both_spellings(data_root, tmp_path, cli):
    for flags in (["--fp16"], ["--precision", "fp16"]):
        code, _, err = cli(train.main, base_argv(data_root, tmp_path, *flags))
        assert code == 2 and "needs a CUDA GPU; on the CPU use --precision bf16" in err


@pytest.mark.slow  # ResNet50 trains; make test-all runs it
def test_resnet50_trains_and_saves_its_backbone(data_root, tmp_path, cli):
    weights = last_weights(data_root, tmp_path, cli, "--backbone", "resnet50")
    Unet(num_classes=4, backbone="resnet50").load_state_dict(weights, strict=True)
    settings = (tmp_path / "last_epoch_weights.json").read_text()
    assert '"backbone": "resnet50"' in settings


def test_no_tf32_reaches_the_run(data_root, tmp_path, monkeypatch, cli):
    seen = []
    real = train.backend_settings

    def spy(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(train, "backend_settings", spy)
    last_weights(data_root, tmp_path, cli, "--no-tf32", "--deterministic")
    assert seen == [{"deterministic": True, "tf32": False}]
    assert "tf32: false" in (tmp_path / "config.yaml").read_text()


def test_pretrained_starts_the_encoder_from_the_imagenet_file(data_root, tmp_path, monkeypatch):
    from nets.vgg import VGG16_CONFIG, make_layers

    torch.manual_seed(5)
    features = {f"features.{k}": v for k, v in make_layers(VGG16_CONFIG).state_dict().items()}
    (tmp_path / "model_data").mkdir()
    torch.save(features, tmp_path / "model_data/vgg16-397923af.pth")
    monkeypatch.chdir(tmp_path)  # model_data/ is relative to the working directory
    trainer = build(data_root, tmp_path, "--pretrained", "--init-type", "normal")
    encoder = trainer.model.vgg.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in features.items())
    # no weights_init with --pretrained: the decoder keeps torch's default init (uniform, bound
    # 1/sqrt(fan_in)), not the N(0, 0.02) that --init-type normal would draw
    std = trainer.model.up_concat4.conv1.weight.std().item()
    assert std == pytest.approx(1 / math.sqrt(3 * 9216), rel=0.05)


# which weights end up in best_epoch_weights.pth


def scripted(monkeypatch, name: str, values: list[float]):
    """Patch ``utils.training.trainer.<name>`` to run as usual but report ``values`` in turn."""
    real = getattr(trainer_module, name)
    values = iter(values)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if isinstance(result, tuple):
            return (next(values), *result[1:])
        return result

    monkeypatch.setattr(trainer_module, name, wrapper)


def best_epoch_weights_equal(save_dir: Path, epoch: int) -> bool:
    best = torch.load(save_dir / "best_epoch_weights.pth", weights_only=True)
    ep = torch.load(next(save_dir.glob(f"ep{epoch:03d}-*.pth")), weights_only=True)
    return all(torch.equal(best[k], ep[k]) for k in best)


def three_epochs(data_root, tmp_path, cli, *flags) -> None:
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "3",
                     "--save-period", "1", *flags)  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    return out


@pytest.mark.slow  # three epochs; make test-all runs it
def test_best_weights_follow_the_lowest_val_loss(data_root, tmp_path, monkeypatch, cli):
    scripted(monkeypatch, "evaluate_loss", [0.5, 0.3, 0.4])
    three_epochs(data_root, tmp_path, cli, "--no-eval-flag")
    assert best_epoch_weights_equal(tmp_path, 2)
    assert not best_epoch_weights_equal(tmp_path, 3)


@pytest.mark.slow
def test_without_a_val_split_best_weights_follow_the_train_loss(tmp_path, monkeypatch, cli):
    from utils.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path / "VOCdevkit", 8, size=(48, 40))
    (root / "VOC2007/ImageSets/Segmentation/val.txt").write_text("")
    scripted(monkeypatch, "train_one_epoch", [0.9, 0.6, 0.7])
    out = three_epochs(root, tmp_path / "logs", cli)
    assert best_epoch_weights_equal(tmp_path / "logs", 2)
    assert out.count("Save best model to best_epoch_weights.pth (by train loss)") == 2


@pytest.mark.slow
def test_best_weights_by_miou_follow_the_highest_miou(data_root, tmp_path, monkeypatch, cli):
    real = Trainer.evaluate
    scores = iter([40.0, 55.0, 50.0])

    def scripted_miou(self):
        return {**real(self), "miou": next(scores)}

    monkeypatch.setattr(Trainer, "evaluate", scripted_miou)
    three_epochs(data_root, tmp_path, cli, "--save-best-by", "miou", "--eval-period", "1")
    assert best_epoch_weights_equal(tmp_path, 2)
    lines = next(tmp_path.glob("loss_*")).joinpath("epoch_miou.txt").read_text().splitlines()
    assert lines[-1] == "# best_epoch_weights.pth: epoch 2, mIoU 55.0"


# a NaN or an Inf at a chosen epoch and step


@pytest.mark.parametrize(
    ("value", "call", "where"),
    [
        pytest.param("nan", 7, "epoch 2, step 3", marks=pytest.mark.slow),
        ("inf", 2, "epoch 1, step 2"),
    ],  # 4 steps an epoch
)
def test_a_non_finite_loss_stops_at_its_epoch_and_step(data_root, tmp_path, monkeypatch, cli,
                                                       value, call, where):  # fmt: skip
    from nets.unet_training import SegmentationLoss

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned_forward(call, value))
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "3",
                     "--no-eval-flag")  # fmt: skip
    code, _, err = cli(train.main, argv)
    assert code == 2 and f"the loss became {value} at {where};" in err and "Lower --init-lr" in err
    checkpoint = tmp_path / "checkpoint_last.pth"  # the last good epoch's, when there was one
    if where.startswith("epoch 1,"):
        assert not checkpoint.exists()
    else:
        assert torch.load(checkpoint, weights_only=True)["epoch"] == 1


# the claims the docs make


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_emulated(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16 .* emulated and much slower"):
        resolve_runtime("cpu", "bf16")


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_channels_last_is_the_default_only_where_it_is_faster(monkeypatch, capability):
    """Prediction: channels-last on every CPU kind and on CUDA. Training: on CUDA, and on a CPU
    in bf16 only (NCHW trains faster on a CPU in fp32), so the in-training evaluation on CUDA
    needs no copy."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert prefers_channels_last(torch.device("cpu")) is True
    assert prefers_channels_last(torch.device("cpu"), training=True) is False
    assert prefers_channels_last(torch.device("cpu"), training=True, precision="bf16") is True
    assert prefers_channels_last(torch.device("cuda")) is True
    assert prefers_channels_last(torch.device("cuda"), training=True) is True
    assert resolve_runtime("cpu", channels_last=None, training=True).channels_last is False


def test_a_batch_that_does_not_split_over_the_processes_is_refused(data_root, tmp_path):
    config, _, _ = train.get_config(base_argv(data_root, tmp_path, "--unfreeze-batch-size", "3",
                                              "--no-freeze-train"))  # fmt: skip
    trainer = build(data_root, tmp_path, "--unfreeze-batch-size", "3", "--no-freeze-train")
    with pytest.raises(UserError, match="batch size 3 cannot be split evenly over 2 processes"):
        check_batches(config, trainer.train_set, trainer.val_set, 0, DistInfo(0, 2, 0, True))


def test_the_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    atomic_save({"epoch": 1}, path)
    real_save = torch.save

    def crash_halfway(obj, target):
        Path(target).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the last whole checkpoint


@pytest.mark.slow
def test_two_process_torchrun_resumes_and_reports_the_miou_of_the_whole_val_split(
    data_root, tmp_path
):
    """Two gloo processes train a frozen then an unfrozen epoch (the phase changes within one
    run), then a third, resumed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHECKSUM_DIR": str(tmp_path / "sums")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "tests/train_driver.py"]  # fmt: skip
    first = base_argv(data_root, tmp_path, "--freeze-epoch", "1", "--unfreeze-epoch", "2",
                      "--eval-period", "1", "--init-lr", "1e-3", "--no-lr-fit")  # fmt: skip
    resume = ["--resume", str(tmp_path / "checkpoint_last.pth"), "--unfreeze-epoch", "3"]
    for argv in (first, resume):
        result = subprocess.run([*torchrun, *argv], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        sums = [(tmp_path / "sums" / f"rank{rank}.txt").read_text() for rank in (0, 1)]
        assert sums[0] == sums[1]  # DDP kept both ranks' weights the same, bit for bit
    assert result.stdout.count("Epoch:3/3") == 1  # only rank 0 reports
    assert torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)["epoch"] == 3
    logged = next(tmp_path.glob("loss_*")).joinpath("epoch_miou.txt").read_text().split()
    # get_miou.py on rank 0's last weights, in one process of one thread, as each rank ran:
    # had the ranks' weights drifted apart (a phase whose gradients were not synchronised),
    # or the mIoU not been summed over both ranks' halves of the val split, they would differ
    command = [sys.executable, "get_miou.py", "--dataset-path", str(data_root), "--device", "cpu",
               "--model-path", str(tmp_path / "last_epoch_weights.pth"),
               "--miou-out-path", str(tmp_path / "miou")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reported = float(re.search(r"===> mIoU: ([\d.]+)", result.stdout).group(1))
    assert len(logged) == 3 and reported == pytest.approx(float(logged[-1]), abs=0.006)


def test_the_time_budget_counts_epochs_and_evaluations_against_the_time_left():
    budget = EpochBudget(seconds=60, eval_period=3, evaluates=True)
    budget.record(14.0)  # the first epoch: start-up and warm-up, left out once a second ran
    # 40 s left: epoch 2 takes 14; epoch 3 evaluates, and an evaluation not yet measured is
    # taken to cost an epoch: 28 s more do not fit. Epoch 2, the last, evaluates: 48 s fit
    assert budget.total(done=1, elapsed=20, cap=100) == 2
    budget.record(10.0)  # epochs of 10 s from now on
    # epoch 3 and its evaluation end at 50 s; epoch 4 at 60, but as the last it evaluates too
    assert budget.total(done=2, elapsed=30, cap=100) == 3
    budget.record(10.0)
    budget.record_evaluation(4.0)  # measured: 4 s
    # at 40 s, epoch 3's evaluation is still due (44); epoch 4 and its evaluation end at 58
    assert budget.total(done=3, elapsed=40, cap=100) == 4
    assert budget.total(done=3, elapsed=40, cap=3) == 3  # never past --unfreeze-epoch
    assert budget.total(done=3, elapsed=70, cap=100) == 3  # over time: stop now
    assert EpochBudget(0, 1, True).total(done=1, elapsed=1e9, cap=7) == 7  # no budget
    budget.new_phase()  # the unfrozen phase: its own epochs' times
    budget.record(30.0)
    assert budget.epoch_seconds == [30.0] and budget.total(done=4, elapsed=50, cap=100) == 4


def test_time_budget_ends_the_run_at_the_epochs_that_fit_with_the_lr_decayed(
    data_root, tmp_path, monkeypatch, cli
):
    seen = []
    real = trainer_module.train_one_epoch

    def spy(model, loader, **kwargs):
        seen.append((kwargs["epoch"], kwargs["total_epochs"]))
        seen[-1] += (kwargs["optimizer"].param_groups[0]["lr"],)
        return real(model, loader, **kwargs)

    # a clock where the run starts at 25 s, the first epoch takes 10 s, the second 20 and every
    # later one 5: the count falls to 4 after the second, then grows back: 60 s at the end of
    # the third leave 8 epochs of 5 s, 11 in all
    durations = [10.0, 20.0] + [5.0] * 48
    monkeypatch.setattr(trainer_module, "train_one_epoch", spy)
    monkeypatch.setattr(
        EpochBudget, "record", lambda self, *_: self.epoch_seconds.append(durations[len(seen) - 1])
    )
    monkeypatch.setattr(TimeSplit, "elapsed", lambda self: 25.0 + sum(durations[: len(seen)]))
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "50",
                     "--init-lr", "1e-3", "--no-lr-fit", "--no-eval-flag", "--save-period", "0",
                     "--time-budget", "100")  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0 and "Epoch:2/4" in out and "Epoch:11/11" in out
    totals = [total for _, total, _ in seen]
    assert totals == [50, 7, 4, 6, 11, 11, 11, 11, 11, 11, 11]
    assert seen[-1][2] == pytest.approx(1e-5)  # the cos schedule over 11 epochs ends at min_lr


def test_a_budgets_last_epoch_is_evaluated(data_root, tmp_path, monkeypatch, cli):
    # epochs of 10 s from 25 s on, a 60 s budget: epoch 3 would end at 55 s, its evaluation
    # (not measured, so taken as an epoch) at 65; the run stops at 2, which evaluates
    epochs = []
    monkeypatch.setattr(EpochBudget, "record", lambda self, _: (self.epoch_seconds.append(10.0),
                                                                epochs.append(1)))  # fmt: skip
    monkeypatch.setattr(TimeSplit, "elapsed", lambda self: 25.0 + 10 * len(epochs))
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "5",
                     "--eval-period", "5", "--save-period", "0", "--time-budget", "60")  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0 and "Epoch:2/2" in out and "Epoch 2 mIoU" in out and "Epoch 1 mIoU" not in out
