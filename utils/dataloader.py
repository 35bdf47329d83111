"""The original's path for its data set: ``UnetDataset`` and ``unet_dataset_collate`` live in
:mod:`utils.data.datasets`, with the rest of what reads a data set."""

from utils.data.datasets import UnetDataset, unet_dataset_collate

__all__ = ["UnetDataset", "unet_dataset_collate"]
