"""The tiny digits training that integration tests run: the repo's digits config on given shards, at
toy size, with overrides per test."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits_discretised.yaml"


def tiny_digits_config(shards: Path, tmp: Path, **overrides):
    """An ExperimentConfig: 30 steps, 2 workers, width 16, checkpoints under `tmp`; `overrides` are --set pairs."""
    from pipelines.config import load_config

    sets = {
        "data.train": shards / "train" / "manifest.json", "data.val": shards / "val" / "manifest.json",
        "data.test": shards / "test" / "manifest.json", "training.steps": 30, "training.checkpoint_every": 10,
        "training.val_every": 15, "training.log_every": 5, "training.val_batches": 2, "training.num_samples": 4,
        "training.sample_steps": 5, "scaling.num_workers": 2, "storage.path": tmp / "ray_results",
        "model.width": 16, "tracking.experiment": "integration",
    }
    sets.update(overrides)
    return load_config(CONFIG, {k: str(v) if isinstance(v, Path) else v for k, v in sets.items()})
