"""Likelihood evaluation of trained models on test shards, logged to their MLflow run.

One process evaluates on its device (a GPU when there is one), in batches. With ``workers`` the test
shards are split over that many Ray tasks (a GPU each when evaluating on GPUs): each reads its own
share (padding rows dropped, so every example counts exactly once), and their running sums are
merged into one table, the same as a single pass would give up to Monte Carlo noise. Progress comes
back from the tasks as they go, so a paper-scale evaluation submitted as a Ray job shows it too.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from bfn_core import LikelihoodAccumulator, LikelihoodTable, accumulate_likelihood, steps_label
from pipelines.errors import PipelineError
from pipelines.seeds import derive_seed
from pipelines.names import ENV_MLFLOW_TRACKING_URI, TAG_MODEL_ID, TAG_TEST_MANIFEST, TAG_TEST_SHA, test_metric, test_se_metric

DEVICES = ("auto", "cpu", "cuda")
ProgressFn = Callable[[int], None]  # told of k more test examples evaluated


@dataclass
class EvalOutcome:
    table: LikelihoodTable
    run_id: str | None
    manifest: str
    artifacts: list[str] = field(default_factory=list)


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise PipelineError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")


def check_precision(precision: str) -> None:
    from pipelines.acceleration import PRECISIONS

    if precision not in PRECISIONS:
        raise PipelineError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def resolve_device(device: str) -> torch.device:
    """'auto' is the GPU when this process sees one, else the CPU; 'cuda' without a GPU is an error."""
    check_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda, but this machine has no usable GPU: use --device cpu or auto")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def _share(bfn, config: dict, manifest: str, steps, repeats: int, batch_size: int, rank: int, world: int, seed: int,
           device: torch.device, precision: str, on_progress: ProgressFn | None = None) -> LikelihoodAccumulator:
    """Accumulate the bound over one share of the test shards (padding rows dropped) on `device`, the
    network in `precision` and compiled as the model's config says (auto: on GPU). A conditional model
    (a `conditioning` block in its config) is evaluated on the shards' labels: the bound on -ln p(x | y)."""
    from pipelines.acceleration import Acceleration, configure_backends
    from pipelines.data.reader import evaluation_batches

    data = config["data"]
    batches = evaluation_batches(manifest, batch_size=batch_size, rank=rank, world_size=world, data_kind=data["kind"],
                                 num_classes=data.get("num_classes"), device=device, seed=seed,
                                 verify_sha256=data.get("verify_sha256", True), labels=bool(config.get("conditioning")))
    accel = Acceleration.resolve(device, precision, config.get("training", {}).get("compile", "auto"))
    configure_backends(device)
    bfn = accel.prepare(bfn.eval())
    generator = torch.Generator(device=device).manual_seed(derive_seed("evaluation-noise", seed, rank))
    with accel.autocast():
        return accumulate_likelihood(bfn, batches, LikelihoodAccumulator(list(steps), n_repeats=repeats),
                                     generator=generator, progress=on_progress)


def _remote_share(model_ref: str, tracking_uri: str | None, manifest: str, steps, repeats, batch_size, rank, world,
                  seed, use_gpu: bool, precision: str, progress_queue):
    """One Ray task's share: load the model here, evaluate, report progress through the queue."""
    import os

    if tracking_uri:
        os.environ[ENV_MLFLOW_TRACKING_URI] = tracking_uri
    from pipelines.model_store import load_model
    from pipelines.tracking import setup_mlflow

    if not use_gpu:
        torch.set_num_threads(1)  # one CPU per task: threads beyond it only contend
    if not Path(model_ref).is_dir():
        setup_mlflow()
    loaded = load_model(model_ref)
    device = torch.device("cuda" if use_gpu else "cpu")
    return _share(loaded.bfn, loaded.config, manifest, steps, repeats, batch_size, rank, world, seed, device, precision,
                  on_progress=progress_queue.put_nowait)


def _evaluate_on_ray(ref: str, uri: str | None, manifest: str, steps, repeats: int, batch_size: int, workers: int,
                     seed: int, device: str, precision: str, on_progress: ProgressFn | None) -> LikelihoodAccumulator:
    import ray
    from ray.util.queue import Queue

    from pipelines.ray_runtime import init_ray

    init_ray(env={ENV_MLFLOW_TRACKING_URI: uri} if uri else None)
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "cuda" and gpus < 1:
        raise PipelineError("--device cuda, but the Ray cluster has no GPUs: use --device cpu or auto")
    use_gpu = device == "cuda" or (device == "auto" and gpus >= 1)
    queue = Queue()
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_remote_share)
    pending = [task.remote(ref, uri, manifest, steps, repeats, batch_size, r, workers, seed, use_gpu, precision, queue)
               for r in range(workers)]
    acc = LikelihoodAccumulator(list(steps), n_repeats=repeats)

    def drain():
        while not queue.empty():
            done = queue.get_nowait()
            if on_progress:
                on_progress(done)

    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            drain()
            for part in ray.get(ready):
                acc.merge(part)
        drain()  # a task's puts are acknowledged before it returns: nothing arrives after this
    finally:
        ray.kill(queue.actor)
    return acc


