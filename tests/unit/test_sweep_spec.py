"""Sweep specs: what a trial's config becomes, and every bad spec refused before Ray starts."""
import math
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import load_config, parse_overrides
from pipelines.errors import PipelineError
from sweeps.results import best_row, results_table, save_plots, save_table, trial_status, write_best_config
from sweeps.pareto import pareto_mask
from sweeps.results import save_pareto
from sweeps.sampler_spec import is_sampler_spec, load_sampler_spec
from sweeps.sampler_sweep import recommend
from sweeps.spec import check_spec, load_spec, trial_config, trial_metrics

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "sweeps" / "digits_sigma.yaml"


@pytest.mark.parametrize("spec", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_pass_their_checks(spec):
    if is_sampler_spec(spec):
        assert load_sampler_spec(spec).samplers
        return
    base = check_spec(load_spec(spec))
    assert base.training.checkpoint_every == base.training.val_every  # every report carries the objective


def test_trial_config_sets_the_sampled_values_and_objective_step_counts_are_validated():
    spec = load_spec(DIGITS)
    base = spec.base_config()
    cfg = trial_config(base, {"flow.sigma_1": 0.05, "loss.n_steps": None})
    assert cfg.flow.sigma_1 == 0.05 and cfg.loss.n_steps is None
    assert cfg.training.val_steps == [None, 25, 100]  # the same curve on every trial
    assert trial_config(base, {"loss.n_steps": 20}).loss.n_steps == 20
    # a step count only the objective names is added to every trial's validation
    spec = load_spec(DIGITS, parse_overrides(["set.training.val_steps=[null]", "objective.metric=val_bits_n7"]))
    cfg = trial_config(check_spec(spec), {})
    assert cfg.training.val_steps == [None, 7] and "val_bits_n7" in trial_metrics(cfg)


MIXED = "would rank trials measured at different step counts"


@pytest.mark.parametrize("overrides, needle", [
    (["space.eval_steps={choice: [null, 25, 100]}"], MIXED),
    (["objective.metric=val_bits_{eval_steps}"], MIXED),
    (["objective.metric=loss"], MIXED),  # the spec searches loss.n_steps: L^n of different n
])
def test_specs_that_mix_metrics_are_refused_saying_why(overrides, needle):
    with pytest.raises(PipelineError) as err:
        check_spec(load_spec(DIGITS, parse_overrides(overrides)))
    assert needle in str(err.value) and "objective.metric: val_bits_" in str(err.value)


PARETO = REPO / "configs" / "sweeps" / "digits_pareto.yaml"


def test_multi_objective_specs():
    spec = load_spec(PARETO)
    assert [g.metric for g in spec.goals] == ["val_bits_n10", "val_bits_inf"] and spec.sampler == "nsga2"
    assert not spec.early_stopping
    base = check_spec(spec)
    assert {None, 10} <= set(base.training.val_steps)
    for overrides, needle in [(["asha={grace_period: 100}"], "multi-objective sweep runs every trial"),
                              (["objectives=[{metric: val_bits_inf}]"], "two or more"),
                              (["objective={metric: val_bits_inf}"], "not both"),
                              (["objectives=[{metric: val_bits_n10}, {metric: val_bits_foo}]"], "never reported")]:
        with pytest.raises(PipelineError) as err:
            check_spec(load_spec(PARETO, parse_overrides(overrides)))
        assert needle in str(err.value), (overrides, str(err.value))


def test_pareto_mask_keeps_exactly_the_undominated_points():
    values = [[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [float("nan"), 0]]
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, True, False, True, True, False]
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, False, True, True, False, False]
    assert pareto_mask([[10, 0.9], [20, 0.95], [40, 0.94]], ["min", "max"]).tolist() == [True, True, False]


def test_multi_objective_results_front(tmp_path):
    spec = load_spec(PARETO)
    rows = [{"trial_id": t, "status": st, "run_id": f"r{t}", "param.flow.sigma_1": 0.01, "param.loss.n_steps": None,
             "objective": a, "metric": "val_bits_n10", "steps": 300, "val_bits_inf": b}
            for t, st, a, b in [("a", "completed", 3.0, 1.0), ("b", "completed", 2.0, 2.0), ("c", "completed", 3.5, 2.5),
                                ("d", "failed", 1.0, 0.5)]]
    table = results_table(rows, spec)
    front, files = save_pareto(table, spec, tmp_path)
    assert sorted(front["trial_id"]) == ["a", "b"]  # c is dominated; a failed trial is never on the front
    assert files[1].read_bytes()[:4] == b"\x89PNG" and pd.read_csv(files[0]).shape[0] == 2


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
    (["space.training.lr={choice: [0.1]}"], "not a field"),
    (["space.optimizer.lr={loguniform: [0.0, 0.1]}"], "low > 0"),
    (["space.training.batch_size={choice: [16, 0]}"], "training.batch_size"),
    (["objective.metric=val_bits_foo"], "never reported"),
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
         "param.loss.n_steps": None, "objective": 2.5, "metric": "val_bits_n25", "steps": 400},
        {"trial_id": "b", "status": trial_status(None, 100, 400), "run_id": "r2", "param.flow.sigma_1": 0.2,
         "param.loss.n_steps": 20, "objective": 2.1, "metric": "val_bits_n25", "steps": 100},
        {"trial_id": "c", "status": trial_status("boom", 50, 400), "run_id": "r3", "param.flow.sigma_1": 0.002,
         "param.loss.n_steps": 100, "objective": math.nan, "metric": "val_bits_n25", "steps": 50},
        {"trial_id": "d", "status": "completed", "run_id": "r4", "param.flow.sigma_1": 0.05,
         "param.loss.n_steps": None, "objective": 2.3, "metric": "val_bits_n25", "steps": 400},
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


SAMPLERS = REPO / "configs" / "sweeps" / "digits_samplers.yaml"


@pytest.mark.parametrize("overrides, needle", [
    ({"samplers": ["euler"]}, "sampler must be one of"),
    ({"grids": ["cosine"]}, "grid must be one of"),
    ({"steps": [10, 0]}, "step counts must be >= 1"),
    ({"final": "median"}, "final must be one of"),
    ({"n_samples": 1}, "n_samples"),
    ({"samples": 3}, "samples"),
])
def test_bad_sampler_specs_are_refused(overrides, needle):
    with pytest.raises(PipelineError) as err:
        load_sampler_spec(SAMPLERS, overrides)
    assert needle in str(err.value) and "digits_samplers.yaml" in str(err.value), str(err.value)


def test_recommendation_is_the_fewest_nfe_within_tolerance_of_the_best():
    rows = [("bfn", 100, 100, 1.00, 0.9), ("bfn", 10, 10, 3.00, 0.1), ("ode2", 10, 10, 1.04, 0.1),
            ("ode2", 5, 5, 1.20, 0.05), ("sde2", 50, 50, 0.98, 0.5)]
    table = pd.DataFrame([{"trial_id": f"t{i}", "status": "completed", "sampler": s, "grid": "default", "steps": st, "nfe": n,
                           "quality": q, "seconds_per_sample": sec, "headline": "fd", "mode": "min"}
                          for i, (s, st, n, q, sec) in enumerate(rows)])
    pick = recommend(table, 0.07)
    assert (pick["sampler"], pick["nfe"]) == ("ode2", 10)  # 1.04 <= 0.98 * 1.07; 1.20 is not
    assert recommend(table, 0.0)["sampler"] == "sde2"
    table["mode"], table["quality"] = "max", -table["quality"]
    assert recommend(table, 0.07)["sampler"] == "ode2"
    assert recommend(table.assign(status="failed"), 0.1) is None
