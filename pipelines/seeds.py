"""Every random stream of the platform, named by what it is for.

A stream's seed is derived from its purpose (a short name such as "shard-order") and the integers
it depends on (the run's seed, the epoch, a rank, a step), by hashing them together. Streams with
different purposes never collide, whatever their integers, which magic salts (seed * 7919 + rank,
[seed, epoch, 0x0D3], ...) could not promise; and a reader sees at the call what a stream depends on.
"""
from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(purpose: str, *parts: int) -> int:
    """A 63-bit seed for the stream `purpose` given the integers it depends on."""
    digest = hashlib.sha256(purpose.encode("utf-8"))
    for part in parts:
        digest.update(int(part).to_bytes(16, "little", signed=True))
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def numpy_rng(purpose: str, *parts: int) -> np.random.Generator:
    """A numpy generator of the stream `purpose` (see derive_seed)."""
    return np.random.default_rng(derive_seed(purpose, *parts))
