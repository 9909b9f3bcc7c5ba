"""Read shard sets for distributed training and evaluation: one reader for both.

Every DataLoader worker of every rank yields the same number of samples per epoch, computed from
the manifest before anything is read (epoch_plan.py says how), so every rank yields the same
number of batches and DDP never waits on a rank that ran dry; ``make_loader`` returns that number.
Training may ignore ``pad`` (a repeated sample is harmless); evaluation must mask padded samples
so that each sample counts exactly once: ``batch["pad"]`` is a bool tensor (B,).  A set with class
labels (``manifest.has_labels``) also gives ``batch["y"]``, a LongTensor (B,); ``labels=True``
insists on them (ManifestError for a set without), ``labels=False`` leaves them out.

Samples are read in blocks (shard_blocks.py) and the read-time transform (transforms.py) runs on
whole blocks.  A missing or corrupt shard raises ShardError naming it and its manifest, or with
``on_corrupt="skip"`` is skipped, warned about and counted, without changing the batch count.

Randomness: the shard order depends on (seed, epoch); the shuffle buffer and dynamic binarisation
of a slot on (seed, epoch, slot).  The same seed, epoch, world size and worker count give the same
samples in the same order with the same binarised pixels.  Call ``set_epoch`` before each epoch.
"""
from __future__ import annotations

import multiprocessing
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.data import storage
from pipelines.data.epoch_plan import (
    Piece,
    SlotPlan,
    samples_per_slot,
    shard_order,
    shuffle_buffer_rng,
    shuffled,
    slot_plan,
    transform_rng,
)
from pipelines.data.manifest import Manifest, load_manifest
from pipelines.data.shard_blocks import UNREADABLE_SHARD_ERRORS, Block, BlockReader, unreadable_reason
from pipelines.data.transforms import Transform, make_transform
from pipelines.errors import PipelineError, ShardError, StorageError

ON_CORRUPT = ("raise", "skip")
DEFAULT_SHUFFLE_BUFFER = 1000


class ShardSkippedWarning(UserWarning):
    """A missing or corrupt shard was skipped (``on_corrupt="skip"``)."""


# ---------------------------------------------------------------------------------------- dataset

