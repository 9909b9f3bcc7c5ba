"""Class-conditional sampling, guidance and inpainting through pipelines.sampling, `bfn sample` and the pyfunc
model's predict, on tiny MLP models saved as local checkpoint folders (no MLflow server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bfn_core import make_bfn
from pipelines.errors import PipelineError
from pipelines.model_store import LoadedModel, load_model, model_meta

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (8, 8, 1)
BFN_KW = dict(kind="discretised", network="mlp", num_classes=17, sigma_1=0.01, hidden=16, depth=1, time_dim=8)
CONFIG = {"data": {"kind": "discretised", "num_classes": 17, "train": None}, "model": {"network": "mlp"},
          "training": {"compile": "off"}}


def _model_dir(folder: Path, label_classes: int, names: list[str] | None = None) -> Path:
    """A checkpoint folder (config.json + ema.pt) that load_model reads like a training run's."""
    torch.manual_seed(0)
    kw = dict(BFN_KW, **({"label_classes": label_classes} if label_classes else {}))
    bfn = make_bfn(data_shape=SHAPE, **kw)
    with torch.no_grad():  # the output layer starts at zero, blind to labels: weights as if trained
        for param in bfn.parameters():
            param.normal_(0.0, 0.3)
    config = dict(CONFIG, **({"conditioning": {"num_classes": label_classes, "label_dropout": 0.1,
                                               **({"class_names": names} if names else {})}} if label_classes else {}))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model_meta(config, SHAPE, kw)))
    torch.save(bfn.state_dict(), folder / "ema.pt")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"cond": _model_dir(root / "cond", 3, ["zero", "one", "two"]), "uncond": _model_dir(root / "uncond", 0)}


def _run_cli(*argv, home: Path):
    from bfn_platform.cli import main

    os.environ["BFN_HOME"] = str(home)
    return main(["sample", *map(str, argv)])


def test_conditional_samples_follow_the_classes_cycled_and_named(models, tmp_path):
    from pipelines.sampling import sample_array

    x, cond, loaded, _ = sample_array(str(models["cond"]), n=7, steps=3, device="cpu", classes="0,two",
                                      guidance=1.5, guidance_space="params")
    assert loaded.bfn.num_classes == 3 and x.shape == (7, *SHAPE) and np.isfinite(x).all()
    assert cond.labels.tolist() == [0, 2, 0, 2, 0, 2, 0]
    # the same seed and labels give the same samples; other labels give others
    again, *_ = sample_array(str(models["cond"]), n=7, steps=3, device="cpu", classes=[0, 2], guidance=1.5,
                             guidance_space="params")
    other, *_ = sample_array(str(models["cond"]), n=7, steps=3, device="cpu", classes=1, guidance=1.5,
                             guidance_space="params")
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes="3"), "out of range: model .* has classes 0..2"),
    (dict(classes="seven"), "unknown class 'seven': --class takes one of zero, one, two"),
    (dict(classes="0,,1"), "--class takes a class id"),
    (dict(guidance=2.0), "--guidance needs --class"),
    (dict(classes=0, guidance_space="logits"), "--guidance-space must be one of output, params"),
])
def test_bad_conditioning_is_one_line(models, kwargs, message):
    from pipelines.sampling import sample_array

    with pytest.raises(PipelineError, match=message) as err:
        sample_array(str(models["cond"]), n=2, steps=2, device="cpu", **kwargs)
    assert "\n" not in str(err.value)


def test_unconditional_model_refuses_a_class(models):
    from pipelines.sampling import sample_array

    with pytest.raises(PipelineError, match="was trained without labels: train with a conditioning block"):
        sample_array(str(models["uncond"]), n=2, steps=2, device="cpu", classes="1")


@pytest.mark.parametrize("which, resample", [("cond", 1), ("uncond", 1), ("uncond", 3)])
def test_inpainting_keeps_the_observed_values_exactly(models, which, resample, tmp_path):
    from pipelines.sampling import sample_to_files

    rng = np.random.default_rng(0)
    observed = (2 * rng.integers(0, 17, SHAPE) / 16 - 1).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:4] = True  # the top half known
    observed[~mask] = np.nan  # unknown entries may hold anything
    np.savez(tmp_path / "known.npz", observed=observed, mask=mask)
    files = sample_to_files(str(models[which]), n=3, steps=4, out=str(tmp_path / "out"), device="cpu",
                            mask_file=str(tmp_path / "known.npz"), classes="1" if which == "cond" else None,
                            resample=resample)
    x = np.load(files[0])
    assert x.shape == (3, *SHAPE)
    np.testing.assert_array_equal(x[:, :4], np.broadcast_to(observed[:4], (3, 4, 8, 1)))
    assert np.isfinite(x).all() and files[-1].stat().st_size > 0


