"""train.py: phases, LR, output files, resume, NaN stop, bad flags, torchrun."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import train_medical
from nets.unet import Unet
from nets.unet_training import get_lr_scheduler, weights_init
from oracle.original import RefVggUnet
from tests.conftest import base_argv
from utils.data.demo_data import make_demo_dataset
from utils.device import resolve_runtime
from utils.training import trainer
from utils.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_freeze_then_unfreeze_switches_batch_lr_and_trainable_backbone(
    data_root, tmp_path, monkeypatch, cli
):
    seen = []
    real = trainer.train_one_epoch

    def spy(model, loader, **kwargs):
        vgg_trainable = any(p.requires_grad for p in model.vgg.parameters())
        lr = kwargs["optimizer"].param_groups[0]["lr"]
        seen.append((loader.batch_size, kwargs["steps"], lr, vgg_trainable))
        return real(model, loader, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    argv = base_argv(
        data_root, tmp_path, "--freeze-epoch", "1", "--unfreeze-epoch", "3",
        "--unfreeze-batch-size", "4", "--optimizer-type", "sgd", "--init-lr", "1e-2",
        "--min-lr", "1e-4", "--no-eval-flag",
    )  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    frozen_lr = get_lr_scheduler("cos", 2 / 16 * 1e-2, 2 / 16 * 1e-4, 3)
    unfrozen_lr = get_lr_scheduler("cos", 4 / 16 * 1e-2, 4 / 16 * 1e-4, 3)
    assert [s[:2] for s in seen] == [(2, 4), (4, 2), (4, 2)]
    assert [s[3] for s in seen] == [False, True, True]
    expected = [frozen_lr(0), unfrozen_lr(1), unfrozen_lr(2)]
    assert [s[2] for s in seen] == pytest.approx(expected)
    assert expected == pytest.approx([1.25e-4, 2.5e-3, 2.5e-5])


def test_adam_lr_clamp_is_announced(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0
    assert "Unfreeze phase: batch 2, LR 0.0001 -> 1e-06" in out
    assert "2 / 16" not in out and "was clamped to 0.0001" in out


def test_recipe_flags_split_files_flips_and_unfitted_lr(data_root, tmp_path, monkeypatch, cli):
    seen = []
    real = trainer.train_one_epoch

    def spy(model, loader, **kwargs):
        seen.append((kwargs["steps"], kwargs["optimizer"].param_groups[0]["lr"],
                     loader.dataset.augment))  # fmt: skip
        return real(model, loader, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    (tmp_path / "a.txt").write_text("0000\n0001\n0002\n0003\n")
    (tmp_path / "b.txt").write_text("0004\n0005\n")
    argv = base_argv(
        data_root, tmp_path / "logs", "--no-freeze-train", "--unfreeze-epoch", "2",
        "--init-lr", "1e-3", "--no-lr-fit", "--augment", "flip", "--eval-period", "1",
        "--train-split", str(tmp_path / "a.txt"), "--val-split", str(tmp_path / "b.txt"),
    )  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0
    assert "4 train / 2 val images" in out and "LR 0.001 -> 1e-05" in out
    assert "clamped" not in out
    schedule = get_lr_scheduler("cos", 1e-3, 1e-5, 2)
    assert seen == [
        (2, pytest.approx(schedule(0)), "flip"),
        (2, pytest.approx(schedule(1)), "flip"),
    ]


def test_writes_the_reference_output_files(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--freeze-epoch", "1", "--unfreeze-epoch", "2",
                     "--save-period", "1", "--eval-period", "1")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    settings = sorted(p for p in tmp_path.iterdir() if p.suffix == ".json")
    assert (tmp_path / "config.yaml").is_file()
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix not in (".json", ".yaml"))
    assert len(names) == 6, names
    # every weights file but the checkpoint has its settings beside it
    assert [p.stem for p in settings] == [Path(n).stem for n in names if n.endswith("weights.pth")
                                          or n.startswith("ep")]  # fmt: skip
    saved = json.loads(settings[0].read_text())
    assert re.fullmatch(r"crc32:[0-9a-f]{8}", saved.pop("checksum"))
    assert saved == {
        "num_classes": 4, "backbone": "vgg", "input_shape": [32, 32], "dataset_format": "voc",
        "name_classes": None, "tile": None, "stride": None, "width_mult": 1.0,
    }  # fmt: skip
    assert re.fullmatch(r"ep001-loss\d+\.\d{3}-val_loss\d+\.\d{3}\.pth", names[2])
    assert re.fullmatch(r"ep002-loss\d+\.\d{3}-val_loss\d+\.\d{3}\.pth", names[3])
    assert names[:2] == ["best_epoch_weights.pth", "checkpoint_last.pth"]
    assert names[4] == "last_epoch_weights.pth" and names[5].startswith("loss_20")
    log_dir = tmp_path / names[5]
    files = sorted(p.name for p in log_dir.iterdir())
    assert files[:5] == [
        "epoch_loss.png", "epoch_loss.txt", "epoch_miou.png", "epoch_miou.txt",
        "epoch_val_loss.txt",
    ]  # fmt: skip
    assert files[5].startswith("events.out.tfevents") and len(files) == 6
    assert len((log_dir / "epoch_loss.txt").read_text().split()) == 2
    assert len((log_dir / "epoch_miou.txt").read_text().split()) == 2
    weights = torch.load(tmp_path / "last_epoch_weights.pth", weights_only=True)
    Unet(num_classes=4).load_state_dict(weights, strict=True)


@pytest.mark.slow
def test_each_epochs_weights_are_written_once_and_the_other_names_link_to_them(
    data_root, tmp_path, monkeypatch, cli
):
    written = []
    real_save = torch.save

    def counting_save(obj, path, *args, **kwargs):
        written.append(Path(path).name)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", counting_save)
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "2",
                     "--save-period", "1", "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    # per epoch: the weights once, then the checkpoint (each to a temporary name, then renamed)
    assert written == ["last_epoch_weights.pth.tmp", "checkpoint_last.pth.tmp"] * 2
    files = {p.name[:5]: p for p in tmp_path.glob("*.pth")}
    inode = {name: path.stat().st_ino for name, path in files.items()}
    assert inode["ep002"] == inode["last_"] != inode["ep001"]
    assert inode["best_"] in (inode["ep001"], inode["ep002"])
    checkpoint = torch.load(files["check"], weights_only=True)
    assert checkpoint["epoch"] == 2
    for name in ("ep001", "ep002", "best_", "last_"):
        state = torch.load(files[name], weights_only=True)
        RefVggUnet(num_classes=4).load_state_dict(state, strict=True)  # the original's model
        if name in ("ep002", "last_"):
            assert all(torch.equal(state[k], checkpoint["model"][k]) for k in state)


@pytest.mark.slow
def test_a_resumed_run_lets_go_of_the_checkpoint_once_loaded(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    config, _, checkpoint = train.get_config(
        ["--resume", str(tmp_path / "checkpoint_last.pth"), "--unfreeze-epoch", "2"]
    )
    assert "model" in checkpoint and "optimizer" in checkpoint
    model_trainer = Trainer(config, resolve_runtime("cpu", training=True))
    model_trainer.resume(checkpoint, str(tmp_path / "checkpoint_last.pth"))
    assert checkpoint == {} and model_trainer.start_epoch == 1  # the tensors are not kept


class SimulatedCrashError(Exception):
    pass


@pytest.mark.parametrize(
    "run_flags",
    [
        pytest.param(["--device", "cpu"], marks=pytest.mark.slow),
        pytest.param(["--device", "cpu", "--deterministic"], marks=pytest.mark.slow),
        pytest.param(["--device", "cuda", "--deterministic"], marks=pytest.mark.cuda),
    ],
    ids=["cpu", "cpu-deterministic", "cuda-deterministic"],
)
def test_resume_matches_uninterrupted(data_root, tmp_path, monkeypatch, cli, run_flags):
    extra = ("--freeze-epoch", "1", "--unfreeze-epoch", "3", "--eval-period", "2",
             "--save-period", "10", *run_flags)  # fmt: skip
    assert cli(train.main, base_argv(data_root, tmp_path / "full", *extra))[0] == 0

    real_end = Trainer.end_of_epoch

    def crash_after_second_epoch(self, epoch, log, **kwargs):
        real_end(self, epoch, log, **kwargs)
        if epoch == 1:
            raise SimulatedCrashError

    monkeypatch.setattr(Trainer, "end_of_epoch", crash_after_second_epoch)
    with pytest.raises(SimulatedCrashError):
        train.main(base_argv(data_root, tmp_path / "cut", *extra))
    monkeypatch.setattr(Trainer, "end_of_epoch", real_end)
    assert cli(train.main, ["--resume", str(tmp_path / "cut" / "checkpoint_last.pth")])[0] == 0

    for name in ("last_epoch_weights.pth", "best_epoch_weights.pth"):
        full = torch.load(tmp_path / "full" / name, weights_only=True)
        cut = torch.load(tmp_path / "cut" / name, weights_only=True)
        assert all(torch.equal(full[k], cut[k]) for k in full), name
    logs = [next((tmp_path / run).glob("loss_*")) for run in ("full", "cut")]
    for name in ("epoch_loss.txt", "epoch_val_loss.txt", "epoch_miou.txt"):
        assert (logs[0] / name).read_text() == (logs[1] / name).read_text()
    saved = torch.load(tmp_path / "cut" / "checkpoint_last.pth", weights_only=True)["config"]
    assert saved["deterministic"] == ("--deterministic" in run_flags)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


@pytest.mark.slow  # as the copied-run resume, which extends training too
def test_resume_can_extend_training(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    checkpoint = str(tmp_path / "checkpoint_last.pth")
    assert cli(train.main, ["--resume", checkpoint, "--unfreeze-epoch", "2"])[0] == 0
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]["loss"]) == 2


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg2.pth"
    torch.save(Unet(num_classes=2).state_dict(), path)
    return path


def test_head_mismatch_is_reported_calmly(data_root, tmp_path, weights_file, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    argv[argv.index("--model-path") + 1] = str(weights_file)
    code, out, _ = cli(train.main, argv)
    assert code == 0
    assert "Loaded 42 of 44 model tensors:" in out
    assert "backbone 26/26" in out and "decoder  16/16" in out and "head     0/2" in out
    assert "final.weight (2, 64, 1, 1) in the file, (4, 64, 1, 1) in the model" in out
    assert "that is expected" in out


def test_medical_layout_trains_without_a_val_split(tmp_path):
    root = tmp_path / "cells"
    for folder in ("Images", "Labels", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
            root / f"Images/{i}.png"
        )
        label = np.where(rng.random((32, 32)) > 0.5, 255, 0).astype(np.uint8)
        Image.fromarray(label).save(root / f"Labels/{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("0\n1\n2\n3\n")
    # train_medical.py: train.py with the medical layout and 2 classes as defaults
    argv = base_argv(root, tmp_path / "logs", "--no-freeze-train", "--unfreeze-epoch", "1")
    at = argv.index("--num-classes")
    del argv[at : at + 2]
    train_medical.main(argv)
    checkpoint = torch.load(tmp_path / "logs/checkpoint_last.pth", weights_only=False)
    assert checkpoint["config"]["dataset_format"] == "medical"
    assert checkpoint["config"]["num_classes"] == 2
    names = sorted(p.name for p in (tmp_path / "logs").glob("ep*.pth"))
    assert len(names) == 1 and re.fullmatch(r"ep001-loss\d+\.\d{3}\.pth", names[0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cls-weights", "1", "2"],
         "cls_weights (--cls-weights) has 2 values but num_classes (--num-classes) is 4"),
        (["--init-epoch", "5", "--unfreeze-epoch", "5"], "leaves nothing to train"),
        (["--freeze-epoch", "10", "--unfreeze-epoch", "5"],
         "is past unfreeze_epoch (--unfreeze-epoch) 5"),
        (["--input-shape", "40", "40"], "multiples of 16"),
        (["--width-mult", "0.3"], "gives 19.2 channels in the first layer; use a multiple of 1/64"),
        (["--width-mult", "0.5", "--backbone", "resnet18"],
         "but resnet18's channels are its ImageNet layout's; use --width-mult 1"),
        (["--width-mult", "0.5", "--pretrained"], "train from scratch (--no-pretrained)"),
        (["--precision", "fp16", "--device", "cpu"], "needs a CUDA GPU"),
        (["--distributed"], "torchrun --nproc_per_node"),
        (["--sync-bn"], "run under torchrun or drop it"),
        (["--model-path", "no/such.pth"], "--model-path 'no/such.pth' does not exist"),
        (["--resume", "no/such.pth"], "--resume 'no/such.pth' does not exist"),
        (["--min-lr", "1"], "must be above 0 and at most init_lr (--init-lr)"),
        (["--unfreeze-batch-size", "9", "--no-freeze-train"],
         "the train split has 8 images, fewer than the batch size 9"),
        (["--lr-decay-type", "step", "--unfreeze-epoch", "5", "--no-freeze-train"],
         "needs at least 10 epochs"),
        (["--num-classes", "1"], "num_classes (--num-classes) must be at least 2, not 1"),
        (["--num-classes", "300"], "num_classes (--num-classes) must be below 256, not 300"),
        (["--dataset-path", "no/such/dir"], "--dataset-path 'no/such/dir' does not exist"),
        (["--val-split", "no/val.txt"], "split file 'no/val.txt' does not exist; check the path"),
        (["--name-classes", "a", "b"],
         "name_classes (--name-classes) has 2 names but num_classes (--num-classes) is 4"),
        (["--val-batch-size", "0"], "val_batch_size (--val-batch-size) must be at least 1, not 0"),
        (["--momentum", "1"], "momentum (--momentum) must be below 1, not 1.0"),
    ],
)  # fmt: skip
def test_bad_flags_end_in_one_clear_sentence(data_root, tmp_path, cli, extra, message):
    code, _, err = cli(train.main, base_argv(data_root, tmp_path, *extra))
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_resume_refuses_weights_files_and_shape_changes(data_root, tmp_path, weights_file, cli):
    code, _, err = cli(train.main, ["--resume", str(weights_file)])
    assert code == 2 and "is a weights file, not a training checkpoint" in err
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    resume = ["--resume", str(tmp_path / "checkpoint_last.pth"), "--num-classes", "5"]
    code, _, err = cli(train.main, resume)
    assert code == 2 and "num_classes (--num-classes) 5 differs from the checkpoint's 4" in err


def test_backbone_weights_of_another_backbone_are_refused(data_root, tmp_path, cli):
    path = tmp_path / "resnet.pth"
    torch.save(Unet(num_classes=4, backbone="resnet50").state_dict(), path)
    code, _, err = cli(train.main, base_argv(data_root, tmp_path, "--model-path", str(path)))
    assert code == 2 and "26 of 26 backbone tensors" in err and "--allow-backbone-mismatch" in err


def test_reference_init_silences_the_input_but_kaiming_does_not():
    """Why --init-type defaults to kaiming: N(0, 0.02) on every conv of a VGG UNet trained from
    scratch shrinks the signal ~3x per layer, so the logits hardly depend on the image and the
    model can only learn the majority class."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    spread = {}
    for init_type in ("normal", "kaiming"):
        model = Unet(num_classes=4).eval()
        weights_init(model, init_type)
        with torch.no_grad():
            logits = model(x)
        spread[init_type] = (logits - logits.mean(dim=(2, 3), keepdim=True)).abs().max().item()
    assert spread["kaiming"] > 1000 * spread["normal"], spread


