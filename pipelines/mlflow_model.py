"""The MLflow model of a trained BFN, logged from code (MLflow's models-from-code).

This file is what MLflow stores as the model's code: `predict` draws samples. The weights travel
as a safetensors artifact and the experiment config as JSON; nothing is pickled.
predict input: a DataFrame or dict with columns n (samples), steps (sampling steps), seed, and optionally
sampler (bfn, ode1, ode2, sde1, sde2), grid (uniform, solver, logsnr; default: the sampler's own) and
final (sample or mode); for a model trained with a conditioning block also class (a class id 0..C-1 for every
sample; text "0,1,2" cycles ids over the samples where the caller skips schema enforcement), guidance (the
classifier-free guidance weight w, default 0) and guidance_space (output or params). Inputs without these
columns sample as before (a conditional model then samples unconditionally, its null class).
"""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch


class BFNSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from safetensors.torch import load_file

        from bfn_core import make_bfn

        meta = json.loads(open(context.artifacts["config"]).read())
        self.data_shape = tuple(meta["data_shape"])
        self.bfn = make_bfn(data_shape=self.data_shape, **meta["bfn"])
        self.bfn.load_state_dict(load_file(context.artifacts["weights"]))
        self.bfn.eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        row = model_input.iloc[0].to_dict() if hasattr(model_input, "iloc") else dict(model_input)
        row = {k: (v[0] if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in row.items()}
        n, steps, seed = int(row.get("n", 16)), int(row.get("steps", 100)), int(row.get("seed", 0))
        grid = row.get("grid")
        guidance = float(_given(row.get("guidance")) or 0.0)
        samples = self.bfn.sample((n, *self.data_shape), steps, generator=torch.Generator().manual_seed(seed),
                                  sampler=str(row.get("sampler") or "bfn"), grid=str(grid) if grid else None,
                                  final=str(row.get("final") or "sample"), y=self._labels(_given(row.get("class")), n),
                                  guidance=guidance, guidance_space=str(_given(row.get("guidance_space")) or "output"))
        return samples.numpy()

    def _labels(self, value, n: int):
        """Labels (n,) of a class column's value (None: no labels), cycled; one-line errors as the CLI gives them."""
        from bfn_core.errors import BfnError

        if value is None:
            return None
        c = self.bfn.num_classes
        if not c:
            raise BfnError("this model was trained without labels: train with a conditioning block to sample by class, "
                           "or drop the class column")
        try:
            ids = [int(v) for v in str(value).split(",")] if isinstance(value, str) else [int(value)]
        except ValueError:
            raise BfnError(f"class must be a class id 0..{c - 1} or a comma-separated list of them, got {value!r}") from None
        if any(not 0 <= v < c for v in ids):
            raise BfnError(f"class {value!r} is out of range: this model has classes 0..{c - 1}")
        return torch.tensor([ids[i % len(ids)] for i in range(n)], dtype=torch.long)


def _given(value):
    """None for a missing optional column (absent, None or NaN as pandas fills it), else the value."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


mlflow.models.set_model(BFNSampler())