def evaluate(ref: str, *, steps: Sequence[int | None], repeats: int = 1, batch_size: int = 64, manifest: str | None = None,
             workers: int = 0, device: str = "auto", precision: str = "auto", seed: int = 0, log: bool = True,
             on_start: Callable[[int], None] | None = None, on_progress: ProgressFn | None = None,
             baseline: tuple[str, float] | None = None) -> EvalOutcome:
    """The bound L^n + L^r for each n in steps on the test set; logged to the model's run when known.

    `workers` > 0 splits the test set over that many Ray tasks; `precision` is the network's autocast
    (auto: bf16 on GPU, as in training; fp32 for figures to compare with float32 results);
    `on_start(total)` is told how many test examples there are before any is evaluated, `on_progress(k)`
    of k more evaluated; `baseline` (name, bits) is drawn as a reference line in the logged picture."""
    from pipelines.acceleration import Acceleration
    from pipelines.config import ExperimentConfig
    from pipelines.model_store import load_model
    from pipelines.prepare import prepare
    from pipelines.tracking import setup_mlflow

    if workers < 0:
        raise PipelineError(f"--workers must be >= 0, not {workers}")
    check_device(device)  # before any loading: a typo fails at once
    check_precision(precision)
    local_ckpt = Path(ref).is_dir()
    uri = None if local_ckpt else setup_mlflow()
    loaded = load_model(ref)
    cfg = ExperimentConfig.model_validate(loaded.config)
    if manifest:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test": manifest})})
    if not cfg.data.test:
        raise PipelineError(f"no test data for {ref}: its config has no data.test; pass --data MANIFEST_URL")
    prep = prepare(cfg, splits=("test",), storage=False)
    if prep.data_shape != tuple(loaded.data_shape):
        raise PipelineError(f"the test data {prep.cfg.data.test} holds examples of shape {list(prep.data_shape)}, "
                            f"the model {ref} takes {list(loaded.data_shape)}: pass the matching --data")
    manifest, info = prep.cfg.data.test, prep.manifests["test"]
    unit = info.bits_unit
    if on_start:
        on_start(info.num_samples)
    steps = list(steps)
    if workers == 0:
        dev = resolve_device(device)
        acc = _share(loaded.bfn, loaded.config, manifest, steps, repeats, batch_size, 0, 1, seed, dev, precision,
                     on_progress)
        precision = Acceleration.resolve(dev, precision).precision  # what ran, for the record
    else:
        model_ref = str(Path(ref).resolve()) if local_ckpt else ref
        acc = _evaluate_on_ray(model_ref, uri, manifest, steps, repeats, batch_size, workers, seed, device, precision,
                               on_progress)
    table = acc.table(unit)
    outcome = EvalOutcome(table, loaded.run_id, manifest)
    if log and loaded.run_id:
        outcome.artifacts = log_table(loaded.run_id, table, manifest, prep.digests["test"], precision, f"{info.dataset}-test",
                                      baseline)
    return outcome


def log_table(run_id: str, table: LikelihoodTable, manifest: str, digest: str, precision: str = "fp32",
              dataset: str | None = None, baseline: tuple[str, float] | None = None) -> list[str]:
    """Metrics test_bits_<n> and its standard errors (names.py), the same in nats, linked to the run's
    LoggedModel and the test dataset (so the logged-model page shows them); the table as an MLflow
    table (likelihood_table.json, one row per step count) and as likelihood.json / .parquet / .png
    artifacts (the JSON records the network's precision setting)."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.entities import Metric

    from pipelines.pictures import save_likelihood_plot

    client = mlflow.MlflowClient()
    now = int(__import__("time").time() * 1000)
    run = client.get_run(run_id)
    link = {"model_id": run.data.tags.get(TAG_MODEL_ID)}
    if dataset:
        link.update(dataset_name=dataset, dataset_digest=digest[:36])  # as the run's dataset inputs (pipelines.lineage)
    metrics = []
    for r in table.rows:
        label = steps_label(r.steps)
        values = {test_metric(label): r.bits_per_dim, test_metric(label, "nats"): r.nats,
                  test_se_metric(label): r.bits_se_examples, test_se_metric(label, unit="nats"): r.nats_se_examples,
                  test_se_metric(label, "mc"): r.bits_se_mc, test_se_metric(label, "mc", "nats"): r.nats_se_mc}
        metrics += [Metric(k, v, now, 0, **link) for k, v in values.items() if v is not None]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, TAG_TEST_SHA, digest)
    client.set_tag(run_id, TAG_TEST_MANIFEST, manifest)
    data = dict(table.to_dict(), manifest=manifest, manifest_sha256=digest, network_precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "likelihood.json").write_text(json.dumps(data, indent=2))
        rows = data["rows"]
        client.log_table(run_id, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file="eval/likelihood_table.json")
        pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp / "likelihood.parquet")
        save_likelihood_plot(data, tmp / "likelihood.png", baseline=baseline,
                             title=f"{(dataset or 'test').removesuffix('-test')} test bound versus steps: run "
                                   f"{run.info.run_name or run_id[:8]} ({table.num_examples} examples)")
        for name in ("likelihood.json", "likelihood.parquet", "likelihood.png"):
            client.log_artifact(run_id, str(tmp / name), "eval")
    return ["eval/likelihood.json", "eval/likelihood.parquet", "eval/likelihood.png", "eval/likelihood_table.json"]
