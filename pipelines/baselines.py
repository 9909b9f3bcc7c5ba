"""Reference likelihoods a trained model must beat."""
from __future__ import annotations

import math

import numpy as np


def independent_pixel_bits_per_dim(train: np.ndarray, test: np.ndarray, num_classes: int, smoothing: float = 1.0) -> float:
    """Bits/dim of the model in which every dimension has its own histogram over K values,
    estimated on the training set (add-`smoothing` counts) and evaluated on the test set.

    train, test: integer arrays (N, *dims) of class or bin indices in [0, K).
    """
    train = np.asarray(train).reshape(len(train), -1)
    test = np.asarray(test).reshape(len(test), -1)
    dims = train.shape[1]
    counts = np.full((dims, num_classes), smoothing, dtype=np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(dims), train.shape), train), 1.0)
    log_p = np.log(counts / counts.sum(-1, keepdims=True))
    nll = -log_p[np.arange(dims), test].sum(-1)  # nats per example
    return float(nll.mean() / (dims * math.log(2.0)))
