"""The short commands of the README and of docs/*.md run as written (``make docs-check`` runs
only this file).

Every ``python ...`` line of a page's ```bash blocks runs, in order, in a workspace laid out as
after ``make demo``: ``demo_data/VOCdevkit`` and its model in ``logs/demo/``, a ``VOCdevkit/``
of your own with a finished run in ``logs/`` (``checkpoint_last.pth``, ``config.yaml``), a
medical-layout ``Medical_Datasets/``, the original's weights files in ``model_data/`` (random
weights of the right shapes), ``recipes/`` and a ``clip.mp4``. Each page gets its own copy of
that workspace. A block after a ``<!-- docs-check: skip (why) -->`` line is skipped (installs,
GPUs, torchrun, data outside the workspace, minutes of time). Commands keep every flag they
show and get a few appended, so that they finish in seconds: training gets 32x32 inputs, one
epoch and a scratch ``--save-dir`` (a resume gets one more epoch instead), ``--mode fps`` a few
timed runs.
"""

import importlib
import os
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from nets.vgg import VGG16_CONFIG, make_layers
from tests.conftest import save_random_weights
from utils.data.demo_data import make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
SKIP = "<!-- docs-check: skip"
PAGES = ["README.md", *sorted(f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md"))]
TRAINING_SCRIPTS = ("train.py", "train_medical.py")


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
    """A training command with flags appended so that it finishes in seconds."""
    if "--resume" in argv:
        return [*argv, "--unfreeze-epoch", "2", "--num-workers", "0"]
    return [*argv, "--input-shape", "32", "32", "--freeze-epoch", "1", "--unfreeze-epoch", "1",
            "--num-workers", "0", "--device", "cpu",
            "--save-dir", str(workspace / "scratch")]  # fmt: skip


def quick(script: str, argv: list[str], workspace: Path) -> list[str]:
    """The command with flags appended so that it finishes in seconds: training gets
    :func:`shortened`, ``predict.py --mode fps`` times a few runs only."""
    if script in TRAINING_SCRIPTS:
        return shortened(argv, workspace)
    if script == "predict.py" and "fps" in argv:
        return [*argv, "--test-interval", "2", "--fps-batch-size", "2"]
    return argv


def tiny_training(root: str, save_dir: str) -> None:
    train.main(["--dataset-path", root, "--num-classes", "4", "--model-path", "",
                "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
                "--num-workers", "0", "--device", "cpu", "--save-dir", save_dir])  # fmt: skip


def make_medical_dataset(root: Path, voc: Path) -> None:
    """The medical layout from a VOC data set: membrane-like dark labels where a shape is."""
    for name in ("Images", "Labels", "ImageSets/Segmentation"):
        (root / name).mkdir(parents=True)
    ids = sorted(p.stem for p in (voc / "VOC2007/JPEGImages").glob("*.jpg"))
    for id_ in ids:
        image = cv2.imread(str(voc / f"VOC2007/JPEGImages/{id_}.jpg"))
        cv2.imwrite(str(root / f"Images/{id_}.png"), image)
        label = cv2.imread(str(voc / f"VOC2007/SegmentationClass/{id_}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / f"Labels/{id_}.png"), np.where(label == 0, 255, 0).astype(np.uint8))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:-3]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[-3:]) + "\n")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The files the examples expect, as after ``make demo``; every path in them relative."""
    ws = tmp_path_factory.mktemp("docs_workspace")
    here = Path.cwd()
    os.chdir(ws)
    try:
        make_demo_dataset("demo_data/VOCdevkit", 12, size=(64, 48))
        tiny_training("demo_data/VOCdevkit", "logs/demo")
        make_demo_dataset("VOCdevkit", 12, size=(64, 48), seed=1)
        tiny_training("VOCdevkit", "logs")  # logs/checkpoint_last.pth and logs/config.yaml
    finally:
        os.chdir(here)
    make_medical_dataset(ws / "Medical_Datasets", ws / "VOCdevkit")
    (ws / "model_data").mkdir()
    save_random_weights(ws / "model_data/unet_vgg_voc.pth", num_classes=21)
    features = {f"features.{k}": v for k, v in make_layers(VGG16_CONFIG).state_dict().items()}
    torch.save(features, ws / "model_data/vgg16-397923af.pth")
    writer = cv2.VideoWriter(str(ws / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    (ws / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    return ws


def link_or_copy(source: str, target: str) -> None:
    """Weights files are hard-linked (the scripts only ever replace them whole, never write into
    them); everything else is copied, so a page never changes the template."""
    if source.endswith(".pth"):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


@pytest.fixture
def workspace(template, tmp_path):
    """A fresh copy of the template for one page."""
    ws = tmp_path / "workspace"
    shutil.copytree(template, ws, symlinks=True, copy_function=link_or_copy)
    return ws


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_check_only_what_runs_here(page):
    commands = readme_commands((ROOT / page).read_text())
    assert not any("torchrun" in c or "pip " in c for c in commands), page
    assert not any("../shared" in c or "isbi2012" in c for c in commands), page


def test_the_readme_has_commands_to_check():
    commands = readme_commands((ROOT / "README.md").read_text())
    scripts = {shlex.split(c)[1] for c in commands}
    assert {"train.py", "predict.py", "get_miou.py", "voc_annotation.py", "summary.py"} <= scripts


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_commands_run_as_written(page, workspace, monkeypatch, cli):
    monkeypatch.chdir(workspace)
    failures = []
    for command in readme_commands((ROOT / page).read_text()):
        script, *argv = shlex.split(command, comments=True)[1:]
        if script == "-m":
            name, *argv = argv
        else:
            name = script.removesuffix(".py").replace("/", ".")  # deploy/onnx_predict.py
        module = importlib.import_module(name)
        code, _, err = cli(module.main, quick(script, argv, workspace))
        if code != 0:
            failures.append(f"{command}\n  -> exit {code}: {err.strip()[-500:]}")
    assert not failures, f"{page}:\n" + "\n".join(failures)
