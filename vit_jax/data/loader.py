"""make_loader: a Grain pipeline of batches, sharded per process, checkpointable.

The pipeline is a Grain `MapDataset` over batch numbers mapped by a BatchMaker
(batches.py), which is a pure function of (seed, batch number). So batches
are the same whatever the number of background workers, N processes together
see exactly the batches of one process with the global batch size (same
augmentation too), and resuming is slicing the dataset at the saved batch
number. Work is vectorised per batch: in-memory float images (digits) are
cropped and resized for the whole batch in two matrix products; uint8 images
and files go through PIL one by one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import grain
import numpy as np

from vit_jax.data.batches import ON_CORRUPT, BatchMaker
from vit_jax.data.errors import DataError
from vit_jax.data.iterator import BatchIterator
from vit_jax.data.preprocess import BatchTransform
from vit_jax.data.rand_augment import parse_rand_augment
from vit_jax.data.random_erasing import RandomErasing
from vit_jax.data.records import RecordSource
from vit_jax.data.transforms import ImageTransform


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_sharding(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only when defaulting: the data package itself does not need jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    shard_count = _positive_int("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index must be in [0, {shard_count}), got {shard_index!r}")
    return int(shard_index), shard_count


def _derived_seeds(seed: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the shuffle and the augmentation."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    shuffle_seed, augment_seed = np.random.SeedSequence(int(seed)).generate_state(2)
    return int(shuffle_seed), int(augment_seed)


def _transform(source: RecordSource, train: bool, augment: bool, image_size, mean, std, *, flip, crop_scale,
               crop_ratio, crop_fraction, resample, per_image=None, rand_augment=None, erasing=None
               ) -> ImageTransform | BatchTransform:
    """The per-image transform; flip, crop scale and crop fraction default to the source's own."""
    if per_image is not None and not train:
        return BatchTransform(per_image)
    defaults = source.defaults
    return ImageTransform(
        image_size=tuple(image_size),
        mean=tuple(mean),
        std=tuple(std),
        channels=source.channels,
        train=train,
        augment=augment,
        flip=defaults.flip if flip is None else flip,
        crop_scale=defaults.crop_scale if crop_scale is None else tuple(crop_scale),
        crop_ratio=tuple(crop_ratio),
        crop_fraction=defaults.crop_fraction if crop_fraction is None else crop_fraction,
        resample=resample,
        rand_augment=parse_rand_augment(rand_augment) if rand_augment else None,
        erasing=erasing,
    )


def _batch_plan(source: RecordSource, train: bool, num_epochs: int | None, batch_size: int,
                shard_count: int) -> tuple[int | None, int | None, int]:
    """(epochs, global batches in all (None: forever), examples per padded epoch)."""
    n = len(source)
    global_batch = batch_size * shard_count
    if train:
        # Whole global batches only, so every process runs the same number of steps.
        num_batches = None if num_epochs is None else n * num_epochs // global_batch
        if num_batches == 0:
            raise DataError(
                f"{source.what}: {n} examples x {num_epochs} epoch(s) do not fill one global batch of "
                f"{global_batch} ({batch_size} per process x {shard_count} processes)"
            )
        return num_epochs, num_batches, n
    num_epochs = num_epochs or 1
    padded_epoch = math.ceil(n / global_batch) * global_batch
    return num_epochs, padded_epoch // global_batch * num_epochs, padded_epoch


def make_loader(
    source: RecordSource,
    batch_size: int,
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    augment: bool = True,
    on_corrupt: str = "skip",
    *,
    flip: bool | None = None,
    crop_scale: tuple[float, float] | None = None,
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    crop_fraction: float | None = None,
    resample: str = "bilinear",
    rand_augment: str | None = None,
    erasing: RandomErasing | None = None,
    num_threads: int = 1,
    prefetch: int = 2,
    worker_buffer_size: int = 2,
    eval_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> BatchIterator:
    """Batches of {'image': float32 (B, h, w, C), 'label': int32 (B,)} from `source`.

    train=True: shuffled anew each epoch, augmented (unless augment=False), repeated num_epochs times (None:
    forever), remainder dropped. train=False: source order, no augmentation, num_epochs (None means 1) passes; the
    tail is padded to whole batches and every batch has a 'mask' (float32 1 real / 0 padding) so metrics are
    exact, and every process gets the same number of batches.

    batch_size is per process; shard_index/shard_count default to jax.process_index()/jax.process_count().
    flip, crop_scale and crop_fraction default to the source's own defaults (`source.defaults`). num_workers > 0
    runs the transforms in that many Grain worker processes; num_threads and prefetch control background
    batches in this process. Training images also get rand_augment (timm's --aa string) and erasing.
    `eval_transform` (train=False): a per-image callable (`vit_jax.load_transform(checkpoint)`) instead of the
    resize, crop and normalisation."""
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    if on_corrupt not in ON_CORRUPT:
        raise DataError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    if num_epochs is not None:
        num_epochs = _positive_int("num_epochs", num_epochs)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    shard_index, shard_count = _resolve_sharding(shard_index, shard_count)
    shuffle_seed, augment_seed = _derived_seeds(seed)
    transform = _transform(source, train, augment, image_size, mean, std, flip=flip, crop_scale=crop_scale,
                           crop_ratio=crop_ratio, crop_fraction=crop_fraction, resample=resample,
                           per_image=eval_transform, rand_augment=rand_augment, erasing=erasing)
    n = len(source)
    global_batch = batch_size * shard_count
    num_epochs, num_batches, padded_epoch = _batch_plan(source, train, num_epochs, batch_size, shard_count)
    maker = BatchMaker(
        source,
        transform,
        on_corrupt,
        batch_size=batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
        shuffle_seed=shuffle_seed,
        augment_seed=augment_seed,
        padded_epoch=padded_epoch,
    )
    # Repeating forever: batch numbers up to sys.maxsize, a lazy range.
    batches = grain.MapDataset.range(sys.maxsize if num_batches is None else num_batches).map(maker)

    identity = {
        "num_examples": n,
        "global_batch_size": global_batch,
        "seed": int(seed),
        "train": bool(train),
        "num_epochs": num_epochs,
    }
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return BatchIterator(batches, identity, read_options, num_workers, worker_buffer_size)
