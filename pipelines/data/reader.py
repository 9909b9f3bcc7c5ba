"""Read shard sets for distributed training and evaluation: one reader for both.

How an epoch is shared out (and why every rank yields the same number of batches)
--------------------------------------------------------------------------------
Call a *slot* one DataLoader worker of one rank: there are S = world_size x max(num_workers, 1)
slots, and slot ``rank * workers + worker`` is the one running.  For each epoch:

1. Every slot computes the same shard order from (seed, epoch) alone (the manifest order when
   ``shuffle=False``) and lays the shards' samples end to end: N positions, N from the manifest.
2. The N positions are cut into S contiguous ranges whose sizes differ by at most one (the first
   N mod S ranges get one more).  A slot reads only the shards that overlap its range, skipping
   into the first and stopping early in the last, so every sample belongs to exactly one slot.
3. Every slot yields exactly M = ceil(N / S) samples: a slot whose range is one short repeats its
   first sample once, marked ``pad=True``.  At most S - 1 samples per epoch are padding, and none
   when S divides N.  (If N < S, a slot with an empty range pads with sample ``slot mod N``.)
4. So each rank yields workers x M samples, and with batch size B its DataLoader yields
   workers x ceil(M / B) batches (workers x floor(M / B) with ``drop_last``): the same number on
   every rank, computed from the manifest before reading anything, so DDP never waits on a rank
   that ran dry.  ``make_loader`` returns that number.
5. Corrupt or missing shards skipped with ``on_corrupt="skip"`` do not change the count either:
   the slot fills up to M by cycling through its readable samples again (marked ``pad=True``).

Training may ignore ``pad`` (a repeated sample is harmless); evaluation must mask padded samples
so that each sample counts exactly once: ``batch["pad"]`` is a bool tensor (B,).  A shard on the
boundary of two ranges is read by both slots, each only its own part.  Shuffling mixes within a
slot's range (shard order per epoch, then a shuffle buffer), so use many more shards than slots.

Reading
-------
Shards in the fixed record layout the writer produces (``manifest.layout``, see tarlayout.py) are
read in blocks of about 1 MiB: a seek locally or one ranged GET on S3 per piece, all headers of a
block checked at once, the read-time transform applied to the whole block.  Anything else (or a
block that fails the checks) goes through webdataset's member-by-member tar iterator, which also
gives the precise diagnosis of a corrupt shard.  ``verify_sha256`` fetches each shard whole and
checks it against the manifest first.  Stored values outside 0..K-1 count as corruption too.

Randomness: the shard order depends on (seed, epoch); the shuffle buffer and dynamic binarisation
of a slot on (seed, epoch, slot).  The same seed, epoch, world size and worker count give the same
samples in the same order with the same binarised pixels.  Call ``set_epoch`` before each epoch.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import tarfile
import warnings
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.data import storage
from pipelines.data.manifest import Manifest, load_manifest
from pipelines.data.tarlayout import LayoutError, parse_records, record_bytes
from pipelines.data.transforms import Transform, make_transform
from pipelines.errors import PipelineError, ShardError, StorageError

ON_CORRUPT = ("raise", "skip")
READ_BLOCK_BYTES = 1 << 20  # samples are read, checked and transformed in blocks of about this size
DEFAULT_SHUFFLE_BUFFER = 1000


class ShardSkippedWarning(UserWarning):
    """A missing or corrupt shard was skipped (``on_corrupt="skip"``)."""


class _Corrupt(Exception):
    pass


# ------------------------------------------------------------------------------------ epoch plan

@dataclass(frozen=True)
class Piece:
    """Read ``take`` samples of shard ``shard`` after skipping its first ``skip``."""

    shard: int
    skip: int
    take: int


@dataclass(frozen=True)
class SlotPlan:
    pieces: tuple[Piece, ...]
    own: int  # samples of this slot's range
    per_slot: int  # M: what every slot yields
    pad_pieces: tuple[Piece, ...]  # where padding comes from when the range is empty


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order, identical on every rank and worker."""
    if not shuffle:
        return list(range(num_shards))
    return [int(i) for i in np.random.default_rng([int(seed), int(epoch), 0x0D3]).permutation(num_shards)]


