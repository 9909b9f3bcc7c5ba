"""Experiment configs: every shipped config validates; bad values name the field and the allowed values."""
from pathlib import Path

import pytest

from bfn_core import make_bfn
from pipelines.config import apply_overrides, load_config, parse_config, parse_overrides
from pipelines.errors import PipelineError

CONFIGS = sorted(Path(__file__).resolve().parents[2].glob("configs/**/*.yaml"))
CONFIGS = [p for p in CONFIGS if "sweeps" not in p.parts]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate_and_build(path):
    cfg = load_config(path)
    shape = {"unet": (8, 8, 1), "transformer": (16,), "mlp": (2,)}.get(cfg.model.network)
    if "paper" in path.parts:
        shape = {"vdm_unet": (32, 32, 3), "unet": (28, 28, 1), "transformer": (256,)}[cfg.model.network]
    if "paper" not in path.parts:  # the paper's networks are large; building the small ones is enough here
        make_bfn(data_shape=shape, **cfg.bfn_kwargs())
    assert cfg.flat()["data.kind"] == cfg.data.kind


def _raw(**changes):
    raw = {"data": {"train": "m.json", "kind": "discretised", "num_classes": 17},
           "model": {"network": "mlp"}, "flow": {"sigma_1": 0.01}, "training": {"steps": 10}}
    return apply_overrides(raw, parse_overrides([f"{k}={v}" for k, v in changes.items()]))


@pytest.mark.parametrize("changes,message", [
    ({"flow.sigma_1": 1.5}, r"flow.sigma_1: Input should be less than 1"),
    ({"training.steps": 0}, r"training.steps: Input should be greater than or equal to 1"),
    ({"data.kind": "images"}, r"data.kind: .*'continuous', 'discretised' or 'discrete'"),
    ({"model.network": "vit"}, r"model.network must be one of 'mlp', 'unet', .*'transformer'.*, got 'vit'"),
    ({"model.widht": 3}, r"model.widht: unknown field"),
    ({"loss.n_steps": 0}, r"loss.n_steps: Input should be greater than or equal to 1"),
    ({"data.kind": "discrete"}, r"flow.beta_1 is required for discrete data"),
    ({"training.batch_size": 30, "scaling.num_workers": 4}, r"training.batch_size 30 \(the global batch\) is not divisible "
                                                            r"by scaling.num_workers 4"),
    ({"training.batch_size": 32, "training.micro_batch_size": 5}, r"micro_batch_size 5 does not divide the 32 examples"),
    ({"training.run_model": "best"}, r"training.run_model 'best' needs validation data"),
    ({"loss.receiver": "joint"}, r"loss.receiver: Input should be 'mixture' or 'factorised'"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(PipelineError, match=message):
        parse_config(_raw(**changes), "x.yaml")


def test_overrides_and_file_errors(tmp_path):
    assert parse_overrides(["a.b=2", "a.c=[1, 2]", "d=null"]) == {"a.b": 2, "a.c": [1, 2], "d": None}
    assert apply_overrides({"a": {"b": 1}}, {"a.b": 2, "a.c": [1, 2]}) == {"a": {"b": 2, "c": [1, 2]}}
    with pytest.raises(PipelineError, match="--set takes key=value"):
        parse_overrides(["nope"])
    with pytest.raises(PipelineError, match="a is not a section"):
        apply_overrides({"a": 1}, {"a.b": 2})
    with pytest.raises(PipelineError, match="config file .* not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("data:\n  train: x\n  kind: [discretised\nmodel: {a: 1}\n")
    with pytest.raises(PipelineError, match=r"line 4, column 6: expected ',' or '\]'") as err:
        load_config(bad)
    assert "\n" not in str(err.value)  # one line


def test_the_batch_is_global_and_the_rest_is_accumulation():
    cfg = parse_config(_raw(**{"training.batch_size": 512, "scaling.num_workers": 4, "training.micro_batch_size": 32}))
    assert cfg.micro_batch_size == 32 and cfg.accumulation_steps == 4  # 4 workers x 4 passes x 32 = 512
    cfg = parse_config(_raw(**{"training.batch_size": 512, "scaling.num_workers": 4}))
    assert cfg.micro_batch_size == 128 and cfg.accumulation_steps == 1


def test_conditioning_becomes_label_classes_and_leaves_unconditional_configs_as_they_were():
    from pathlib import Path

    from pipelines.config import load_config

    repo = Path(__file__).resolve().parents[2]
    plain = load_config(repo / "configs" / "digits_discretised.yaml")
    conditional = load_config(repo / "configs" / "digits_conditional.yaml")
    assert "label_classes" not in plain.bfn_kwargs() and plain.label_classes == 0 and plain.conditioning is None
    assert conditional.bfn_kwargs() == {**plain.bfn_kwargs(), "label_classes": 10} and conditional.label_classes == 10
    assert conditional.conditioning.label_dropout == 0.15
    for bad in ({"conditioning.num_classes": 1}, {"conditioning.label_dropout": 1.0}):
        with pytest.raises(PipelineError):
            load_config(repo / "configs" / "digits_conditional.yaml", bad)
