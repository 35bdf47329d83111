"""Shared fixtures: small synthetic data sets written to temporary folders, and the ``cuda``
marker's skip on machines without a GPU."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.demo_data import make_demo_dataset
from utils.device import CUBLAS_WORKSPACE_CONFIG

# train.py --deterministic sets it before CUDA starts; in one pytest process, set it first.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)

#: ``../shared/data``, or where ``UNET_SHARED_DATA`` says (a copy on a GPU machine).
SHARED_DATA = Path(
    os.environ.get("UNET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skip them cleanly without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run them with make test-gpu on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; the test is skipped when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """A 10-image demo VOC data set (4 classes, 255 borders) with its split files."""
    return make_demo_dataset(tmp_path / "VOCdevkit", num_images=10, size=(80, 60))


def write_voc_pair(root: Path, name: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write one JPEG image and PNG label into a VOC layout under ``root``."""
    voc = root / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
    Image.fromarray(label).save(voc / "SegmentationClass" / f"{name}.png")


def save_random_weights(path: Path, num_classes: int, backbone: str = "vgg") -> Path:
    """Write the state dict of a seeded, kaiming-initialised UNet (busy, non-trivial maps)."""
    from nets.unet import Unet
    from nets.unet_training import weights_init

    torch.manual_seed(0)
    model = Unet(num_classes=num_classes, backbone=backbone)
    weights_init(model, "kaiming")
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def cli(capsys):
    """Run a CLI's ``main(argv)`` in-process: ``cli(main, argv) -> (exit code, stdout, stderr)``."""

    def run(main, argv: list[str]) -> tuple[int, str, str]:
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def binary_root(tmp_path) -> Path:
    """Three 8x8 VOC pairs whose labels hold only 0 and 255 (a two-class task saved as 0/255)."""
    root = tmp_path / "VOCdevkit"
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 255
    for name in ("a", "b", "c"):
        write_voc_pair(root, name, np.zeros((8, 8, 3), np.uint8), label)
    return root


@pytest.fixture
def answer_prompts(monkeypatch):
    """``answer_prompts([...])``: ``input()`` returns these, then raises EOFError (Ctrl-D)."""

    def answer(replies: list[str]) -> None:
        replies = iter(replies)

        def fake_input(prompt: str = "") -> str:
            try:
                return next(replies)
            except StopIteration:
                raise EOFError from None

        monkeypatch.setattr("builtins.input", fake_input)

    return answer
