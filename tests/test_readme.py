"""The README's short commands run as written (``make docs-check`` runs only this file).

Every ``python ...`` line of the README's ```bash blocks runs, in order, in a workspace laid out
as after ``make demo``: ``demo_data/VOCdevkit`` and its model in ``logs/demo/``, a
``VOCdevkit/`` of your own, the original's weights files in ``model_data/`` (random weights of
the right shapes), ``logs/checkpoint_last.pth`` and a ``clip.mp4``. A block after a
``<!-- docs-check: skip (why) -->`` line is skipped (installs, GPUs, benchmarks). Training
commands keep every flag they show and get a few appended, so that they finish in seconds:
32x32 inputs, one epoch, a scratch ``--save-dir`` (a resume gets one more epoch instead).
"""

import importlib
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from nets.vgg import VGG16_CONFIG, make_layers
from tests.conftest import save_random_weights
from utils.demo_data import make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
SKIP = "<!-- docs-check: skip"


def readme_commands(text: str) -> list[str]:
    """The ``python`` commands of the ```bash blocks not marked to skip, continuations joined."""
    commands, block, skip, pending, previous = [], False, False, "", ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            block = not block and stripped == "```bash"
            skip = block and previous.startswith(SKIP)
            pending = ""
        elif block and not skip:
            pending = f"{pending} {stripped}".strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            if pending.startswith("python "):
                commands.append(pending)
            pending = ""
        if stripped:
            previous = stripped
    return commands


def shortened(argv: list[str], workspace: Path) -> list[str]:
    """A train.py command with flags appended so that it finishes in seconds."""
    if "--resume" in argv:
        return [*argv, "--unfreeze-epoch", "2", "--num-workers", "0"]
    return [*argv, "--input-shape", "32", "32", "--freeze-epoch", "1", "--unfreeze-epoch", "1",
            "--num-workers", "0", "--device", "cpu",
            "--save-dir", str(workspace / "scratch")]  # fmt: skip


def tiny_training(root: Path, save_dir: Path) -> None:
    train.main(["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
                "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
                "--num-workers", "0", "--device", "cpu", "--save-dir", str(save_dir)])  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files the README's examples expect, as after ``make demo``."""
    ws = tmp_path_factory.mktemp("readme")
    demo = make_demo_dataset(ws / "demo_data/VOCdevkit", 12, size=(64, 48))
    tiny_training(demo, ws / "logs/demo")
    own = make_demo_dataset(ws / "VOCdevkit", 12, size=(64, 48), seed=1)
    tiny_training(own, ws / "logs")  # logs/checkpoint_last.pth, for the resume example
    (ws / "model_data").mkdir()
    save_random_weights(ws / "model_data/unet_vgg_voc.pth", num_classes=21)
    features = {f"features.{k}": v for k, v in make_layers(VGG16_CONFIG).state_dict().items()}
    torch.save(features, ws / "model_data/vgg16-397923af.pth")
    writer = cv2.VideoWriter(str(ws / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    return ws


def test_the_readme_has_commands_to_check():
    commands = readme_commands((ROOT / "README.md").read_text())
    scripts = {shlex.split(c)[1] for c in commands}
    assert {"train.py", "predict.py", "get_miou.py", "voc_annotation.py", "summary.py"} <= scripts
    assert not any("torchrun" in c or "pip " in c for c in commands)


@pytest.mark.slow
def test_the_readme_commands_run_as_written(workspace, monkeypatch, cli):
    monkeypatch.chdir(workspace)
    failures = []
    for command in readme_commands((ROOT / "README.md").read_text()):
        script, *argv = shlex.split(command, comments=True)[1:]
        module = importlib.import_module(script.removesuffix(".py"))
        if script == "train.py":
            argv = shortened(argv, workspace)
        code, _, err = cli(module.main, argv)
        if code != 0:
            failures.append(f"{command}\n  -> exit {code}: {err.strip()[-500:]}")
    assert not failures, "\n".join(failures)
