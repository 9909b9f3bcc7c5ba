"""Benchmark of the shard readers (not a test): samples per second from local disk and from S3.

For three data shapes (MNIST read binarised, CIFAR-10 read with K = 256 bins, text8 chunks) it
writes the same shards to a temporary folder and to a loopback S3-compatible server (moto), then
measures, in this one run:

  * raw tar: the same local shard bytes iterated with Python's ``tarfile`` alone (every member
    read, nothing decoded): the reference a reader cannot beat;
  * the reader (``pipelines.data.reader.shard_dataset``) in one process, as one DataLoader worker
    runs it: tar parsing, decoding, the read-time transform (fresh binarisation, bin centres),
    tensors, and a shuffle buffer of 1000; from local disk and from S3;
  * what one training worker consumes: ``train_step_samples_per_second()`` of bench/core.py for
    the same reference models.

Targets: reader (local) >= 0.8 x raw tar, and reader >= 10 x training consumption.
Data are random values of the real shapes (no download).  Run: ``python bench/data.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pipelines.data.localserver import LocalS3Server  # noqa: E402
from pipelines.data.manifest import Manifest  # noqa: E402
from pipelines.data.reader import shard_dataset  # noqa: E402
from pipelines.data.sources import CIFAR10, MNIST, ArraySource, Text8  # noqa: E402
from pipelines.data.writer import write_shards  # noqa: E402

# name (as in bench/core.py) -> (the real source whose schema and default read we borrow, samples)
SETS = {"binarised_mnist": (MNIST(), 20000), "cifar10_256": (CIFAR10(), 10000), "text8": (Text8(), 20000)}


def fake_source(name: str, real, n: int) -> ArraySource:
    rng = np.random.default_rng(0)
    field = real.field
    data = rng.integers(0, field.num_classes, (n, *field.shape), dtype=np.uint8)
    return ArraySource(name, {"train": data}, field, real.default_read)


def raw_tar_rate(paths: list[str]) -> float:
    """Samples/s of tarfile alone over the shard files (stream mode, as webdataset reads them)."""
    t0 = time.perf_counter()
    n = 0
    for path in paths:
        with open(path, "rb", buffering=1 << 20) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                tar.extractfile(member).read()
                n += 1
    return n / (time.perf_counter() - t0)


def reader_rate(manifest: Manifest) -> float:
    ds = shard_dataset(manifest, rank=0, world_size=1, seed=0, shuffle=True, shuffle_buffer=1000)
    t0 = time.perf_counter()
    n = 0
    for item in ds:
        n += 1
    assert n == manifest.num_samples and item["x"].shape == tuple(manifest.field.shape)
    return n / (time.perf_counter() - t0)


def median_rate(fn, repeats: int) -> float:
    fn()  # warm-up: page cache, imports, connection pool
    return statistics.median(fn() for _ in range(repeats))


def consumption(args) -> tuple[dict[str, float], str]:
    if args.skip_training:
        return {}, "skipped (--skip-training)"
    try:
        from core import train_step_samples_per_second
    except ImportError as err:  # bench/core.py missing: say so instead of failing
        return {}, f"unavailable: bench/core.py could not be imported ({err})"
    return train_step_samples_per_second(), "bench/core.py train_step_samples_per_second()"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true", help="do not measure training consumption")
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bfn-bench-data-") as tmp, LocalS3Server() as s3:
        os.environ.update(s3.env)
        bucket = s3.make_bucket("bench")
        for name, (real, n) in SETS.items():
            source = fake_source(name, real, n)
            local = write_shards(source, "train", tmp + f"/{name}", seed=0)
            remote = write_shards(source, "train", f"{bucket}/{name}", seed=0)
            assert [s.sha256 for s in local.shards] == [s.sha256 for s in remote.shards]
            paths = [local.shard_url(s) for s in local.shards]
            results[name] = {
                "samples": local.num_samples,
                "read": local.default_read.label(),
                "mb": sum(s.bytes for s in local.shards) / 1e6,
                "raw": median_rate(lambda: raw_tar_rate(paths), args.repeats),
                "local": median_rate(lambda: reader_rate(local), args.repeats),
                "s3": median_rate(lambda: reader_rate(remote), args.repeats),
            }
    rates, how = consumption(args)

    print(f"shards of 1000 samples, one reader process, median of {args.repeats}; training consumption: {how}\n")
    header = (f"{'data set':<16}{'read as':<18}{'samples':>8}{'MB':>7}{'raw tar/s':>11}{'local/s':>10}"
              f"{'local/raw':>10}{'S3/s':>10}{'S3/raw':>8}{'train/s':>9}{'local/train':>12}{'S3/train':>9}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for name, r in results.items():
        train = rates.get(name)
        local_ratio, s3_ratio = r["local"] / r["raw"], r["s3"] / r["raw"]
        cols = (f"{name:<16}{r['read']:<18}{r['samples']:>8}{r['mb']:>7.1f}{r['raw']:>11.0f}{r['local']:>10.0f}"
                f"{local_ratio:>10.2f}{r['s3']:>10.0f}{s3_ratio:>8.2f}")
        if train:
            cols += f"{train:>9.0f}{r['local'] / train:>12.0f}{r['s3'] / train:>9.0f}"
            verdicts.append((name, "reader >= 10 x training", min(r["local"], r["s3"]) / train >= 10))
        print(cols)
        verdicts.append((name, "local reader >= 0.8 x raw tar", local_ratio >= 0.8))
    print()
    for name, target, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {target}")


if __name__ == "__main__":
    main()
