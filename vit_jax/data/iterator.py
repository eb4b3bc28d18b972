"""The checkpointable batch iterator that make_loader returns."""

from __future__ import annotations

import grain

from vit_jax.data.errors import DataError


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