class ShardDataset(IterableDataset):
    """The samples of one rank, split across its DataLoader workers, as dicts ``{"__key__": str, "x":
    Tensor, "pad": bool}`` (+ ``"y"``, a LongTensor scalar, with ``labels``); the scheme: module docstring.

    Use :func:`shard_dataset` or :func:`make_loader` to build one.
    """

    def __init__(self, manifest: Manifest, *, rank: int, world_size: int, transform: Transform,
                 shuffle: bool, shuffle_buffer: int, seed: int, epoch: int, verify_sha256: bool, on_corrupt: str,
                 labels: bool = False):
        super().__init__()
        self.manifest = manifest
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.seed, self.epoch = seed, epoch
        self.verify_sha256, self.on_corrupt = verify_sha256, on_corrupt
        self.labels = bool(labels and manifest.require_labels())  # a set without: ManifestError naming it
        self._counts = [s.num_samples for s in manifest.shards]
        self._reader = BlockReader(manifest, verify_sha256=verify_sha256)
        self._skipped = self._new_skip_flags()

    # -- what every rank can know in advance

    @property
    def num_samples(self) -> int:
        """Samples in the whole set (all ranks)."""
        return sum(self._counts)

    def samples_per_worker(self, num_workers: int) -> int:
        """M: the samples every DataLoader worker of every rank yields per epoch."""
        return samples_per_slot(self.num_samples, self.world_size * max(num_workers, 1))

    def samples_per_rank(self, num_workers: int) -> int:
        return max(num_workers, 1) * self.samples_per_worker(num_workers)

    def batches_per_rank(self, batch_size: int, num_workers: int, drop_last: bool) -> int:
        m = self.samples_per_worker(num_workers)
        per_worker = m // batch_size if drop_last else -(-m // batch_size)
        return max(num_workers, 1) * per_worker

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order, shuffle and binarisation draws (call before iterating)."""
        self.epoch = int(epoch)

    # -- skipped shards, counted across DataLoader worker processes

    def _new_skip_flags(self):
        try:
            return multiprocessing.Array("b", max(len(self._counts), 1))
        except OSError:  # no shared memory (some sandboxes): count in this process only
            return [0] * max(len(self._counts), 1)

    def __getstate__(self):
        state = dict(self.__dict__)
        if multiprocessing.context.get_spawning_popen() is None:
            # pickled for something other than starting a worker process (e.g. Ray): shared memory
            # cannot travel that way, so the copy counts its own skips.
            state["_skipped"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._skipped is None:
            self._skipped = self._new_skip_flags()

    @property
    def skipped_shards(self) -> list[str]:
        """Names of the shards skipped so far by this dataset and its workers (``on_corrupt="skip"``)."""
        flags = self._skipped[:]
        return [s.name for s, f in zip(self.manifest.shards, flags) if f]

    # -- iteration

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.world_size * workers, self.rank * workers + worker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slots, slot = self._slot()
        order = shard_order(len(self._counts), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        plan = slot_plan(self._counts, order, slots=slots, slot=slot)
        samples = self._samples(plan, transform_rng(self.seed, self.epoch, slot))
        if self.shuffle and self.shuffle_buffer > 1:
            samples = shuffled(samples, self.shuffle_buffer, shuffle_buffer_rng(self.seed, self.epoch, slot))
        for key, x, y, pad in samples:
            item = {"__key__": key, "x": torch.from_numpy(x), "pad": pad}
            if self.labels:
                item["y"] = y
            yield item

    def _samples(self, plan: SlotPlan, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, Any, bool]]:
        """Exactly ``plan.per_slot`` (key, transformed array, label tensor or None, pad), in read order.

        The transform runs on whole blocks (one numpy call per block, not per sample); it runs as
        samples are read, so every read of a sample (a pad re-read included) draws afresh.
        """
        bad: set[int] = set()
        produced = 0
        first: tuple[str, np.ndarray, Any] | None = None
        for piece in plan.pieces:
            for keys, block, y in self._blocks(piece, bad):
                out, y = self.transform(block, rng), self._label_items(y, len(keys))
                if first is None:
                    first = (keys[0], out[0].copy(), y[0])
                produced += len(keys)
                for i, key in enumerate(keys):
                    # a copy: a row kept in the shuffle buffer must not keep its whole block alive
                    yield key, out[i].copy(), y[i], False
        need = plan.per_slot - produced
        if need <= 0:
            return
        if need == 1 and first is not None:
            yield *first, True
            return
        sources = plan.pieces if produced else plan.pad_pieces
        while need > 0:
            got = 0
            for piece in sources:
                if piece.shard in bad:
                    continue
                for keys, block, y in self._blocks(piece, bad, report=False):
                    out, y = self.transform(block, rng), self._label_items(y, len(keys))
                    for i, key in enumerate(keys[:need]):
                        yield key, out[i].copy(), y[i], True
                    got += min(len(keys), need)
                    need -= min(len(keys), need)
                    if need == 0:
                        return
            if got == 0:  # nothing readable at all: schema-shaped zeros keep the batch count equal
                warnings.warn(f"no readable samples for padding in {self.manifest.url}; yielding {need} zero "
                              "samples marked pad=True", ShardSkippedWarning, stacklevel=2)
                field = self.manifest.field
                zero = self.transform(np.zeros((need, *field.shape), dtype=field.dtype), rng)
                zero_y = self._label_items(np.zeros(need, dtype=np.int64), need)
                for i in range(need):
                    yield "__zero__", zero[i].copy(), zero_y[i], True
                return

    def _label_items(self, y: np.ndarray | None, m: int) -> tuple:
        """A block's labels as LongTensor scalars (None without ``labels``): views of one small copy, a fifth
        of a torch.tensor's cost, and no hold on the block's read buffer from the shuffle buffer."""
        return torch.from_numpy(y.copy()).unbind() if self.labels else (None,) * m

    # -- reading one piece of one shard

    def _blocks(self, piece: Piece, bad: set[int], report: bool = True) -> Iterator[Block]:
        """The piece's stored samples as (keys, array (m, *shape), labels (m,) or None) blocks.

        A missing or corrupt shard raises ShardError naming it and the manifest, or with
        ``on_corrupt="skip"`` is skipped (warned about and counted once, unless ``report`` is off).
        """
        try:
            yield from self._reader.blocks(piece)
        except StorageError:
            raise  # an unreachable endpoint or bad credentials are not a corrupt shard
        except UNREADABLE_SHARD_ERRORS as err:
            url = self.manifest.shard_url(piece.shard)
            reason = unreadable_reason(err)
            bad.add(piece.shard)
            if self.on_corrupt == "raise":
                raise ShardError(url, self.manifest.url, reason) from None
            if report:
                self._skipped[piece.shard] = 1
                warnings.warn(f"skipping shard {url} of {self.manifest.url}: {reason}", ShardSkippedWarning, stacklevel=2)


def shard_dataset(manifest_url: str | Manifest, *, rank: int, world_size: int, data_kind: str | None = None,
                  num_classes: int | None = None, shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                  seed: int = 0, epoch: int = 0, verify_sha256: bool = False, on_corrupt: str = "raise",
                  labels: bool | None = None) -> ShardDataset:
    """The IterableDataset of rank ``rank`` of ``world_size`` over the shard set of ``manifest_url``.

    Items are ``{"__key__": str, "x": Tensor, "pad": bool}`` with ``x`` in bfn_core's convention
    for (``data_kind``, ``num_classes``), by default the manifest's ``default_read``.  Under a
    DataLoader the rank's share is split across its workers (``get_worker_info``).  Every worker of
    every rank yields the same number of samples per epoch: see the module docstring.

    ``verify_sha256`` downloads each shard whole and checks it against the manifest before use.
    A missing or corrupt shard raises :class:`ShardError` (naming the shard and the manifest), or
    with ``on_corrupt="skip"`` is skipped with a :class:`ShardSkippedWarning` and listed in
    ``dataset.skipped_shards``.  ``labels``: yield ``"y"`` (None: where the set has labels; True:
    a set without them is a ManifestError naming it and the fix; False: never).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise PipelineError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
    if on_corrupt not in ON_CORRUPT:
        raise PipelineError(f"on_corrupt must be one of {ON_CORRUPT}, not {on_corrupt!r}")
    if shuffle_buffer < 0:
        raise PipelineError(f"shuffle_buffer must be >= 0, not {shuffle_buffer}")
    storage.register_webdataset_opener()
    manifest = manifest_url if isinstance(manifest_url, Manifest) else load_manifest(manifest_url)
    transform = make_transform(manifest.field, data_kind, num_classes, default=manifest.default_read)
    return ShardDataset(manifest, rank=rank, world_size=world_size, transform=transform, shuffle=shuffle,
                        shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch, verify_sha256=verify_sha256,
                        on_corrupt=on_corrupt, labels=manifest.has_labels if labels is None else labels)


