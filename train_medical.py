"""Train on the medical layout, as the original's train_medical.py did.

This is train.py with recipes/medical.yaml as its defaults: --dataset-format medical,
--num-classes 2 and --dataset-path Medical_Datasets (Images/, Labels/,
ImageSets/Segmentation/train.txt; class 1 where the label pixel is <= 127.5). Every train.py
flag and --config file works and wins over them, e.g. the ISBI 2012 recipe::

    python train_medical.py --config recipes/isbi2012/cpu.yaml
"""

from __future__ import annotations

from pathlib import Path

import train
from utils.settings.recipes import read_config_file

RECIPE = Path(__file__).resolve().parent / "recipes" / "medical.yaml"


def main(argv: list[str] | None = None) -> None:
    train.main(argv, recipe=RECIPE, description=__doc__)


def get_parser():
    """train.py's flags, with this script's description and defaults in --help."""
    return train.get_parser(__doc__, read_config_file(RECIPE))


if __name__ == "__main__":
    main()