def test_inpainting_from_an_npy_pair_per_sample(models, tmp_path):
    from pipelines.sampling import sample_array, read_inpainting

    observed = np.full((2, *SHAPE), -1.0, np.float32)
    mask = np.zeros((2, *SHAPE), bool)
    mask[0, 0, 0] = mask[1, 7, 7] = True
    np.save(tmp_path / "o.npy", observed)
    np.save(tmp_path / "m.npy", mask)
    obs, m = read_inpainting(f"{tmp_path / 'o.npy'},{tmp_path / 'm.npy'}")
    x, *_ = sample_array(str(models["uncond"]), n=2, steps=3, device="cpu", observed=obs, mask=m)
    assert x[0, 0, 0, 0] == -1.0 and x[1, 7, 7, 0] == -1.0


@pytest.mark.parametrize("arrays, message", [
    (dict(observed=np.zeros(SHAPE, np.float32), mask=np.zeros(SHAPE, np.uint8)), "mask must be bool"),
    (dict(observed=np.zeros((4, 4, 1), np.float32), mask=np.zeros((4, 4, 1), bool)), r"shape \(4, 4, 1\).*\(8, 8, 1\)"),
    (dict(observed=np.zeros(SHAPE, np.int64), mask=np.ones(SHAPE, bool)), "floats in \\[-1, 1\\] for discretised"),
    (dict(observed=np.full(SHAPE, 3.0, np.float32), mask=np.ones(SHAPE, bool)), "in \\[-1, 1\\] where the mask"),
    (dict(observed=np.zeros(SHAPE, np.float32)), "lacks mask"),
])
def test_bad_mask_files_are_one_line(models, tmp_path, arrays, message):
    from pipelines.sampling import sample_to_files

    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PipelineError, match=message) as err:
        sample_to_files(str(models["uncond"]), n=2, steps=2, out=str(tmp_path / "o"), device="cpu",
                        mask_file=str(tmp_path / "bad.npz"))
    assert "\n" not in str(err.value)


def test_cli_class_flags_one_line_errors_exit_1(models, tmp_path, capsys):
    home = tmp_path / "home"
    assert _run_cli(models["uncond"], "--class", "1", "--n", "2", "--steps", "2", "--device", "cpu", home=home) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "trained without labels" in err and "\n" not in err
    assert _run_cli(models["cond"], "--guidance", "1", home=home) == 1
    assert "--guidance needs --class" in capsys.readouterr().err
    assert _run_cli(models["cond"], "--class", "9", "--n", "2", "--steps", "2", "--device", "cpu", home=home) == 1
    assert "out of range" in capsys.readouterr().err
    assert _run_cli(models["cond"], "--mask", tmp_path / "none.npz", "--n", "2", "--steps", "2", home=home) == 1
    assert "cannot read --mask" in capsys.readouterr().err
    assert _run_cli(models["uncond"], "--resample", "5", "--n", "2", "--steps", "2", "--device", "cpu", home=home) == 1
    assert "--resample needs --mask" in capsys.readouterr().err


def test_cli_writes_samples_labels_and_a_row_per_class(models, tmp_path, capsys):
    out = tmp_path / "s"
    code = _run_cli(models["cond"], "--class", "two,0", "--guidance", "0.5", "--n", "10", "--steps", "2",
                    "--device", "cpu", "--out", out, home=tmp_path / "home")
    assert code == 0, capsys.readouterr().err
    assert np.load(out.with_suffix(".npy")).shape == (10, *SHAPE)
    assert np.load(tmp_path / "s.labels.npy").tolist() == [2, 0] * 5
    from PIL import Image

    with Image.open(out.with_suffix(".png")) as im:  # 2 rows (classes) of 5 tiles: wider than tall
        assert im.width > im.height


def test_class_accuracy_scores_digits_against_their_labels(tmp_path):
    from pipelines.quality.conditional import class_accuracy
    from pipelines.quality.digits_classifier import digits_labelled

    images, labels = digits_labelled("test")
    flipped = labels.copy()
    flipped[labels == 3] = 4  # every 3 claimed to be a 4
    scores = class_accuracy("digits", images[..., :], flipped, levels=17, cache_dir=tmp_path)
    assert scores["class_accuracy_4"] < 0.9 and scores["class_accuracy_0"] > 0.9
    assert "class_accuracy_3" not in scores and 0.7 < scores["class_accuracy"] < 0.95
    with pytest.raises(PipelineError, match="one label per sample"):
        class_accuracy("digits", images, labels[:3], levels=17, cache_dir=tmp_path)
    with pytest.raises(PipelineError, match="there is one for digits"):
        class_accuracy("mixture", np.zeros((2, 2)), np.zeros(2), levels=None)


def _pyfunc(folder: Path):
    """The logged model's PythonModel loaded as MLflow would, from its artifacts (weights + config)."""
    from safetensors.torch import save_file

    from pipelines import mlflow_model

    meta = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "ema.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "w.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta))
    model = mlflow_model.BFNSampler()
    model.load_context(type("Ctx", (), {"artifacts": {"config": str(folder / "meta.json"),
                                                      "weights": str(folder / "w.safetensors")}})())
    return model


