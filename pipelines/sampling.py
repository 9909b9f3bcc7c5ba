"""Sampling from trained models to files: .npy plus a picture (image grid, text lines, scatter)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipelines.errors import PipelineError


def sample_to_files(ref: str, *, n: int, steps: int, out: str, seed: int = 0, batch_size: int = 256,
                    device: str = "auto", on_progress: Callable[[int], None] | None = None) -> list[Path]:
    """Draw n samples with `steps` sampling steps on `device` (auto: a GPU when there is one), in batches;
    on_progress(k) is told of k more sample-steps done."""
    from pipelines.evaluate import resolve_device
    from pipelines.model_store import load_model
    from pipelines.pictures import save_samples
    from pipelines.tracking import setup_mlflow

    if n < 1 or steps < 1:
        raise PipelineError(f"--n and --steps must be >= 1, got n={n}, steps={steps}")
    if not Path(ref).is_dir():
        setup_mlflow()
    loaded = load_model(ref)
    dev = resolve_device(device)
    bfn = loaded.bfn.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    chunks, done = [], 0
    while done < n:
        b = min(batch_size, n - done)
        callback = (lambda state, b=b: on_progress(b)) if on_progress else None
        chunks.append(bfn.sample((b, *loaded.data_shape), steps, generator=g, callback=callback).cpu().numpy())
        done += b
    samples = np.concatenate(chunks)
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npy = stem.with_suffix(".npy")
    np.save(npy, samples)
    picture = save_samples(samples, loaded.config["data"]["kind"], stem, title=f"{n} samples, {steps} steps")
    return [npy, picture]
