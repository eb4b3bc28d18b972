"""Grain input pipeline: shuffled, augmented, batched, sharded, checkpointable.

The pipeline is a Grain `MapDataset` over batch numbers, mapped by a batch
maker that is a pure function of (seed, batch number), so batches are
identical whatever the number of background workers, and resuming is slicing:

    stream position p (0, 1, 2, ...) -> example perm_epoch(p mod N), epoch p // N
                                        (a fresh permutation of the N examples per epoch)
    global batch g                   -> positions g*G ... g*G + G - 1, G = batch_size * shard_count
    this process's batch g           -> its contiguous chunk of B = batch_size of those
    augmentation of position p       -> uniforms(seed, p): independent of batching

So N processes together see exactly the batches one process with the global
batch size sees, with the same augmentation. Work is vectorised per batch:
in-memory float images (digits) are cropped and resized for the whole batch in
two matrix products; uint8 images and files go through PIL one by one.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Sequence

import grain
import numpy as np

from vit_jax.data.errors import CorruptImageError, DataError
from vit_jax.data.randomness import uniforms
from vit_jax.data.records import ArrayRecords, RecordSource
from vit_jax.data.transforms import UNIFORMS_PER_EXAMPLE, ImageTransform

log = logging.getLogger(__name__)

ON_CORRUPT = ("skip", "error")

_skipped_paths: set[str] = set()


def skipped_corrupt_files() -> int:
    """How many distinct corrupt files this process has skipped so far."""
    return len(_skipped_paths)


def _note_corrupt(error: CorruptImageError) -> None:
    if error.path not in _skipped_paths:
        _skipped_paths.add(error.path)
        log.warning(
            "skipping corrupt image file (%d skipped so far in this process): %s",
            len(_skipped_paths),
            error,
        )


@functools.lru_cache(maxsize=4)
def _epoch_permutation(shuffle_seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in one epoch: a fresh permutation per epoch."""
    return np.random.default_rng([shuffle_seed, epoch]).permutation(n)


class _BatchMaker:
    """Batch number -> batch dict. Picklable, so Grain workers run it."""

    def __init__(
        self,
        source: RecordSource,
        transform: ImageTransform,
        on_corrupt: str,
        *,
        batch_size: int,
        shard_index: int,
        shard_count: int,
        shuffle_seed: int,
        augment_seed: int,
        padded_epoch: int,
    ):
        self.source = source
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.batch_size = batch_size
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.shuffle_seed = shuffle_seed
        self.augment_seed = augment_seed
        self.padded_epoch = padded_epoch  # eval: examples per pass, padded to whole global batches

    def positions(self, batch_number: int) -> np.ndarray:
        global_start = batch_number * self.batch_size * self.shard_count
        return global_start + self.shard_index * self.batch_size + np.arange(self.batch_size, dtype=np.int64)

    def __call__(self, batch_number: int) -> dict:
        positions = self.positions(int(batch_number))
        if self.transform.train:
            return self._train_batch(positions)
        return self._eval_batch(positions)

    def _train_batch(self, positions: np.ndarray) -> dict:
        n = len(self.source)
        epochs, offsets = np.divmod(positions, n)
        indices = np.empty_like(offsets)
        for epoch in np.unique(epochs):  # a batch spans at most a few epochs
            here = epochs == epoch
            indices[here] = _epoch_permutation(self.shuffle_seed, int(epoch), n)[offsets[here]]
        u = uniforms(self.augment_seed, positions, UNIFORMS_PER_EXAMPLE) if self.transform.random else None
        if isinstance(self.source, ArrayRecords):
            images, labels = self.source.images[indices], self.source.labels[indices]
        else:
            images, labels = zip(*(self._read_replacing_corrupt(i) for i in indices))
        return {"image": self.transform(images, u), "label": np.asarray(labels, np.int32)}

    def _read_replacing_corrupt(self, index: int) -> tuple[np.ndarray, int]:
        # A corrupt file gives its slot to the next readable one, so batches stay
        # full and the stream stays a pure function of the seed.
        n = len(self.source)
        for offset in range(n):
            try:
                return self.source[(int(index) + offset) % n]
            except CorruptImageError as error:
                if self.on_corrupt == "error":
                    raise
                _note_corrupt(error)
        raise DataError(f"{self.source.what}: none of the {n} image files could be decoded")

    def _eval_batch(self, positions: np.ndarray) -> dict:
        # Positions past the end of a pass are padding; a corrupt file is masked out too.
        offsets = positions % self.padded_epoch
        mask = offsets < len(self.source)
        indices = np.where(mask, offsets, 0)
        if isinstance(self.source, ArrayRecords):
            images, labels = self.source.images[indices], self.source.labels[indices]
        else:
            images, labels = [], []
            for k, index in enumerate(indices):
                try:
                    pixels, label = self.source[int(index)]
                except CorruptImageError as error:
                    if self.on_corrupt == "error":
                        raise
                    _note_corrupt(error)
                    pixels, label, mask[k] = np.zeros((1, 1, self.source.channels), np.uint8), 0, False
                images.append(pixels)
                labels.append(label)
        labels = np.where(mask, labels, 0).astype(np.int32)
        return {"image": self.transform(images), "label": labels, "mask": mask.astype(np.float32)}


