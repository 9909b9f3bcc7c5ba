"""Training checkpoints as plain files: state dicts and tensors only, loaded with weights_only=True.

A checkpoint folder holds model.pt, ema.pt, optimizer.pt, state.pt (step and RNG states) and
config.json (the experiment config and data shape). Writers fill a temporary folder that Ray Train
persists; nothing pickles Python objects.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import PipelineError

FILES = ("model.pt", "ema.pt", "optimizer.pt", "state.pt", "config.json")


def save_checkpoint(folder: str | Path, *, model, ema, optimizer, step: int, config: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(ema.state_dict(), folder / "ema.pt")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    np_state = np.random.get_state()
    torch.save({
        "step": int(step),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python_rng": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }, folder / "state.pt")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"checkpoint file {path} is missing: the checkpoint is incomplete; resume from an earlier one") from None
    except Exception as err:  # truncated zip, flipped bytes, pickled objects
        raise PipelineError(f"checkpoint file {path} is corrupt ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                            "resume from an earlier checkpoint or start a new run") from None


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"checkpoint {folder} has no config.json: not a bfn checkpoint") from None
    except json.JSONDecodeError as err:
        raise PipelineError(f"checkpoint file {path} is corrupt (invalid JSON: {err})") from None


def load_weights(folder: str | Path, which: str = "ema") -> dict:
    """The model (or EMA) state dict of a checkpoint folder."""
    return _load(Path(folder) / f"{which}.pt")


def load_checkpoint(folder: str | Path, *, model, ema, optimizer) -> int:
    """Restore model, EMA, optimiser and RNG states in place; returns the step to continue from."""
    folder = Path(folder)
    states = {name: _load(folder / name) for name in ("model.pt", "ema.pt", "optimizer.pt", "state.pt")}
    try:
        model.load_state_dict(states["model.pt"])
        ema.load_state_dict(states["ema.pt"])
        optimizer.load_state_dict(states["optimizer.pt"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise PipelineError(f"checkpoint {folder} does not match the model of this config ({str(err).splitlines()[0][:160]})") from None
    state = states["state.pt"]
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32), state["numpy_pos"]))
    py = random.getstate()
    random.setstate((py[0], tuple(int(v) for v in state["python_rng"].tolist()), py[2]))
    return int(state["step"])
