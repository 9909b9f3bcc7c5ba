"""Log trained BFNs to MLflow and load them back from a run id, runs:/ or models:/ URI, or a checkpoint."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bfn_core import BFN, make_bfn
from pipelines.checkpoints import load_weights, read_config
from pipelines.errors import PipelineError
from pipelines.names import TAG_MODEL_ID, tag_model_id

MODEL_NAMES = {"final": "model", "best": "best_model"}  # logged models' names within their run


@dataclass
class LoadedModel:
    bfn: BFN
    config: dict  # the experiment config (JSON form)
    data_shape: tuple[int, ...]
    run_id: str | None = None


def model_meta(config: dict, data_shape, bfn_kwargs: dict) -> dict:
    """What a checkpoint's and a logged model's config.json hold: enough to build the BFN again."""
    return {"experiment": config, "data_shape": list(data_shape), "bfn": bfn_kwargs, "format": 1}


def build(meta: dict, state: dict) -> BFN:
    bfn = make_bfn(data_shape=tuple(meta["data_shape"]), **meta["bfn"])
    bfn.load_state_dict(state)
    return bfn.eval()


def sampling_signature(data_shape) -> tuple:
    """(signature, input example) of the logged model's `predict`: one row of sampling settings in,
    an array of samples out; n and steps required, the rest optional (class, guidance and guidance_space
    for conditional models: mlflow_model.py)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("long", "n"), ColSpec("long", "steps"), ColSpec("long", "seed", required=False),
                     ColSpec("string", "sampler", required=False), ColSpec("string", "grid", required=False),
                     ColSpec("string", "final", required=False), ColSpec("long", "class", required=False),
                     ColSpec("double", "guidance", required=False), ColSpec("string", "guidance_space", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *data_shape))])
    example = pd.DataFrame({"n": [4], "steps": [20], "seed": [0], "sampler": ["ode2"], "final": ["sample"]})
    return ModelSignature(inputs=inputs, outputs=outputs), example


def log_model(bfn: BFN, meta: dict, run_id: str, roles: tuple[str, ...] = ("final",), is_run_model: bool = True) -> str:
    """Log the weights (safetensors) and config as a pyfunc model from code; returns its model URI.
    `roles` are what these weights are, 'final' and/or 'best' (the best-validation EMA weights): the
    model is named after the first and tagged bfn.model_id.<role> for each; bfn.model_id where it is
    the run's model."""
    import mlflow
    from safetensors.torch import save_file

    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info
    signature, example = sampling_signature(tuple(meta["data_shape"]))
    with tempfile.TemporaryDirectory() as tmp:
        weights, cfg = Path(tmp) / "weights.safetensors", Path(tmp) / "config.json"
        save_file({k: v.detach().cpu().contiguous() for k, v in bfn.state_dict().items()}, str(weights))
        cfg.write_text(json.dumps(meta, indent=2))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAMES[roles[0]],
                python_model=str(Path(__file__).with_name("mlflow_model.py")),
                artifacts={"weights": str(weights), "config": str(cfg)},
                code_paths=[str(Path(__file__).resolve().parents[1] / "bfn_core")],
                pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "numpy", "safetensors", "mlflow"],
                signature=signature, input_example=example,
            )
            for role in roles:
                mlflow.set_tag(tag_model_id(role), info.model_id)
            if is_run_model:
                mlflow.set_tag(TAG_MODEL_ID, info.model_id)
    if before.end_time:  # leaving start_run() ends the run now: keep the record of when and how it ended
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_uri


def run_and_model(ref: str):
    """(run, its model id) of a run id, unique id prefix or run name; a one-line error when the run is
    unknown or has no logged model (it did not finish)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import resolve_run_id

    run_id = resolve_run_id(ref)
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise PipelineError(f"unknown run {run_id}: no such run in {mlflow.get_tracking_uri()} (find runs with `bfn runs list`)") from None
    model_id = run.data.tags.get(TAG_MODEL_ID)
    if not model_id:
        raise PipelineError(f"run {run_id} has no logged model (status {run.info.status}): only finished training runs have "
                            f"one (resume it with `bfn train --resume {run_id}`)")
    return run, model_id


def resolve_model_uri(ref: str) -> tuple[str, str | None]:
    """A run id, runs:/RUN[/model] or models:/... -> (model URI to download, run id if known)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if ref.startswith("models:/"):
        try:
            if "@" in ref:
                name, alias = ref[len("models:/"):].split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            elif ref.count("/") >= 2 and not ref[len("models:/"):].startswith("m-"):
                name, version = ref[len("models:/"):].split("/", 1)
                mv = client.get_model_version(name, version)
            else:
                return ref, None
        except MlflowException as err:
            raise PipelineError(f"unknown model {ref}: {err.message.splitlines()[0]} (list them with `bfn models list`)") from None
        return f"models:/{mv.name}/{mv.version}", mv.run_id
    run, model_id = run_and_model(ref[len("runs:/"):].split("/")[0] if ref.startswith("runs:/") else ref)
    return f"models:/{model_id}", run.info.run_id


def register_version(name: str, run_id: str, model_id: str, tags: dict[str, str] | None = None):
    """A new version of registered model `name` from a run's LoggedModel, linked both ways: the version
    names its run and LoggedModel, and the LoggedModel lists the version (the `mlflow.modelVersions`
    tag the UI's logged-model page reads: a tracking server writes it, the embedded store does not;
    mlflow.register_model would leave the version's run empty when given a models:/ URI)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="BFN models registered with `bfn models register`")
        except MlflowException as err:
            if "already exists" not in str(err).lower():
                raise PipelineError(f"cannot create registered model {name}: {err.message.splitlines()[0]}") from None
    mv = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                     tags={k: v for k, v in (tags or {}).items() if v})
    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(e.get("name") == mv.name and str(e.get("version")) == str(mv.version) for e in listed):
        # a tracking server links them itself; the file and SQLite stores do not
        listed.append({"name": mv.name, "version": str(mv.version)})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    return mv


def registered_version(ref: str) -> tuple[str, str] | None:
    """(name, version) of a models:/NAME@ALIAS or models:/NAME/VERSION reference, else None."""
    if not ref.startswith("models:/"):
        return None
    uri, _ = resolve_model_uri(ref)
    body = uri[len("models:/"):]
    return tuple(body.split("/", 1)) if "/" in body else None


def load_model(ref: str) -> LoadedModel:
    """Load a trained BFN from a run id, runs:/ or models:/ URI, or a local checkpoint folder."""
    path = Path(ref)
    if path.is_dir() and (path / "config.json").exists():
        meta = read_config(path)
        return LoadedModel(build(meta, load_weights(path, "ema")), meta["experiment"], tuple(meta["data_shape"]))
    import mlflow
    from safetensors.torch import load_file

    uri, run_id = resolve_model_uri(ref)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:
        raise PipelineError(f"could not download model {uri}: {str(err).splitlines()[0][:200]}") from None
    art = local / "artifacts"
    try:
        meta = json.loads((art / "config.json").read_text())
        state = load_file(str(art / "weights.safetensors"))
    except Exception as err:
        raise PipelineError(f"model {uri} is not a bfn model or is damaged ({type(err).__name__}: {str(err)[:120]})") from None
    return LoadedModel(build(meta, state), meta["experiment"], tuple(meta["data_shape"]), run_id)