class BatchIterator:
    """Iterator over batches with `get_state`/`set_state`.

    The state is a small JSON-serialisable dict: the number of batches this
    process has consumed plus what fixes the global stream (dataset size,
    global batch size, seed, epochs). Per-process batch size, shard count and
    worker count may change between save and restore as long as the global
    batch does: the position counts global steps.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        identity: dict,
        read_options: grain.ReadOptions,
        num_workers: int,
        worker_buffer_size: int,
    ):
        self._batches = batches
        self._identity = identity
        self._read_options = read_options
        self._num_workers = num_workers
        self._worker_buffer_size = worker_buffer_size
        self._position = 0
        self._iterator = None

    @property
    def num_batches(self) -> int | None:
        """Batches per process over all requested epochs; None when repeating forever."""
        return None if self._identity["num_epochs"] is None else len(self._batches)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinitely repeating loader (num_epochs=None) has no length")
        return self.num_batches

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._open(self._position)
        batch = next(self._iterator)
        self._position += 1
        return batch

    def _open(self, position: int):
        remaining = self._batches[position:].to_iter_dataset(self._read_options)
        if self._num_workers > 0:
            _allow_unparsed_absl_flags()
            remaining = remaining.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._num_workers, per_worker_buffer_size=self._worker_buffer_size
                )
            )
        return iter(remaining)

    def get_state(self) -> dict:
        return {"next_batch": self._position, **self._identity}

    def set_state(self, state: dict) -> None:
        mismatched = {
            key: (state.get(key), value) for key, value in self._identity.items() if state.get(key) != value
        }
        if mismatched:
            details = ", ".join(f"{key} saved {saved!r} vs now {now!r}" for key, (saved, now) in mismatched.items())
            raise DataError(f"iterator state belongs to a different input pipeline: {details}")
        position = state.get("next_batch")
        if not isinstance(position, int) or position < 0:
            raise DataError(f"iterator state needs a non-negative integer 'next_batch', got {position!r}")
        self.close()
        self._position = position

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __del__(self):
        self.close()


def _allow_unparsed_absl_flags() -> None:
    """Grain 0.2.x reads an absl flag when starting workers, which fails in
    programs that never parse absl flags (google/grain#1355, fixed upstream);
    marking them parsed keeps every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


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
    num_threads: int = 1,
    prefetch: int = 2,
    worker_buffer_size: int = 2,
) -> BatchIterator:
    """Batches of {'image': float32 (B, h, w, C), 'label': int32 (B,)} from `source`.

    train=True: shuffled anew each epoch, augmented (unless augment=False),
    repeated num_epochs times (None: forever), remainder dropped.
    train=False: source order, no augmentation, num_epochs (None means 1)
    passes; the tail is padded to whole batches and every batch has a 'mask'
    (float32 1 real / 0 padding) so metrics are exact, and every process gets
    the same number of batches.

    batch_size is per process; shard_index/shard_count default to
    jax.process_index()/jax.process_count(). flip, crop_scale and crop_fraction
    default to the source's own defaults (`source.defaults`). num_workers > 0
    runs the transforms in that many Grain worker processes; num_threads and
    prefetch control background batches in this process.
    """
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
    defaults = source.defaults
    transform = ImageTransform(
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
    )
    n = len(source)
    global_batch = batch_size * shard_count
    if train:
        # Whole global batches only, so every process runs the same number of steps.
        num_batches = None if num_epochs is None else n * num_epochs // global_batch
        padded_epoch = n
        if num_batches == 0:
            raise DataError(
                f"{source.what}: {n} examples x {num_epochs} epoch(s) do not fill one global batch of "
                f"{global_batch} ({batch_size} per process x {shard_count} processes)"
            )
    else:
        num_epochs = num_epochs or 1
        padded_epoch = math.ceil(n / global_batch) * global_batch
        num_batches = padded_epoch // global_batch * num_epochs
    maker = _BatchMaker(
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