def test_pyfunc_predict_takes_class_and_guidance_and_old_inputs(models):
    import pandas as pd

    from bfn_core.errors import BfnError
    from pipelines.model_store import sampling_signature

    cond, uncond = _pyfunc(models["cond"]), _pyfunc(models["uncond"])
    old = pd.DataFrame({"n": [2], "steps": [3], "seed": [0], "sampler": ["ode2"], "final": ["sample"]})
    assert cond.predict(None, old).shape == uncond.predict(None, old).shape == (2, *SHAPE)
    row = pd.DataFrame({"n": [3], "steps": [3], "seed": [1], "class": [2], "guidance": [1.0], "guidance_space": ["params"]})
    a, b = cond.predict(None, row), cond.predict(None, row.assign(**{"class": [0]}))
    assert a.shape == (3, *SHAPE) and not np.array_equal(a, b)
    assert cond.predict(None, {"n": 4, "steps": 2, "class": "0,1"}).shape == (4, *SHAPE)
    with pytest.raises(BfnError, match="trained without labels"):
        uncond.predict(None, row)
    with pytest.raises(BfnError, match="out of range"):
        cond.predict(None, row.assign(**{"class": [3]}))
    # the signature lists the new columns as optional and still accepts the old example
    signature, example = sampling_signature(SHAPE)
    cols = {c.name: c for c in signature.inputs.inputs}
    assert {"class", "guidance", "guidance_space"} <= set(cols) and not cols["class"].required
    assert set(example.columns) <= set(cols)


def test_loaded_model_objects_sample_too(models):
    from pipelines.sampling import sample_array

    loaded = load_model(str(models["cond"]))
    assert isinstance(loaded, LoadedModel)
    x, cond, *_ = sample_array(loaded, n=2, steps=2, device="cpu", classes=1)
    assert cond.labels.tolist() == [1, 1] and x.shape == (2, *SHAPE)


@pytest.mark.slow
def test_conditional_bench_smoke(tmp_path):
    out = tmp_path / "bench_conditional.json"
    env = {**os.environ, "BFN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "conditional.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    points = result["points"]
    assert {(p["space"], p["guidance"]) for p in points} == {(s, w) for s in ("output", "params") for w in (0.0, 1.0)}
    for p in points:
        assert 0.0 <= p["class_accuracy"] <= 1.0 and np.isfinite(p["fd_digits"])
    assert np.isfinite(result["unconditional"]["fd_digits"]) and result["verdict"]["status"] in ("PASS", "MISS")
    assert "target:" in proc.stdout
    inpainted = result["inpainting"]
    assert [p["resample"] for p in inpainted["points"]] == [1, 2] and inpainted["truth"] > 0.9
    assert inpainted["points"][1]["nfe"] == 2 * inpainted["points"][0]["nfe"] - 1  # 2 steps taken twice, 1 final call
    assert (tmp_path / "bench_conditional_inpainting.png").stat().st_size > 0 and "== inpainting" in proc.stdout


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A 16-character text8-alphabet model folder (27 classes, no manifest: the alphabet comes from the class count)."""
    torch.manual_seed(0)
    kw = dict(kind="discrete", network="mlp", num_classes=27, beta_1=3.0, hidden=16, depth=1, time_dim=8)
    bfn = make_bfn(data_shape=(16,), **kw)
    config = {"data": {"kind": "discrete", "num_classes": 27, "train": None}, "model": {"network": "mlp"},
              "training": {"compile": "off"}}
    folder = tmp_path_factory.mktemp("text") / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model_meta(config, (16,), kw)))
    torch.save(bfn.state_dict(), folder / "ema.pt")
    return folder


def test_text_prompts_are_kept_as_prefix_and_infix(text_model, tmp_path, capsys):
    home = tmp_path / "home"
    assert _run_cli(text_model, "--prefix", "the cat", "--n", "3", "--steps", "3", "--device", "cpu",
                    "--out", tmp_path / "p", "--resample", "2", home=home) == 0, capsys.readouterr().err
    lines = (tmp_path / "p.txt").read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("the cat") and len(line) == 16 for line in lines), lines
    assert _run_cli(text_model, "--infix", "9:sat", "--n", "2", "--steps", "3", "--device", "cpu",
                    "--out", tmp_path / "i", home=home) == 0, capsys.readouterr().err
    assert all(line[9:12] == "sat" for line in (tmp_path / "i.txt").read_text().splitlines())


@pytest.mark.parametrize("argv, message", [
    (["--prefix", "The Cat"], "not in the model's alphabet"),
    (["--prefix", "a" * 17], "does not fit the model's 16 characters"),
    (["--infix", "sat"], "--infix takes POSITION:TEXT"),
    (["--infix", "14:sat"], "does not fit"),
    (["--prefix", "a", "--mask", "known.npz"], "give one of --mask, --prefix or --infix"),
])
def test_bad_text_prompts_are_one_line(text_model, tmp_path, capsys, argv, message):
    assert _run_cli(text_model, *argv, "--n", "2", "--steps", "2", "--device", "cpu", home=tmp_path / "home") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_a_text_prompt_needs_a_text_model(models, tmp_path, capsys):
    assert _run_cli(models["uncond"], "--prefix", "abc", "--n", "2", "--steps", "2", "--device", "cpu",
                    home=tmp_path / "home") == 1
    assert "is for text models" in capsys.readouterr().err
