"""Shared fixtures: small synthetic data sets written to temporary folders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.demo_data import make_demo_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
