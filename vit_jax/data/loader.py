"""Grain input pipeline: shuffled, augmented, batched, sharded, checkpointable.

The pipeline is a chain of Grain `MapDataset`s up to the batch, so every batch
is a pure function of (seed, global batch index):

    range(N) -> shuffle (new order each epoch) -> repeat(num_epochs)
             -> random_map(read + transform)  (augmentation RNG from seed and the
                                               element's position in the stream)
             -> batch(per-process batch size)
             -> [shard_index::shard_count]

Sharding takes, from each global batch of `batch_size * shard_count`
examples, this process's contiguous chunk. So N processes together see exactly
the batches one process with the global batch size would see, whatever the
number of background workers. The iterator state is the number of batches
consumed; resuming slices the batched dataset there, with no replay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import grain
import numpy as np

from vit_jax.data.errors import CorruptImageError, DataError
from vit_jax.data.records import RecordSource
from vit_jax.data.transforms import ImageTransform

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


class _ExampleReader:
    """Index -> {'image', 'label'[, 'mask']}; picklable, so it runs in Grain workers."""

    def __init__(self, source: RecordSource, transform: ImageTransform, on_corrupt: str):
        self.source = source
        self.transform = transform
        self.on_corrupt = on_corrupt

    def train_example(self, index: int, rng: np.random.Generator) -> dict:
        # A corrupt file gives its slot to the next readable one, so batches stay
        # full and the stream stays a pure function of the seed.
        n = len(self.source)
        for offset in range(n):
            try:
                pixels, label = self.source[(int(index) + offset) % n]
            except CorruptImageError as error:
                if self.on_corrupt == "error":
                    raise
                _note_corrupt(error)
                continue
            return {"image": self.transform(pixels, rng), "label": np.int32(label)}
        raise DataError(f"{self.source.what}: none of the {n} image files could be decoded")

    def eval_example(self, index: int) -> dict:
        # Indices past the end are padding; a corrupt file is masked out too.
        if index < len(self.source):
            try:
                pixels, label = self.source[int(index)]
                return {"image": self.transform(pixels), "label": np.int32(label), "mask": np.float32(1.0)}
            except CorruptImageError as error:
                if self.on_corrupt == "error":
                    raise
                _note_corrupt(error)
        height, width = self.transform.image_size
        blank = np.zeros((height, width, self.transform.channels), np.float32)
        return {"image": blank, "label": np.int32(0), "mask": np.float32(0.0)}


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
    reader = _ExampleReader(source, transform, on_corrupt)
    n = len(source)
    global_batch = batch_size * shard_count

    if train:
        examples = grain.MapDataset.range(n).shuffle(seed=shuffle_seed).repeat(num_epochs)
        examples = examples.random_map(reader.train_example, seed=augment_seed)
        batches = examples.batch(batch_size, drop_remainder=True)
        # Whole global batches only, so every process runs the same number of steps.
        batches = batches[: len(batches) // shard_count * shard_count]
        if len(batches) == 0:
            raise DataError(
                f"{source.what}: {n} examples x {num_epochs} epoch(s) do not fill one global batch of "
                f"{global_batch} ({batch_size} per process x {shard_count} processes)"
            )
    else:
        padded = math.ceil(n / global_batch) * global_batch
        examples = grain.MapDataset.range(padded).repeat(num_epochs or 1).map(reader.eval_example)
        batches = examples.batch(batch_size)
        num_epochs = num_epochs or 1
    batches = batches[shard_index::shard_count]

    identity = {
        "num_examples": n,
        "global_batch_size": global_batch,
        "seed": int(seed),
        "train": bool(train),
        "num_epochs": num_epochs,
    }
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return BatchIterator(batches, identity, read_options, num_workers, worker_buffer_size)
