"""How an epoch of a shard set is shared out between ranks and DataLoader workers.

A module of its own because it is pure arithmetic on the manifest's sample counts: which samples
each worker reads and how many it yields, decided before anything is read, is what keeps the batch
counts of every rank equal (DDP hangs otherwise), and it is tested without reading a shard.

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
   every rank.
5. Corrupt or missing shards skipped with ``on_corrupt="skip"`` do not change the count either:
   the slot fills up to M by cycling through its readable samples again (marked ``pad=True``).

A shard on the boundary of two ranges is read by both slots, each only its own part.  Shuffling
mixes within a slot's range (shard order per epoch, then a shuffle buffer), so use many more shards
than slots.  Every random stream is named (pipelines.seeds) and depends on (seed, epoch), plus the
slot for what differs between slots.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator

from pipelines.errors import PipelineError
from pipelines.seeds import derive_seed, numpy_rng


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
    return [int(i) for i in numpy_rng("shard-order", seed, epoch).permutation(num_shards)]


def pieces_between(counts: list[int], order: list[int], start: int, stop: int) -> list[Piece]:
    """The pieces of shards holding positions ``start`` .. ``stop`` of the epoch laid end to end."""
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
        pad_pieces = pieces_between(counts, order, where, where + 1)
    return SlotPlan(tuple(pieces_between(counts, order, start, start + size)), size, per_slot, tuple(pad_pieces))


def samples_per_slot(num_samples: int, slots: int) -> int:
    """M = ceil(N / S): what every slot yields per epoch."""
    return -(-num_samples // slots)


def transform_rng(seed: int, epoch: int, slot: int):
    """The numpy generator of a slot's read-time draws (dynamic binarisation, random windows)."""
    return numpy_rng("read-transform", seed, epoch, slot)


def shuffle_buffer_rng(seed: int, epoch: int, slot: int) -> random.Random:
    """The generator of a slot's shuffle buffer."""
    return random.Random(derive_seed("shuffle-buffer", seed, epoch, slot))


def shuffled(items: Iterator[Any], size: int, rnd: random.Random) -> Iterator[Any]:
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
