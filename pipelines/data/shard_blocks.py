"""Read a piece of one shard (a run of its samples) as blocks of stored arrays, and say what is wrong
with a shard that cannot be read.

A module of its own so that the reader (reader.py) deals in samples, epochs and padding, while the
bytes (tar records, ranged reads, checksums) stay here.  Shards in the fixed record layout the
writer produces (``manifest.layout``, see tarlayout.py) are read in blocks of about 1 MiB: a seek
locally or one ranged GET on S3 per piece, all headers of a block checked at once.  Anything else
(or a block that fails the checks) goes through webdataset's member-by-member tar iterator, which
also gives the precise diagnosis of a corrupt shard.  ``verify_sha256`` fetches each shard whole
and checks it against the manifest first (labels included: they are bytes of the shard like any
other).  Stored values outside 0..K-1, grey levels and class labels alike, count as corruption too.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from contextlib import closing
from typing import Iterator

import numpy as np

from pipelines.data import storage
from pipelines.data.epoch_plan import Piece
from pipelines.data.manifest import Manifest, ShardInfo
from pipelines.data.schema import FieldSpec
from pipelines.data.tarlayout import LayoutError, parse_records, sample_record_bytes

READ_BLOCK_BYTES = 1 << 20  # samples are read, checked and transformed in blocks of about this size

# (keys, x (m, *shape) of the stored dtype, class labels int64 (m,) or None for an unlabelled set)
Block = tuple[list[str], np.ndarray, "np.ndarray | None"]
RawBlock = tuple[list[str], list[np.ndarray]]  # (keys, uint8 (m, member bytes) per stored field)


class CorruptShard(Exception):
    """A shard's content contradicts its manifest or schema; the message is the reason."""


# What reading a missing or damaged shard raises (besides CorruptShard): a truncated or garbled tar
# fails in tarfile, webdataset or numpy with any of these.
UNREADABLE_SHARD_ERRORS = (FileNotFoundError, CorruptShard, tarfile.TarError, ValueError, KeyError, EOFError, OSError)


def unreadable_reason(err: BaseException) -> str:
    """A short reason, without the stream objects webdataset appends to exception args."""
    if isinstance(err, FileNotFoundError):
        return "it is missing"
    text = str(err.args[0]) if err.args else type(err).__name__
    text = text.split(" @ <", 1)[0]
    return text if isinstance(err, CorruptShard) else f"{type(err).__name__}: {text}"