def _pieces(counts: list[int], order: list[int], start: int, stop: int) -> list[Piece]:
    pieces, pos = [], 0
    for shard in order:
        n = counts[shard]
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            pieces.append(Piece(shard, lo - pos, hi - lo))
        pos += n
        if pos >= stop:
            break
    return pieces


def slot_plan(counts: list[int], order: list[int], *, slots: int, slot: int) -> SlotPlan:
    """Which samples slot ``slot`` of ``slots`` reads this epoch (see the module docstring)."""
    total = sum(counts)
    if total == 0:
        raise PipelineError("the manifest lists no samples")
    base, extra = divmod(total, slots)
    size = base + (1 if slot < extra else 0)
    start = slot * base + min(slot, extra)
    per_slot = base + (1 if extra else 0)
    pad_pieces: list[Piece] = []
    if size == 0:
        where = slot % total
        pad_pieces = _pieces(counts, order, where, where + 1)
    return SlotPlan(tuple(_pieces(counts, order, start, start + size)), size, per_slot, tuple(pad_pieces))


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0])


def _shuffled(items: Iterator[Any], size: int, rnd: random.Random) -> Iterator[Any]:
    """A shuffle buffer: fill ``size`` items, then emit a random one per item read; drain at the end."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rnd.randrange(size)
        out, buf[i] = buf[i], item
        yield out
    rnd.shuffle(buf)
    yield from buf


# ---------------------------------------------------------------------------------------- dataset

class ShardDataset(IterableDataset):
    """The samples of one rank, split across its DataLoader workers, as dicts
    ``{"__key__": str, "x": Tensor, "pad": bool}`` (see the module docstring for the scheme).

    Use :func:`shard_dataset` or :func:`make_loader` to build one.
    """

    def __init__(self, manifest: Manifest, *, rank: int, world_size: int, transform: Transform,
                 shuffle: bool, shuffle_buffer: int, seed: int, epoch: int, verify_sha256: bool, on_corrupt: str):
        super().__init__()
        self.manifest = manifest
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.seed, self.epoch = seed, epoch
        self.verify_sha256, self.on_corrupt = verify_sha256, on_corrupt
        self._counts = [s.num_samples for s in manifest.shards]
        self._field = manifest.field
        self._member = self._field.member("x")
        # grey levels and classes must lie in 0..K-1: a flipped byte beyond it would index out of range
        integer = np.dtype(self._field.dtype).kind in "iu"
        self._limit = self._field.num_classes if integer and self._field.num_classes else None
        layout = manifest.layout or {}
        fixed = layout.get("tar") == "ustar" and layout.get("record_bytes") == record_bytes(self._field.nbytes)
        self._record = int(layout["record_bytes"]) if fixed else None
        self._key_chars = int(layout.get("key_chars", 0))
        self._skipped = self._new_skip_flags()

    # -- what every rank can know in advance

    @property
    def num_samples(self) -> int:
        """Samples in the whole set (all ranks)."""
        return sum(self._counts)

    def samples_per_worker(self, num_workers: int) -> int:
        """M: the samples every DataLoader worker of every rank yields per epoch."""
        slots = self.world_size * max(num_workers, 1)
        return -(-self.num_samples // slots)

    def samples_per_rank(self, num_workers: int) -> int:
        return max(num_workers, 1) * self.samples_per_worker(num_workers)

    def padded_per_epoch(self, num_workers: int) -> int:
        """Samples marked ``pad`` per epoch over all ranks (when no shard is skipped)."""
        return self.world_size * self.samples_per_rank(num_workers) - self.num_samples

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
        rng = np.random.default_rng([int(self.seed), int(self.epoch), slot, 0xB1])
        samples = self._samples(plan, rng)
        if self.shuffle and self.shuffle_buffer > 1:
            samples = _shuffled(samples, self.shuffle_buffer, random.Random(_seed_int(self.seed, self.epoch, slot, 0x5F)))
        for key, x, pad in samples:
            yield {"__key__": key, "x": torch.from_numpy(x), "pad": pad}

    def _samples(self, plan: SlotPlan, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, bool]]:
        """Exactly ``plan.per_slot`` (key, transformed array, pad) triples, in read order.

        The transform runs on whole blocks (one numpy call per block, not per sample); it runs as
        samples are read, so every read of a sample (a pad re-read included) draws afresh.
        """
        bad: set[int] = set()
        produced = 0
        first: tuple[str, np.ndarray] | None = None
        for piece in plan.pieces:
            for keys, block in self._blocks(piece, bad):
                out = self.transform(block, rng)
                if first is None:
                    first = (keys[0], out[0].copy())
                produced += len(keys)
                for i, key in enumerate(keys):
                    # a copy: a row kept in the shuffle buffer must not keep its whole block alive
                    yield key, out[i].copy(), False
        need = plan.per_slot - produced
        if need <= 0:
            return
        if need == 1 and first is not None:
            yield first[0], first[1], True
            return
        sources = plan.pieces if produced else plan.pad_pieces
        while need > 0:
            got = 0
            for piece in sources:
                if piece.shard in bad:
                    continue
                for keys, block in self._blocks(piece, bad, report=False):
                    out = self.transform(block, rng)
                    for i, key in enumerate(keys[:need]):
                        yield key, out[i].copy(), True
                    got += min(len(keys), need)
                    need -= min(len(keys), need)
                    if need == 0:
                        return
            if got == 0:  # nothing readable at all: schema-shaped zeros keep the batch count equal
                warnings.warn(f"no readable samples for padding in {self.manifest.url}; yielding {need} zero "
                              "samples marked pad=True", ShardSkippedWarning, stacklevel=2)
                zero = self.transform(np.zeros((need, *self._field.shape), dtype=self._field.dtype), rng)
                for i in range(need):
                    yield "__zero__", zero[i].copy(), True
                return

    # -- reading one piece of one shard

    def _blocks(self, piece: Piece, bad: set[int], report: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
        """The piece's stored samples as (keys, array (m, *shape)) blocks.

        A missing or corrupt shard raises ShardError naming it and the manifest, or with
        ``on_corrupt="skip"`` is skipped (warned about and counted once, unless ``report`` is off).
        """
        info = self.manifest.shards[piece.shard]
        url = self.manifest.shard_url(info)
        try:
            for keys, raw in self._piece_blocks(url, info, piece):
                block = raw.view(self._field.dtype).reshape(len(keys), *self._field.shape)
                if self._limit is not None and block.size and block.max() >= self._limit:
                    row = int(np.argmax(block.reshape(len(keys), -1).max(axis=1) >= self._limit))
                    raise _Corrupt(f"sample {keys[row]!r} holds {int(block[row].max())}, outside 0..{self._limit - 1}")
                yield keys, block
        except StorageError:
            raise  # an unreachable endpoint or bad credentials are not a corrupt shard
        except (FileNotFoundError, _Corrupt, tarfile.TarError, ValueError, KeyError, EOFError, OSError) as err:
            reason = "it is missing" if isinstance(err, FileNotFoundError) else _reason(err)
            bad.add(piece.shard)
            if self.on_corrupt == "raise":
                raise ShardError(url, self.manifest.url, reason) from None
            if report:
                self._skipped[piece.shard] = 1
                warnings.warn(f"skipping shard {url} of {self.manifest.url}: {reason}", ShardSkippedWarning, stacklevel=2)

    def _piece_blocks(self, url: str, info, piece: Piece) -> Iterator[tuple[list[str], np.ndarray]]:
        """Raw (keys, uint8 (m, member bytes)) blocks: the fixed-layout fast path when the manifest
        promises it, falling back to webdataset's general tar iterator from wherever it stopped."""
        data = None
        if self.verify_sha256:
            data = storage.read_bytes(url)
            digest = hashlib.sha256(data).hexdigest()
            if digest != info.sha256:
                raise _Corrupt(f"sha256 {digest} differs from the manifest's {info.sha256}")
        done = 0
        if self._record is not None:
            try:
                for keys, raw in self._fixed_blocks(url, piece, data):
                    yield keys, raw
                    done += len(keys)
                return
            except LayoutError:
                pass  # not the promised layout here: let the general reader read it or say what is wrong
        rest = Piece(piece.shard, piece.skip + done, piece.take - done)
        yield from self._general_blocks(url, info, rest, data)

    def _fixed_blocks(self, url: str, piece: Piece, data: bytes | None) -> Iterator[tuple[list[str], np.ndarray]]:
        record = self._record
        per_block = max(1, min(piece.take, READ_BLOCK_BYTES // record))
        start, length = piece.skip * record, piece.take * record
        stream = io.BytesIO(data[start:start + length]) if data is not None else storage.open_range(url, start, length)
        with closing(stream):
            left = piece.take
            while left > 0:
                m = min(per_block, left)
                buf = stream.read(m * record)
                yield parse_records(buf, count=m, member_bytes=self._field.nbytes, suffix=self._member,
                                    key_chars=self._key_chars)
                left -= m

    def _general_blocks(self, url: str, info, piece: Piece, data: bytes | None) -> Iterator[tuple[list[str], np.ndarray]]:
        """Any webdataset tar, member by member through webdataset's iterators (``tarfile``)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        end = piece.skip + piece.take
        per_block = max(1, READ_BLOCK_BYTES // max(self._field.nbytes, 1))
        keys: list[str] = []
        rows: list[np.ndarray] = []
        stream = io.BytesIO(data) if data is not None else storage.open_read(url)
        with closing(stream):
            n = 0
            for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                if n >= piece.skip:
                    payload = sample.get(self._member)
                    if payload is None:
                        raise _Corrupt(f"sample {sample.get('__key__')!r} has no member {self._member!r}")
                    if len(payload) != self._field.nbytes:
                        raise _Corrupt(f"sample {sample['__key__']!r} has {len(payload)} bytes, the schema "
                                       f"says {self._field.nbytes}")
                    keys.append(sample["__key__"])
                    rows.append(np.frombuffer(payload, dtype=np.uint8))
                    if len(keys) == per_block:
                        yield keys, np.stack(rows)
                        keys, rows = [], []
                n += 1
                if n >= end:
                    break
            if keys:
                yield keys, np.stack(rows)
            if n < end:
                raise _Corrupt(f"it holds {n} samples, the manifest lists {info.num_samples}")


def _reason(err: BaseException) -> str:
    """A short reason, without the stream objects webdataset appends to exception args."""
    text = str(err.args[0]) if err.args else type(err).__name__
    text = text.split(" @ <", 1)[0]
    return text if isinstance(err, _Corrupt) else f"{type(err).__name__}: {text}"


def shard_dataset(manifest_url: str | Manifest, *, rank: int, world_size: int, data_kind: str | None = None,
                  num_classes: int | None = None, shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                  seed: int = 0, epoch: int = 0, verify_sha256: bool = False, on_corrupt: str = "raise") -> ShardDataset:
    """The IterableDataset of rank ``rank`` of ``world_size`` over the shard set of ``manifest_url``.

    Items are ``{"__key__": str, "x": Tensor, "pad": bool}`` with ``x`` in bfn_core's convention
    for (``data_kind``, ``num_classes``), by default the manifest's ``default_read``.  Under a
    DataLoader the rank's share is split across its workers (``get_worker_info``).  Every worker of
    every rank yields the same number of samples per epoch: see the module docstring.

    ``verify_sha256`` downloads each shard whole and checks it against the manifest before use.
    A missing or corrupt shard raises :class:`ShardError` (naming the shard and the manifest), or
    with ``on_corrupt="skip"`` is skipped with a :class:`ShardSkippedWarning` and listed in
    ``dataset.skipped_shards``.
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
                        on_corrupt=on_corrupt)


# ----------------------------------------------------------------------------------------- loader

def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"x": (B, *shape), "__key__": [B keys], "pad": bool (B,)}``."""
    return {
        "x": torch.stack([it["x"] for it in items]),
        "__key__": [it["__key__"] for it in items],
        "pad": torch.tensor([it["pad"] for it in items], dtype=torch.bool),
    }


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
                prefetch_factor: int | None = 2) -> tuple[ShardLoader, int]:
    """Batches for rank ``rank`` and the number of batches per epoch that *every* rank yields.

    Batches are ``{"x": Tensor (B, *shape), "__key__": list[str], "pad": BoolTensor (B,)}``.
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
                            epoch=epoch, verify_sha256=verify_sha256, on_corrupt=on_corrupt)
    loader = ShardLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                         pin_memory=pin_memory, prefetch_factor=prefetch_factor)
    return loader, loader.num_batches
