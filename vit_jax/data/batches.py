"""Batch number -> batch: which examples, how they are augmented, corrupt files.

For training, stream position p holds example perm_epoch(p mod N) of epoch
p // N (a fresh permutation of the N examples each epoch), and its
augmentation comes from uniforms(seed, p). Global batch g covers positions
g*G ... g*G + G - 1 (G = batch_size * shard_count) and each process takes its
contiguous chunk, so a batch is a pure function of (seed, batch number),
whatever the batch split across processes, the worker count, or what ran
before. For eval, positions run over the examples in order, padded to whole
global batches, with a mask.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from vit_jax.data.errors import CorruptImageError, DataError
from vit_jax.data.randomness import uniforms
from vit_jax.data.records import ArrayRecords, RecordSource
from vit_jax.data.transforms import UNIFORMS_PER_EXAMPLE, ImageTransform

log = logging.getLogger(__name__)

ON_CORRUPT = ("skip", "error")

_skipped_paths: set[str] = set()


def skipped_corrupt_files() -> int:
    """How many distinct corrupt files this process has skipped so far.

    With num_workers > 0 the files are decoded, and counted, in the worker
    processes; their warnings (with the running count) still reach stderr.
    """
    return len(_skipped_paths)


def reset_skipped_corrupt_files() -> None:
    """Start a new count (a training run counts only its own skipped files)."""
    _skipped_paths.clear()


NAMED_CORRUPT_FILES = 10  # the first ones are named; then only the count, at 100, 1000, ... (a folder of broken files)


def _note_corrupt(error: CorruptImageError) -> None:
    if error.path in _skipped_paths:
        return
    _skipped_paths.add(error.path)
    count = len(_skipped_paths)
    if count <= NAMED_CORRUPT_FILES:
        log.warning("skipping corrupt image file (%d skipped so far in this process): %s", count, error)
        if count == NAMED_CORRUPT_FILES:
            log.warning("further corrupt image files are skipped without a line each; their count follows at "
                        "100, 1000, ... (and the total is in summary.json)")
    elif str(count).rstrip("0") == "1":
        log.warning("skipping corrupt image files: %d skipped so far in this process (the latest: %s)", count,
                    error.path)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(shuffle_seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in one epoch: a fresh permutation per epoch."""
    return np.random.default_rng([shuffle_seed, epoch]).permutation(n)


class BatchMaker:
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
            blank = np.zeros((1, 1, self.source.channels), np.uint8)
            images, labels = [], []
            for k, index in enumerate(indices):
                pixels, label = blank, 0
                if mask[k]:
                    try:
                        pixels, label = self.source[int(index)]
                    except CorruptImageError as error:
                        if self.on_corrupt == "error":
                            raise
                        _note_corrupt(error)
                        mask[k] = False
                images.append(pixels)
                labels.append(label)
        labels = np.where(mask, labels, 0).astype(np.int32)
        return {"image": self.transform(images), "label": labels, "mask": mask.astype(np.float32)}
