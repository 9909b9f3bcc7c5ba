"""Training checkpoints as plain files: state dicts and tensors only, loaded with weights_only=True.

A checkpoint folder holds model.pt, ema.pt, optimizer.pt, state.pt (step and RNG states) and
config.json (the experiment config and data shape). Writers fill a temporary folder that Ray Train
persists; nothing pickles Python objects.

A checkpoint that cannot be read raises CheckpointError naming the stored object: Ray Train hands a
worker a local copy of a remote checkpoint (`as_directory` downloads it to a temporary folder), so
readers take the folder and, separately, the `location` to name (see `opened`): the storage URI,
which the user can look at, not a temporary path gone by the time they read the message.
"""
from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipelines.errors import CheckpointError, one_line

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


# pyarrow filesystems' type_name -> the URL scheme a user writes
_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}
ADVICE = "restore it, or use another checkpoint"  # never --resume: a resumed run reads the same checkpoint


def stored_location(checkpoint) -> str:
    """Where a Ray Train Checkpoint is stored, as the user names it: `s3://bucket/...`, or a local path."""
    path = str(checkpoint.path)
    kind = getattr(getattr(checkpoint, "filesystem", None), "type_name", "local")
    if kind == "local" or "://" in path:
        return path
    return f"{_SCHEMES.get(kind, kind)}://{path}"


@contextmanager
def opened(checkpoint) -> Iterator[tuple[str, str]]:
    """A Ray Train Checkpoint as (local folder, stored location): the folder to read, the location to
    name in errors. A failed download (storage unreachable) is not wrapped: it may pass on a retry."""
    with checkpoint.as_directory() as folder:
        yield folder, stored_location(checkpoint)


def _named(folder: str | Path, name: str, location: str | None) -> str:
    return f"{str(location).rstrip('/')}/{name}" if location else str(Path(folder) / name)


def _load(folder: str | Path, name: str, location: str | None = None):
    shown = _named(folder, name, location)
    try:
        return torch.load(Path(folder) / name, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {shown} is missing: the checkpoint is incomplete; {ADVICE}") from None
    except Exception as err:  # truncated zip, flipped bytes, pickled objects
        raise CheckpointError(f"checkpoint file {shown} is corrupt ({type(err).__name__}: {one_line(err, 200)}); "
                              f"{ADVICE}") from None


def read_json(folder: str | Path, name: str, location: str | None = None, *, required: bool = True):
    """A JSON file of a checkpoint folder (None when it is absent and not `required`)."""
    shown = _named(folder, name, location)
    try:
        return json.loads((Path(folder) / name).read_text())
    except FileNotFoundError:
        if not required:
            return None
        raise CheckpointError(f"checkpoint {location or folder} has no {name}: not a bfn checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {shown} is corrupt (invalid JSON: {one_line(err, 200)}); {ADVICE}") from None


def read_config(folder: str | Path, location: str | None = None) -> dict:
    return read_json(folder, "config.json", location)


def load_weights(folder: str | Path, which: str = "ema", location: str | None = None) -> dict:
    """The model (or EMA) state dict of a checkpoint folder."""
    return _load(folder, f"{which}.pt", location)


def load_checkpoint(folder: str | Path, *, model, ema, optimizer, location: str | None = None) -> int:
    """Restore model, EMA, optimiser and RNG states in place; returns the step to continue from. Errors
    name `location` (the stored checkpoint) where given, else the folder."""
    states = {name: _load(folder, name, location) for name in ("model.pt", "ema.pt", "optimizer.pt", "state.pt")}
    try:
        model.load_state_dict(states["model.pt"])
        ema.load_state_dict(states["ema.pt"])
        optimizer.load_state_dict(states["optimizer.pt"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {location or folder} does not match the model of this config "
                              f"({one_line(err, 200)})") from None
    state = states["state.pt"]
    try:
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32), state["numpy_pos"]))
        py = random.getstate()
        random.setstate((py[0], tuple(int(v) for v in state["python_rng"].tolist()), py[2]))
        return int(state["step"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:  # loads, but not a state.pt of ours
        raise CheckpointError(f"checkpoint file {_named(folder, 'state.pt', location)} is corrupt "
                              f"({type(err).__name__}: {one_line(err, 200)}); {ADVICE}") from None
