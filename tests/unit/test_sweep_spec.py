"""Sweep specs: what a trial's config becomes, and every bad spec refused before Ray starts."""
import math
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import load_config, parse_overrides
from pipelines.errors import PipelineError
from sweeps.results import best_row, results_table, save_plots, save_table, trial_status, write_best_config
from sweeps.spec import check_spec, load_spec, objective_metric, trial_config, trial_metrics

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "sweeps" / "digits_sigma.yaml"


@pytest.mark.parametrize("spec", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_pass_their_checks(spec):
    base = check_spec(load_spec(spec))
    assert base.training.checkpoint_every == base.training.val_every  # every report carries the objective


def test_trial_config_maps_the_special_dimensions():
    spec = load_spec(DIGITS)
    base = spec.base_config()
    cfg = trial_config(base, {"flow.sigma_1": 0.05, "loss.n_steps": None, "eval_steps": 25})
    assert cfg.flow.sigma_1 == 0.05 and cfg.loss.n_steps is None
    assert cfg.training.val_steps == [None, 25]
    cfg = trial_config(base, {"loss.n_steps": 20, "eval_steps": None})
    assert cfg.loss.n_steps == 20 and cfg.training.val_steps == [None]
    assert "val_bits_n25" in trial_metrics(trial_config(base, {"eval_steps": 25}))
    assert objective_metric("val_bits_{eval_steps}", {"eval_steps": 25}) == "val_bits_n25"
    assert objective_metric("val_bits_{eval_steps}", {"eval_steps": None}) == "val_bits_inf"
    assert objective_metric("loss", {}) == "loss"


def test_cli_style_overrides_reach_the_spec():
    spec = load_spec(DIGITS, parse_overrides(["set.training.steps=60", "space.optimizer.lr={loguniform: [0.0001, 0.01]}",
                                              "budget.trials=3"]))
    assert spec.base_config().training.steps == 60
    assert spec.space["optimizer.lr"].loguniform == (0.0001, 0.01) and spec.budget.trials == 3


@pytest.mark.parametrize("overrides, needle", [
    (["space.flow.sigma_1={loguniform: [0.001, 1.5]}"], "flow.sigma_1"),  # sigma_1 must stay in (0, 1)
    (["space.flow.sigma_1={loguniform: [0.1, 0.01]}"], "low < high"),
    (["space.flow.sigma_1={uniform: [0.0, 0.5]}"], "flow.sigma_1"),
    (["space.flow.beta_1={loguniform: [0.1, 3.0]}"], "no effect on discretised data"),
    (["space.loss.n_steps={choice: [null, 0]}"], "loss.n_steps"),
    (["space.eval_steps={uniform: [1, 100]}"], "eval_steps must be a choice"),
    (["space.training.lr={choice: [0.1]}"], "not a field"),
    (["space.optimizer.lr={loguniform: [0.0, 0.1]}"], "low > 0"),
    (["space.training.batch_size={choice: [16, 0]}"], "training.batch_size"),
    (["objective.metric=val_bits_n7"], "never reported"),
    (["objective.metric=val_bits_{steps}"], "placeholder"),
    (["set.data.val=null"], "no data.val"),
    (["asha.grace_period=1000"], "exceeds training.steps"),
    (["asha.grace_period=10"], "shorter than training.val_every"),
    (["budget.concurrent=0"], "budget.concurrent"),
    (["objective.mode=lowest"], "objective.mode"),
    (["name=has space"], "name"),
])
def test_bad_specs_are_refused_with_the_field_named(overrides, needle):
    with pytest.raises(PipelineError, match=None) as err:
        check_spec(load_spec(DIGITS, parse_overrides(overrides)))
    assert needle in str(err.value), str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(PipelineError, match="nope.yaml not found"):
        load_spec(tmp_path / "nope.yaml")
    spec = tmp_path / "s.yaml"
    spec.write_text(DIGITS.read_text().replace("../digits_discretised.yaml", "missing.yaml"))
    with pytest.raises(PipelineError, match="missing.yaml does not exist"):
        check_spec(load_spec(spec))


def _table():
    spec = load_spec(DIGITS)
    rows = [
        {"trial_id": "a", "status": trial_status(None, 400, 400), "run_id": "r1", "param.flow.sigma_1": 0.01,
         "param.loss.n_steps": None, "param.eval_steps": 25, "objective": 2.5, "metric": "val_bits_n25", "steps": 400},
        {"trial_id": "b", "status": trial_status(None, 100, 400), "run_id": "r2", "param.flow.sigma_1": 0.2,
         "param.loss.n_steps": 20, "param.eval_steps": None, "objective": 2.1, "metric": "val_bits_inf", "steps": 100},
        {"trial_id": "c", "status": trial_status("boom", 50, 400), "run_id": "r3", "param.flow.sigma_1": 0.002,
         "param.loss.n_steps": 100, "param.eval_steps": 100, "objective": math.nan, "metric": "val_bits_n100", "steps": 50},
        {"trial_id": "d", "status": "completed", "run_id": "r4", "param.flow.sigma_1": 0.05,
         "param.loss.n_steps": None, "param.eval_steps": None, "objective": 2.3, "metric": "val_bits_inf", "steps": 400},
    ]
    return spec, results_table(rows, spec)


def test_results_table_and_best_trial():
    spec, table = _table()
    assert list(table["trial_id"]) == ["b", "d", "a", "c"]  # best first, the failed trial last
    assert list(table["status"]) == ["stopped_early", "completed", "completed", "failed"]
    assert best_row(table)["trial_id"] == "d"  # a trial stopped early is not the best while one completed


def test_results_files_and_best_config_train_ready(tmp_path):
    spec, table = _table()
    files = save_table(table, tmp_path)
    assert pd.read_csv(files[0]).shape[0] == 4 and pd.read_parquet(files[1]).shape[0] == 4
    hist = {"a": pd.DataFrame({"step": [10, 20], "objective": [3.0, 2.5]})}
    pngs = save_plots(table, spec, tmp_path, hist)
    assert {p.name for p in pngs} == {"objective_vs_flow_sigma_1.png", "objective_vs_steps.png", "objective_curves.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    path = write_best_config(spec.base_config(), best_row(table), spec, "digits-sigma-x", tmp_path / "best.yaml")
    cfg = load_config(path)
    assert cfg.flow.sigma_1 == 0.05 and cfg.loss.n_steps is None and cfg.tracking.run_name == "digits-sigma-x-best"