class BlockReader:
    """The stored samples of pieces of ``manifest``'s shards, as :data:`Block` s."""

    def __init__(self, manifest: Manifest, *, verify_sha256: bool):
        self.manifest, self.verify_sha256 = manifest, verify_sha256
        self.fields = [spec for _, spec in manifest.record_fields]  # x, then y in a labelled set
        self.members = [spec.member(name) for name, spec in manifest.record_fields]
        self.sizes = [(member, spec.nbytes) for member, spec in zip(self.members, self.fields)]
        layout = manifest.layout or {}
        fixed = (layout.get("tar") == "ustar"
                 and layout.get("record_bytes") == sample_record_bytes([f.nbytes for f in self.fields])
                 and layout.get("members", self.members[:1]) == self.members)
        self.record = int(layout["record_bytes"]) if fixed else None
        self.key_chars = int(layout.get("key_chars", 0))

    def blocks(self, piece: Piece) -> Iterator[Block]:
        """The piece's samples; a missing or damaged shard raises one of UNREADABLE_SHARD_ERRORS
        (StorageError for an unreachable store, which is not the shard's fault)."""
        info = self.manifest.shards[piece.shard]
        url = self.manifest.shard_url(info)
        for keys, raws in self._raw_blocks(url, info, piece):
            arrays = [_checked(keys, raw, spec) for raw, spec in zip(raws, self.fields)]
            yield keys, arrays[0], (arrays[1] if len(arrays) > 1 else None)

    def _raw_blocks(self, url: str, info: ShardInfo, piece: Piece) -> Iterator[RawBlock]:
        """Raw blocks: the fixed-layout fast path when the manifest promises it, falling back to
        webdataset's general tar iterator from wherever it stopped."""
        data = None
        if self.verify_sha256:
            data = storage.read_bytes(url)
            digest = hashlib.sha256(data).hexdigest()
            if digest != info.sha256:
                raise CorruptShard(f"sha256 {digest} differs from the manifest's {info.sha256}")
        done = 0
        if self.record is not None:
            try:
                for keys, raws in self._fixed_blocks(url, piece, data):
                    yield keys, raws
                    done += len(keys)
                return
            except LayoutError:
                pass  # not the promised layout here: let the general reader read it or say what is wrong
        rest = Piece(piece.shard, piece.skip + done, piece.take - done)
        yield from self._general_blocks(url, info, rest, data)

    def _fixed_blocks(self, url: str, piece: Piece, data: bytes | None) -> Iterator[RawBlock]:
        record = self.record
        per_block = max(1, min(piece.take, READ_BLOCK_BYTES // record))
        start, length = piece.skip * record, piece.take * record
        stream = io.BytesIO(data[start:start + length]) if data is not None else storage.open_range(url, start, length)
        with closing(stream):
            left = piece.take
            while left > 0:
                m = min(per_block, left)
                buf = stream.read(m * record)
                yield parse_records(buf, count=m, members=self.sizes, key_chars=self.key_chars)
                left -= m

    def _general_blocks(self, url: str, info: ShardInfo, piece: Piece, data: bytes | None) -> Iterator[RawBlock]:
        """Any webdataset tar, member by member through webdataset's iterators (``tarfile``)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        end = piece.skip + piece.take
        per_block = max(1, READ_BLOCK_BYTES // max(sum(f.nbytes for f in self.fields), 1))
        keys: list[str] = []
        rows: list[list[np.ndarray]] = []
        stream = io.BytesIO(data) if data is not None else storage.open_read(url)
        with closing(stream):
            n = 0
            for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                if n >= piece.skip:
                    keys.append(sample.get("__key__"))
                    rows.append([_payload(sample, member, spec) for member, spec in zip(self.members, self.fields)])
                    if len(keys) == per_block:
                        yield keys, [np.stack(col) for col in zip(*rows)]
                        keys, rows = [], []
                n += 1
                if n >= end:
                    break
            if keys:
                yield keys, [np.stack(col) for col in zip(*rows)]
            if n < end:
                raise CorruptShard(f"it holds {n} samples, the manifest lists {info.num_samples}")


def _payload(sample: dict, member: str, spec: FieldSpec) -> np.ndarray:
    """One member of a webdataset sample as uint8, checked against the schema's size."""
    payload = sample.get(member)
    if payload is None:
        raise CorruptShard(f"sample {sample.get('__key__')!r} has no member {member!r}")
    if len(payload) != spec.nbytes:
        raise CorruptShard(f"sample {sample['__key__']!r} has {len(payload)} bytes in {member!r}, the schema "
                           f"says {spec.nbytes}")
    return np.frombuffer(payload, dtype=np.uint8)


def _checked(keys: list[str], raw: np.ndarray, spec: FieldSpec) -> np.ndarray:
    """Raw uint8 rows -> (m, *shape) of the stored dtype; grey levels, classes and labels must lie in
    0..K-1: a flipped byte beyond it would index out of range (or condition on a class that is not there)."""
    block = raw.view(spec.dtype).reshape(len(keys), *spec.shape)
    kind = np.dtype(spec.dtype).kind
    if kind not in "iu" or not spec.num_classes or not block.size:
        return block
    signed = kind == "i"  # labels: a negative id is out of range too (uint8 needs no such pass)
    if block.max() < spec.num_classes and not (signed and block.min() < 0):
        return block  # the common case: one reduction over the whole block
    rows = block.reshape(len(keys), -1)
    high, low = rows.max(axis=1), rows.min(axis=1)
    row = int(np.argmax((high >= spec.num_classes) | (low < 0)))
    value = int(high[row] if high[row] >= spec.num_classes else low[row])
    raise CorruptShard(f"sample {keys[row]!r} holds {value}, outside 0..{spec.num_classes - 1}")


def verify_shards(manifest: Manifest, on_shard=None) -> int:
    """Check every shard of ``manifest`` against its sha256 and size, hashing as the bytes stream in
    (one read per shard, never held whole); raise ShardError naming the first bad one. Returns the
    number checked. ``on_shard(i, name)`` is told of each shard as it is done."""
    from pipelines.errors import ShardError

    for i, info in enumerate(manifest.shards):
        url = manifest.shard_url(info)
        digest, size = hashlib.sha256(), 0
        try:
            with closing(storage.open_read(url)) as stream:
                for chunk in iter(lambda: stream.read(READ_BLOCK_BYTES), b""):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise ShardError(url, manifest.url, "it is missing") from None
        if size != info.bytes:
            raise ShardError(url, manifest.url, f"it holds {size} bytes, the manifest says {info.bytes} (truncated or replaced)")
        if digest.hexdigest() != info.sha256:
            raise ShardError(url, manifest.url, f"sha256 {digest.hexdigest()} differs from the manifest's {info.sha256}")
        if on_shard is not None:
            on_shard(i, info.name)
    return len(manifest.shards)