@pytest.mark.slow
def test_the_scratch_recipe_learns_the_demo_data(tmp_path, cli):
    """10 epochs of recipes/scratch.yaml (Adam 1e-3, Dice) at 64x64 on 32 demo images. Measured
    on a 2-core AMD EPYC Zen 5: mIoU 52.5 against 21.8 for predicting only background, and 50.5
    at LR 3e-4, so a margin of 10 points leaves room for any CPU's rounding; the original's
    defaults (Adam clamped to 1e-4) reach only 33.7 here."""
    root = make_demo_dataset(tmp_path / "VOCdevkit", 40, size=(96, 72))  # 32 train / 8 val
    argv = ["--config", str(ROOT / "recipes/scratch.yaml"),
            *base_argv(root, tmp_path / "logs", "--unfreeze-epoch", "10",
                       "--unfreeze-batch-size", "4", "--eval-period", "10")]  # fmt: skip
    at = argv.index("--input-shape")
    argv[at + 1 : at + 3] = ["64", "64"]
    assert cli(train.main, argv)[0] == 0
    miou = float(next((tmp_path / "logs").glob("loss_*/epoch_miou.txt")).read_text().split()[-1])
    labels = [np.array(Image.open(p)) for p in (root / "VOC2007/SegmentationClass").glob("*.png")]
    pixels = np.concatenate([x.ravel() for x in labels])
    single_class = 100 * np.mean(pixels[pixels != 255] == 0) / 4  # all background: IoU_bg / 4
    assert miou > single_class + 10, (miou, single_class)


def test_the_sync_bn_help_says_what_it_costs_and_when_it_pays():
    text = " ".join(train.get_parser().format_help().split())
    assert "every BatchNorm layer of every step then waits for all of them" in text
    assert "worth it only when each GPU's share of the batch is small" in text
