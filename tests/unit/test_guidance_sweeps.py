"""Guidance as a sweep axis: the point grid (w = 0 once), the sampler-sweep spec's classes / guidance /
guidance_spaces / min_class_accuracy, the recommendation under a class-accuracy floor, the metric names,
and `bfn eval --quality --class` on a tiny conditional checkpoint folder (no MLflow server, no Ray)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import PipelineError
from pipelines.quality_report import format_points, quality_metric_name
from pipelines.sample_quality import SamplerPoint, point_grid
from sweeps.sampler_spec import load_sampler_spec
from sweeps.sampler_sweep import point_name, recommend

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "sweeps" / "digits_guidance.yaml"


def test_point_grid_measures_no_guidance_once():
    grid = point_grid(["bfn", "ode2"], [10, 20], guidance=[0, 1, 2], spaces=["output", "params"])
    assert len(grid) == 2 * 2 * (1 + 2 * 2)
    settings = {(p["guidance"], p["guidance_space"]) for p in grid}
    assert settings == {(0.0, "output"), (1.0, "output"), (1.0, "params"), (2.0, "output"), (2.0, "params")}
    plain = point_grid(["bfn"], [5, 10], grids=[None, "logsnr"])
    assert plain == [{"sampler": "bfn", "steps": s, "grid": g} for g in (None, "logsnr") for s in (5, 10)]


def test_conditional_points_have_their_own_names():
    def point(w, space):
        return SamplerPoint("ode2", None, 20, 21, {"fd_digits": 3.0, "class_accuracy": 0.9}, "fd_digits", "min", 0.01, 10,
                            w, space)

    assert quality_metric_name("fd_digits", point(None, None)) == "quality_fd_digits_ode2_20"
    assert quality_metric_name("class_accuracy", point(2.0, "params")) == "quality_class_accuracy_ode2_20_w2_params"
    assert quality_metric_name("fd_digits", point(0.0, "output")) == "quality_fd_digits_ode2_20_w0"
    assert point(1.5, "output").label == "ode2 w1.5 output" and point(None, None).label == "ode2"
    assert point(0.0, "params").label == "ode2 w0"
    assert point_name({"sampler": "ode2", "steps": 20, "grid": None, "guidance": 1.0, "guidance_space": "params"}) \
        == "ode2-own-20-w1-params"
    text = format_points([point(0.0, "output"), point(2.0, "params")])
    assert "class acc" in text and "params" in text and "0.900" in text


def test_the_guidance_spec_lists_its_points():
    spec = load_sampler_spec(SPEC)
    assert spec.classes == "all" and spec.guidance and set(spec.guidance_spaces) == {"output", "params"}
    points = spec.points()
    zero = [p for p in points if p["guidance"] == 0]
    assert len(zero) == len(spec.samplers) * len(spec.steps)
    assert len(points) == len(zero) * (1 + 2 * (len(set(spec.guidance)) - 1))


@pytest.mark.parametrize("overrides, needle", [
    ({"classes": None}, "need classes"),
    ({"classes": None, "guidance": None, "min_class_accuracy": 0.9}, "need classes"),
    ({"guidance_spaces": ["logits"]}, "guidance_spaces"),
    ({"guidance": [1.0, math.inf]}, "finite"),
    ({"guidance": []}, "guidance"),
    ({"min_class_accuracy": 1.5}, "min_class_accuracy"),
])
def test_bad_guidance_specs_are_refused(overrides, needle):
    with pytest.raises(PipelineError) as err:
        load_sampler_spec(SPEC, overrides)
    assert needle in str(err.value) and "digits_guidance.yaml" in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_recommendation_honours_the_class_accuracy_floor():
    rows = [(0.0, "output", 21, 1.00, 0.50), (1.0, "output", 21, 1.10, 0.85), (2.0, "params", 21, 1.15, 0.95),
            (2.0, "params", 11, 1.40, 0.93)]
    table = pd.DataFrame([{"trial_id": f"t{i}", "status": "completed", "sampler": "ode2", "grid": "default",
                           "steps": n - 1, "guidance": w, "guidance_space": s, "nfe": n, "quality": q,
                           "class_accuracy": acc, "seconds_per_sample": 0.01, "headline": "fd_digits", "mode": "min"}
                          for i, (w, s, n, q, acc) in enumerate(rows)])
    assert recommend(table, 0.0)["guidance"] == 0.0  # no floor: the best quality
    pick = recommend(table, 0.05, min_class_accuracy=0.9)  # best of the accurate is 1.15; 1.40 is outside 5%
    assert (pick["guidance"], pick["guidance_space"], pick["nfe"]) == (2.0, "params", 21)
    assert recommend(table, 0.5, min_class_accuracy=0.9)["nfe"] == 11
    assert recommend(table, 0.05, min_class_accuracy=0.99) is None
    assert recommend(table.drop(columns="class_accuracy"), 0.05, min_class_accuracy=0.5) is None


def test_eval_quality_per_class_and_guidance_from_the_command_line(tmp_path, capsys):
    from bfn_platform.cli import main
    from test_conditional_sampling import _model_dir

    model = _model_dir(tmp_path / "cond", 10)
    os.environ["BFN_HOME"] = str(tmp_path / "home")
    code = main(["eval", str(model), "--quality", "--class", "all", "--guidance", "0,2", "--guidance-space",
                 "output,params", "--sampler", "bfn", "--steps", "2", "--n", "20", "--device", "cpu",
                 "--dataset", "digits", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    points = json.loads(out.out.strip().splitlines()[-1])["points"]
    assert [(p["guidance"], p["guidance_space"]) for p in points] == [(0.0, "output"), (2.0, "output"), (2.0, "params")]
    for p in points:
        assert 0.0 <= p["metrics"]["class_accuracy"] <= 1.0 and math.isfinite(p["metrics"]["fd_digits"])
        assert {f"class_accuracy_{c}" for c in range(10)} <= set(p["metrics"])
    for argv, needle in [(["--guidance", "1"], "--guidance needs --class"),
                         (["--class", "12"], "out of range"),
                         (["--class", "1", "--guidance", "x"], "comma-separated numbers"),
                         (["--class", "1", "--guidance-space", "logits"], "--guidance-space must be one of")]:
        code = main(["eval", str(model), "--quality", "--steps", "2", "--n", "4", "--device", "cpu", "--dataset",
                     "digits", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 1 and err.startswith("error: ") and needle in err and "\n" not in err, err


def test_data_without_a_classifier_get_quality_only():
    """Class-conditional points on the toy mixture: drawn per class, scored by the true law, no class accuracy."""
    import torch

    from bfn_core import make_bfn
    from pipelines.model_store import LoadedModel
    from pipelines.quality.conditional import has_classifier
    from pipelines.sample_quality import measure_sampler

    assert has_classifier("digits") and not has_classifier("mixture")
    torch.manual_seed(0)
    bfn = make_bfn("continuous", (2,), sigma_1=0.02, hidden=16, depth=1, time_dim=8, label_classes=4)
    loaded = LoadedModel(bfn, {"data": {"kind": "continuous", "train": None}, "training": {"compile": "off"}}, (2,))
    point = measure_sampler(loaded, sampler="ode2", steps=3, n=32, dataset="synthetic-mixture", classes="all",
                            guidance=1.0, guidance_space="params")
    assert point.guidance == 1.0 and point.headline == "nll_true" and math.isfinite(point.quality)
    assert not any(k.startswith("class_accuracy") for k in point.metrics)