# ----------------------------------------------------------------------------------------- loader

def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"x": (B, *shape), "__key__": [B keys], "pad": bool (B,)}`` and ``"y"`` (B,) if labelled."""
    batch = {
        "x": torch.stack([it["x"] for it in items]),
        "__key__": [it["__key__"] for it in items],
        "pad": torch.tensor([it["pad"] for it in items], dtype=torch.bool),
    }
    if "y" in items[0]:
        batch["y"] = torch.stack([it["y"] for it in items])
    return batch


class ShardLoader:
    """Batches of one rank; ``len(loader)`` is the batch count every rank yields per epoch."""

    def __init__(self, dataset: ShardDataset, *, batch_size: int, num_workers: int, drop_last: bool,
                 pin_memory: bool = False, prefetch_factor: int | None = None):
        self.dataset = dataset
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.num_batches = dataset.batches_per_rank(batch_size, num_workers, drop_last)
        if self.num_batches == 0:
            raise PipelineError(
                f"batch_size {batch_size} exceeds the {dataset.samples_per_worker(num_workers)} samples each "
                f"DataLoader worker gets per epoch ({dataset.num_samples} samples over {dataset.world_size} ranks "
                f"x {max(num_workers, 1)} workers): lower batch_size or num_workers, or drop_last=False")
        self._loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_samples,
                                  drop_last=drop_last, pin_memory=pin_memory,
                                  prefetch_factor=prefetch_factor if num_workers > 0 else None)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def skipped_shards(self) -> list[str]:
        return self.dataset.skipped_shards

    @property
    def samples_per_rank(self) -> int:
        return self.dataset.samples_per_rank(self.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = 0
        for batch in self._loader:
            n += 1
            yield batch
        if n != self.num_batches:  # would make DDP hang on the other ranks: fail loudly instead
            raise PipelineError(f"rank {self.dataset.rank} yielded {n} batches instead of {self.num_batches} "
                                f"from {self.dataset.manifest.url}: this is a bug in pipelines.data.reader")


def make_loader(manifest_url: str | Manifest, *, batch_size: int, rank: int, world_size: int, num_workers: int = 0,
                data_kind: str | None = None, num_classes: int | None = None, shuffle: bool = True,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                verify_sha256: bool = False, on_corrupt: str = "raise", pin_memory: bool = False,
                prefetch_factor: int | None = 2, labels: bool | None = None) -> tuple[ShardLoader, int]:
    """Batches for rank ``rank`` and the number of batches per epoch that *every* rank yields.

    Batches are ``{"x": Tensor (B, *shape), "__key__": list[str], "pad": BoolTensor (B,)}``, plus
    ``"y": LongTensor (B,)`` from a labelled set (``labels`` as for :func:`shard_dataset`).
    The count is workers x ceil(M / B) (x floor with ``drop_last``) where M = ceil(N / (world_size
    x workers)) is the samples per worker; see the module docstring for how every worker reaches
    exactly M.  For evaluation, pass ``shuffle=False`` and ignore rows where ``batch["pad"]`` is set:
    the remaining rows cover every sample exactly once across ranks.  Call ``loader.set_epoch(e)``
    before each epoch to get that epoch's order.
    """
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, not {batch_size}")
    if num_workers < 0:
        raise PipelineError(f"num_workers must be >= 0, not {num_workers}")
    dataset = shard_dataset(manifest_url, rank=rank, world_size=world_size, data_kind=data_kind,
                            num_classes=num_classes, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed,
                            epoch=epoch, verify_sha256=verify_sha256, on_corrupt=on_corrupt, labels=labels)
    loader = ShardLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                         pin_memory=pin_memory, prefetch_factor=prefetch_factor)
    return loader, loader.num_batches


def evaluation_batches(manifest_url: str | Manifest, *, batch_size: int, rank: int, world_size: int,
                       data_kind: str | None, num_classes: int | None, device: torch.device, seed: int = 0,
                       max_batches: int | None = None, verify_sha256: bool = True,
                       labels: bool = False) -> Iterator[Any]:
    """This rank's share of a shard set for evaluation, in manifest order, on `device`: padding rows
    dropped, so across ranks every example counts exactly once (at most `max_batches` batches). `seed`
    drives stochastic reads (dynamic binarisation); shards are checked against their sha256 unless
    `verify_sha256` is off. Yields x tensors, or (x, y) pairs with `labels` (a set without: ManifestError)."""
    loader, _ = make_loader(manifest_url, batch_size=batch_size, rank=rank, world_size=world_size, num_workers=0,
                            data_kind=data_kind, num_classes=num_classes, seed=seed, shuffle=False, shuffle_buffer=0,
                            pin_memory=device.type == "cuda", verify_sha256=verify_sha256, labels=labels)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        keep = ~batch["pad"]
        x = batch["x"][keep].to(device, non_blocking=True)
        if len(x):
            yield (x, batch["y"][keep].to(device, non_blocking=True)) if labels else x
