"""Train on the medical layout, as the original's train_medical.py did.

This is train.py with three defaults changed: --dataset-format medical, --num-classes 2 and
--dataset-path Medical_Datasets (Images/, Labels/, ImageSets/Segmentation/train.txt; class 1
where the label pixel is <= 127.5). Every train.py flag works and overrides them. Example, the
README's ISBI 2012 recipe::

    python train_medical.py --dataset-path ../shared/data/isbi2012_cells --model-path '' \\
        --train-split recipes/isbi2012/train.txt --val-split recipes/isbi2012/val.txt \\
        --input-shape 160 160 --no-freeze-train --unfreeze-epoch 14 --unfreeze-batch-size 1 \\
        --init-lr 1e-3 --no-lr-fit --augment flip --dice-loss --eval-period 7
"""

from __future__ import annotations

import train

MEDICAL_DEFAULTS = {
    "dataset_format": "medical",
    "num_classes": 2,
    "dataset_path": "Medical_Datasets",
}


def main(argv: list[str] | None = None) -> None:
    train.main(argv, defaults=MEDICAL_DEFAULTS, description=__doc__)


if __name__ == "__main__":
    main()
