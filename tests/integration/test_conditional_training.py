"""Class-conditional training from labelled shards on the two-node cluster: the labels reach the loss
(with label dropout), validation and evaluation measure -ln p(x | y), the logged model is conditional
and samples the class asked for; a conditional config on shards without labels is refused in one line."""
from __future__ import annotations

import pytest
import torch

from tiny import tiny_digits_config

pytestmark = pytest.mark.integration

CONDITIONAL = {"conditioning.num_classes": 10, "conditioning.label_dropout": 0.2, "training.num_samples": 10}


def test_a_conditional_model_trains_on_the_shards_labels(ray_two_nodes, tracked, digits_shards, tmp_path, capsys):
    import mlflow

    from pipelines.evaluation import evaluate
    from pipelines.model_store import load_model
    from pipelines.training import train

    outcome = train(tiny_digits_config(digits_shards, tmp_path, **CONDITIONAL))
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["conditioning.num_classes"] == "10" and "val_bits_inf" in run.data.metrics

    loaded = load_model(outcome.run_id)
    assert loaded.bfn.num_classes == 10 and loaded.config["conditioning"]["label_dropout"] == 0.2
    g = torch.Generator().manual_seed(0)
    for space in ("output", "params"):
        x = loaded.bfn.sample((4, 8, 8, 1), 5, generator=g, y=3, guidance=2.0, guidance_space=space)
        assert x.shape == (4, 8, 8, 1) and torch.isfinite(x).all()

    row = evaluate(outcome.run_id, steps=[None], repeats=1, batch_size=64).table.row(None)
    assert row.label == "inf" and row.bits_per_dim > 0

    _guidance_sweep(outcome.run_id, ray_two_nodes.address, capsys)


def _guidance_sweep(run_id: str, address: str, capsys) -> None:
    """A sampler sweep with guidance axes on the conditional model, registered: one trial per point (w = 0 once),
    class accuracy beside quality in every nested run, the class-accuracy front, a guided recommendation set on
    the version and shown by `bfn models show`."""
    import mlflow

    from bfn_platform.cli import main
    from pipelines.model_store import register_version
    from pipelines.names import TAG_MODEL_ID
    from pipelines.sampling import parse_classes
    from sweeps.sampler_spec import SamplerSweepSpec
    from sweeps.sampler_sweep import run_sampler_sweep

    assert parse_classes("all", 10) == list(range(10))
    spec = SamplerSweepSpec.model_validate({
        "name": "guided", "kind": "sampler", "model": "models:/digits-conditional/1", "samplers": ["ode2"], "steps": [2], "classes": "all",
        "guidance": [0, 2], "guidance_spaces": ["output", "params"], "n_samples": 20, "batch_size": 20,
        "tolerance": 10.0, "min_class_accuracy": 0.0, "concurrent": 3})
    spec.check()
    client = mlflow.MlflowClient()
    register_version("digits-conditional", run_id, client.get_run(run_id).data.tags[TAG_MODEL_ID])
    said: list[str] = []
    outcome = run_sampler_sweep(spec, ray_address=address, say=said.append)
    table = outcome.table
    assert sorted(zip(table["guidance"], table["guidance_space"])) == [(0.0, "output"), (2.0, "output"), (2.0, "params")]
    assert (table["status"] == "completed").all() and table["class_accuracy"].between(0, 1).all(), table.to_string()
    for child in table["run_id"]:
        run = client.get_run(child)
        assert {"class_accuracy", "fd_digits", "nfe"} <= set(run.data.metrics) and "guidance" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id, "results")}
    assert "results/pareto_class_accuracy.png" in artifacts
    rec = outcome.recommended
    assert rec["guidance"] in (0.0, 2.0) and "class_accuracy=" in rec["quality"]
    assert client.get_run(outcome.parent_run_id).data.tags["bfn.recommended.guidance"] == str(rec["guidance"])
    assert any("guidance" in line for line in said)
    tags = client.get_model_version("digits-conditional", "1").tags
    assert tags["bfn.recommended.guidance"] == str(rec["guidance"])
    capsys.readouterr()
    assert main(["models", "show", "digits-conditional"]) == 0
    assert f"guidance {rec['guidance']} ({rec['guidance_space']})" in capsys.readouterr().out


def test_a_conditional_config_needs_labelled_shards(tmp_path):
    from pipelines.data.writer import write_shards
    from pipelines.prepare import data_report

    root = tmp_path / "digits"
    write_shards("digits", "train", str(root), shard_size=500, labels=False)
    cfg = tiny_digits_config(root, tmp_path, **{**CONDITIONAL, "data.val": None, "data.test": None})
    problems = [c.problem for c in data_report(cfg, splits=("train",)).checks if not c.ok]
    assert len(problems) == 1 and "has no class labels" in problems[0] and "bfn data shard digits" in problems[0]
