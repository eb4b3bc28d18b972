"""Input pipelines: datasets (digits, image folders, CIFAR, npz) and Grain loaders.

    spec = DatasetSpec(kind='digits')
    ds = load_dataset(spec)
    it = make_loader(ds.train, batch_size=128, image_size=32, mean=..., std=...)
    batch = next(it)  # {'image': float32 (B, h, w, C), 'label': int32 (B,)}
"""

from vit_jax.data.batches import reset_skipped_corrupt_files, skipped_corrupt_files
from vit_jax.data.dataset import KINDS, Dataset, DatasetSpec, load_dataset
from vit_jax.data.errors import CorruptImageError, DataError
from vit_jax.data.iterator import BatchIterator
from vit_jax.data.loader import make_loader
from vit_jax.data.records import ArrayRecords, AugmentDefaults, FileRecords
from vit_jax.data.single_image import decode_image_file
from vit_jax.data.transforms import ImageTransform

__all__ = [
    "KINDS",
    "ArrayRecords",
    "AugmentDefaults",
    "BatchIterator",
    "CorruptImageError",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "FileRecords",
    "ImageTransform",
    "decode_image_file",
    "load_dataset",
    "make_loader",
    "reset_skipped_corrupt_files",
    "skipped_corrupt_files",
]
