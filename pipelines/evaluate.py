"""Likelihood evaluation of trained models on test shards, logged to their MLflow run.

Large test sets are split over Ray tasks (one share of the shards each); their running sums are
merged, so the table is the same as a single pass would give, up to Monte Carlo noise.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from bfn_core import LikelihoodAccumulator, LikelihoodTable, evaluate_likelihood, steps_label
from pipelines.errors import PipelineError
from pipelines.names import test_metric, test_se_metric

PARALLEL_THRESHOLD = 20000  # examples above which evaluation fans out over Ray by default
RUN_TAG_TEST_SHA = "bfn.eval.test_sha256"
RUN_TAG_TEST_MANIFEST = "bfn.eval.test_manifest"


@dataclass
class EvalOutcome:
    table: LikelihoodTable
    run_id: str | None
    manifest: str
    artifacts: list[str] = field(default_factory=list)


def _share(bfn, config: dict, manifest: str, steps, repeats: int, batch_size: int, rank: int, world: int, seed: int,
           on_progress: Callable[[int], None] | None = None) -> LikelihoodAccumulator:
    """Accumulate the bound over one share of the test shards (padding rows dropped)."""
    from pipelines.data.reader import make_loader

    data = config["data"]
    loader, _ = make_loader(manifest, batch_size=batch_size, rank=rank, world_size=world, num_workers=0,
                            data_kind=data["kind"], num_classes=data.get("num_classes"), seed=seed, epoch=0,
                            shuffle=False, shuffle_buffer=0)

    def batches():
        for batch in loader:
            x = batch["x"]
            if "pad" in batch:
                x = x[~batch["pad"]]
            if len(x):
                yield x

    acc = LikelihoodAccumulator(list(steps))
    generator = torch.Generator().manual_seed(seed * 1009 + rank)
    evaluate_likelihood(bfn, batches(), steps=steps, n_repeats=repeats, generator=generator, accumulator=acc,
                        progress=on_progress)
    return acc


def _remote_share(model_ref: str, tracking_uri: str | None, manifest: str, steps, repeats, batch_size, rank, world, seed):
    import os

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from pipelines.model_store import load_model
    from pipelines.tracking import setup_mlflow

    torch.set_num_threads(1)
    if not Path(model_ref).is_dir():
        setup_mlflow()
    loaded = load_model(model_ref)
    return _share(loaded.bfn, loaded.config, manifest, steps, repeats, batch_size, rank, world, seed)


def evaluate(ref: str, *, steps: Sequence[int | None], repeats: int = 1, batch_size: int = 64, manifest: str | None = None,
             workers: int = 0, seed: int = 0, log: bool = True,
             on_progress: Callable[[int], None] | None = None) -> EvalOutcome:
    """The bound L^n + L^r for each n in steps on the test set; logged to the model's run when known."""
    from pipelines.data.manifest import load_manifest
    from pipelines.train import manifest_digest
    from pipelines.model_store import load_model
    from pipelines.tracking import setup_mlflow

    local_ckpt = Path(ref).is_dir()
    uri = None if local_ckpt else setup_mlflow()
    loaded = load_model(ref)
    manifest = manifest or loaded.config["data"].get("test")
    if not manifest:
        raise PipelineError(f"no test data for {ref}: its config has no data.test; pass --data MANIFEST_URL")
    info = load_manifest(manifest)
    unit = "char" if info.dataset.startswith("text8") else "dim"
    n_examples = info.num_samples
    world = workers or (min(4, max(1, n_examples // PARALLEL_THRESHOLD)) if n_examples > PARALLEL_THRESHOLD else 1)
    steps = list(steps)
    if world == 1:
        acc = _share(loaded.bfn, loaded.config, manifest, steps, repeats, batch_size, 0, 1, seed, on_progress)
    else:
        import ray

        from pipelines.ray_runtime import init_ray

        init_ray(env={"MLFLOW_TRACKING_URI": uri} if uri else None)
        task = ray.remote(num_cpus=1)(_remote_share)
        refs = [task.remote(str(Path(ref).resolve()) if local_ckpt else ref, uri, manifest, steps, repeats,
                            batch_size, r, world, seed) for r in range(world)]
        acc = LikelihoodAccumulator(steps)
        for part in ray.get(refs):
            acc.merge(part)
            if on_progress:
                on_progress(part.count)
    table = acc.table(unit)
    outcome = EvalOutcome(table, loaded.run_id, manifest)
    if log and loaded.run_id:
        outcome.artifacts = log_table(loaded.run_id, table, manifest, manifest_digest(manifest))
    return outcome


def log_table(run_id: str, table: LikelihoodTable, manifest: str, digest: str) -> list[str]:
    """Metrics test_bits_<n> and its standard errors (names.py), the same in nats, plus likelihood.json /
    .parquet / .png artifacts."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.entities import Metric

    from pipelines.pictures import save_likelihood_plot

    client = mlflow.MlflowClient()
    now = int(__import__("time").time() * 1000)
    metrics = []
    for r in table.rows:
        label = steps_label(r.steps)
        values = {test_metric(label): r.bits_per_dim, test_metric(label, "nats"): r.nats,
                  test_se_metric(label): r.bits_se_examples, test_se_metric(label, unit="nats"): r.nats_se_examples,
                  test_se_metric(label, "mc"): r.bits_se_mc, test_se_metric(label, "mc", "nats"): r.nats_se_mc}
        metrics += [Metric(k, v, now, 0) for k, v in values.items() if v is not None]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, RUN_TAG_TEST_SHA, digest)
    client.set_tag(run_id, RUN_TAG_TEST_MANIFEST, manifest)
    data = dict(table.to_dict(), manifest=manifest, manifest_sha256=digest)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "likelihood.json").write_text(json.dumps(data, indent=2))
        rows = data["rows"]
        pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp / "likelihood.parquet")
        save_likelihood_plot(data, tmp / "likelihood.png", title=f"test bound versus steps ({table.num_examples} examples)")
        for name in ("likelihood.json", "likelihood.parquet", "likelihood.png"):
            client.log_artifact(run_id, str(tmp / name), "eval")
    return ["eval/likelihood.json", "eval/likelihood.parquet", "eval/likelihood.png"]
