"""The fixed record layout of the shards this package writes, and a vectorised parser for it.

Every shard written by ``writer.py`` is a plain ustar tar (readable by webdataset, ``tar`` and
``ray.data.read_webdataset``) in which every sample is the same run of regular members, ``KEY.x.DTYPE``
and, in a labelled set, ``KEY.y.int64`` after it, each member of the same size in every sample, with
keys of the same width.  So sample i starts at byte ``i * record`` where ``record`` is the sum over
its members of ``512 + member bytes rounded up to 512``: the reader can seek straight to a sample (or
ask S3 for a byte range) and check a whole block of headers at once with numpy, instead of going
member by member through Python's ``tarfile`` (about 30 us of header parsing per member, which
dominates small samples such as 784-byte MNIST images).  A label costs one more header and one
padded block per sample (1 KiB): the price of staying a plain tar that every tool reads.

Every header of a block is checked as ``tarfile`` would check it (ustar magic, regular-file type,
octal size, header checksum) plus the name pattern; any mismatch raises :class:`LayoutError`, and
the reader then re-reads that part through webdataset's general tar iterator, which either reads
it (a valid tar with another layout) or names the corruption precisely.
"""
from __future__ import annotations

import numpy as np

BLOCK = 512
USTAR_MAGIC = np.frombuffer(b"ustar\x00", dtype=np.uint8)
_POW8_11 = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_POW8_6 = 8 ** np.arange(5, -1, -1, dtype=np.int64)


class LayoutError(Exception):
    """The bytes are not a run of fixed-size records of the expected form."""


def record_bytes(member_bytes: int) -> int:
    """Bytes of one member: a 512-byte header plus the data padded to a multiple of 512."""
    return BLOCK + -(-member_bytes // BLOCK) * BLOCK


def sample_record_bytes(member_sizes: list[int]) -> int:
    """Bytes per sample: its members' records end to end (the manifest's ``layout.record_bytes``)."""
    return sum(record_bytes(n) for n in member_sizes)


def _octal(fields: np.ndarray, powers: np.ndarray) -> np.ndarray:
    digits = fields.astype(np.int64) - ord("0")
    if ((digits < 0) | (digits > 7)).any():
        raise LayoutError("a numeric header field is not octal")
    return digits @ powers


def _check_headers(head: np.ndarray, member_bytes: int, suffix: str, key_chars: int) -> None:
    """Raise LayoutError unless every row of ``head`` is a ustar header of ``KEY.suffix``, ``member_bytes`` long."""
    if not (head[:, 257:263] == USTAR_MAGIC).all():
        raise LayoutError("a header is not a ustar header")
    if not (head[:, 156] == ord("0")).all():
        raise LayoutError("a member is not a regular file")
    if not (_octal(head[:, 124:135], _POW8_11) == member_bytes).all():
        raise LayoutError(f"a member is not {member_bytes} bytes long")
    stored = _octal(head[:, 148:154], _POW8_6)
    computed = head.sum(axis=1, dtype=np.int64) - head[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    if not (stored == computed).all():
        raise LayoutError("a header checksum does not match")
    tail = np.frombuffer(("." + suffix).encode("ascii"), dtype=np.uint8)
    end = key_chars + len(tail)
    if end > 100 or not (head[:, key_chars:end] == tail).all() or head[:, end:100].any() or head[:, 345:500].any():
        raise LayoutError("a member name does not have the expected form")


def parse_records(buf: bytes, *, count: int, members: list[tuple[str, int]],
                  key_chars: int) -> tuple[list[str], list[np.ndarray]]:
    """``count`` samples of ``members`` [(suffix, member bytes), ...] in that order from ``buf`` ->
    (keys, [data (count, member bytes) uint8 per member, views of ``buf``])."""
    sizes = [record_bytes(n) for _, n in members]
    stride = sample_record_bytes([n for _, n in members])
    if count <= 0:
        return [], [np.empty((0, n), dtype=np.uint8) for _, n in members]
    if len(buf) < count * stride:
        raise LayoutError(f"{len(buf)} bytes hold fewer than {count} records of {stride}")
    rows = np.frombuffer(buf, dtype=np.uint8, count=count * stride).reshape(count, stride)
    out, offset, key_bytes = [], 0, None
    for (suffix, member_bytes), size in zip(members, sizes):
        head = rows[:, offset:offset + BLOCK]
        _check_headers(head, member_bytes, suffix, key_chars)
        if key_bytes is None:
            key_bytes = np.ascontiguousarray(head[:, :key_chars])
        elif not (head[:, :key_chars] == key_bytes).all():
            raise LayoutError("the members of a sample have different keys")
        out.append(rows[:, offset + BLOCK:offset + BLOCK + member_bytes])
        offset += size
    if ((key_bytes < ord("0")) | (key_bytes > ord("9"))).any():
        raise LayoutError("a key is not made of digits")
    text = key_bytes.tobytes().decode("ascii")
    keys = [text[i:i + key_chars] for i in range(0, len(text), key_chars)]
    return keys, out
