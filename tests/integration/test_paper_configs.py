"""Every paper config, as shipped, through the real path: raw files in the canonical formats -> `bfn data
shard` (train, val, test) -> `bfn train` on the two-node Ray cluster -> `bfn eval` -> `bfn sample`.

The raw files are tiny stand-ins written here in the real formats (MNIST idx, the CIFAR-10 python
tarball, text8.zip) and read by the real parsers. The configs are changed only in size (steps, batch,
width or depth, workers and their resources, validation repeats) and nothing structural: the test
checks its own overrides against that list. Data URLs are not overridden either: the configs name
${BFN_DATA_URL} (default $BFN_HOME/data), and the test sets BFN_DATA_URL.
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
SIZE_FIELDS = {  # what may change between the published size and a CPU test: nothing structural
    "training.steps", "training.batch_size", "training.micro_batch_size", "training.checkpoint_every",
    "training.val_every", "training.val_repeats", "training.log_every", "training.sample_steps",
    "training.num_samples", "model.width", "model.n_blocks", "model.depth", "model.blocks_per_level",
    "model.head_channels", "scaling.num_workers", "scaling.use_gpu", "scaling.cpus_per_worker",
    "data.loader_workers", "tracking.experiment",
}
LOOP = {"training.steps": 2, "training.checkpoint_every": 2, "training.val_every": 2, "training.val_repeats": 1,
        "training.log_every": 1, "training.sample_steps": 2, "training.num_samples": 2, "scaling.use_gpu": False,
        "scaling.cpus_per_worker": 1, "data.loader_workers": 0, "tracking.experiment": "paper-configs"}
CIFAR = {"model.width": 32, "model.n_blocks": 1, "training.batch_size": 4, "scaling.num_workers": 1}
SIZES = {
    "cifar10_discretised_256": {**CIFAR, "scaling.num_workers": 2},  # 2 workers x 2: DDP over both nodes
    "cifar10_discretised_16": CIFAR,
    "cifar10_continuous_256": CIFAR,
    "cifar10_continuous_16": CIFAR,
    "mnist_binarised": {"model.width": 16, "model.blocks_per_level": 1, "model.head_channels": 16,
                        "training.batch_size": 4, "scaling.num_workers": 1},
    # global batch 4 as 2 workers x 2 passes of 1: DDP with gradient accumulation (no_sync, no static
    # graph), as the paper config's 8 x 416 = 3328
    "text8": {"model.width": 48, "model.depth": 1, "training.batch_size": 4, "training.micro_batch_size": 1,
              "scaling.num_workers": 2},
}


def _idx(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return gzip.compress(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, rows, cols)) + images.tobytes())


def _idx1(labels: np.ndarray) -> bytes:
    """MNIST's idx1-ubyte label format, gzipped."""
    return gzip.compress(b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + np.asarray(labels, np.uint8).tobytes())


def _cifar_tarball(batches: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, images in batches.items():  # (N, 32, 32, 3) -> rows of 1024 R, 1024 G, 1024 B, as published
            rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
            blob = pickle.dumps({b"batch_label": name.encode(), b"data": rows, b"labels": [0] * len(images)}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _blobs(rng, n: int, size: int, channels: int) -> np.ndarray:
    """Images with some structure (a bright disc on a dark ground), so the shards hold plausible data."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i in range(n):
        cy, cx, r = rng.integers(6, size - 6, 2).tolist() + [rng.integers(3, 7)]
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        out[i] = np.where(disc, rng.integers(160, 256, channels), rng.integers(0, 60, channels)).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory):
    """Raw stand-ins in the canonical formats, sharded with `bfn data shard` into train, val and test."""
    from bfn_platform.cli import main

    raw = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(_idx(_blobs(rng, 40, 28, 1)[..., 0]))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(_idx(_blobs(rng, 6, 28, 1)[..., 0]))
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(_idx1(np.arange(40) % 10))  # arange: rng's stream unchanged
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx1(np.arange(6) % 10))
    batches = {f"data_batch_{i}": _blobs(rng, 8, 32, 3) for i in range(1, 6)}
    batches["test_batch"] = _blobs(rng, 6, 32, 3)
    (raw / "cifar-10-python.tar.gz").write_bytes(_cifar_tarball(batches))
    words = ["the", "of", "and", "one", "zero", "nine", "in", "a", "to", "is"]
    text = " ".join(words[i] for i in rng.integers(0, len(words), 4000))[: 256 * 40].encode()
    with zipfile.ZipFile(raw / "text8.zip", "w") as z:
        z.writestr("text8", text)
    root = tmp_path_factory.mktemp("data")
    for dataset in ("mnist", "cifar10", "text8"):
        for split in ("train", "val", "test"):
            code = main(["data", "shard", dataset, "--split", split, "--out", str(root / dataset), "--source-dir",
                         str(raw), "--shard-size", "8"])
            assert code == 0, (dataset, split)
    return root


def _sets(name: str) -> list[str]:
    changes = {**LOOP, **SIZES[name]}
    assert set(changes) <= SIZE_FIELDS, set(changes) - SIZE_FIELDS  # size only, never structure
    return [arg for k, v in changes.items() for arg in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]


@pytest.mark.filterwarnings("ignore::pipelines.data.download.ChecksumWarning")
@pytest.mark.parametrize("name", sorted(SIZES))
def test_paper_config_shards_trains_evaluates_and_samples(name, paper_data, ray_two_nodes, tracked, tmp_path,
                                                          monkeypatch, capsys):
    import mlflow

    from bfn_platform.cli import main

    monkeypatch.setenv("BFN_DATA_URL", str(paper_data))
    monkeypatch.setenv("BFN_STORAGE_PATH", str(tmp_path / "checkpoints"))
    config = str(PAPER / f"{name}.yaml")

    assert main(["check", config, *_sets(name), "--json"]) == 0  # the data is reachable and has the right shape
    report = json.loads(capsys.readouterr().out)
    assert all(d["ok"] for d in report["data"]) and len(report["data"]) == 3

    assert main(["train", config, *_sets(name), "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = mlflow.MlflowClient().get_run(outcome["run_id"])
    assert run.info.status == "FINISHED"
    assert {"bfn.model_id", "bfn.model_id.final", "bfn.model_id.best"} <= set(run.data.tags)
    assert run.data.tags["bfn.model_id"] == run.data.tags["bfn.model_id.best"]  # the paper configs' run_model
    assert "val_bits_inf" in run.data.metrics and np.isfinite(run.data.metrics["val_bits_inf"])

    assert main(["eval", outcome["run_id"], "--steps", "10,inf", "--repeats", "2", "--batch-size", "4",
                 "--device", "cpu", "--json"]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["label"] for r in table["rows"]] == ["n10", "inf"] and table["n_repeats"] == 2
    assert all(np.isfinite(r["bits_per_dim"]) and r["bits_se_mc"] is not None for r in table["rows"])
    assert table["unit"] == ("char" if name == "text8" else "dim")

    out = tmp_path / "samples"
    assert main(["sample", outcome["run_id"], "--n", "2", "--steps", "3", "--out", str(out), "--device", "cpu"]) == 0
    samples = np.load(out.with_suffix(".npy"))
    assert samples.shape == ((2, 256) if name == "text8" else (2, 28, 28, 1) if "mnist" in name else (2, 32, 32, 3))
