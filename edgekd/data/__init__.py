"""Datasets, splits and batched augmentation. See `load_dataset` and `BatchLoader`."""

from edgekd.data.dataset import ImageData, load_dataset

__all__ = ["ImageData", "load_dataset"]
