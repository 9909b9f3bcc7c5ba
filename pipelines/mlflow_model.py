"""The MLflow model of a trained BFN, logged from code (MLflow's models-from-code).

This file is what MLflow stores as the model's code: `predict` draws samples. The weights travel
as a safetensors artifact and the experiment config as JSON; nothing is pickled.
predict input: a DataFrame or dict with columns n (samples), steps (sampling steps), seed, and optionally
sampler (bfn, ode1, ode2, sde1, sde2), grid (uniform, solver, logsnr; default: the sampler's own) and
final (sample or mode).
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
        samples = self.bfn.sample((n, *self.data_shape), steps, generator=torch.Generator().manual_seed(seed),
                                  sampler=str(row.get("sampler") or "bfn"), grid=str(grid) if grid else None,
                                  final=str(row.get("final") or "sample"))
        return samples.numpy()


mlflow.models.set_model(BFNSampler())
