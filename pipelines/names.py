"""Names that several layers read and write: spelled here once, on the lowest floor of pipelines.

Likelihood metrics of a run's test evaluation: ``test_bits_<steps>`` (the bound), and its two standard
errors, ``test_bits_se_examples_<steps>`` (across test examples) and ``test_bits_se_mc_<steps>``
(Monte Carlo, across repeats; only with more than one repeat); the same with ``nats``.
"""
from __future__ import annotations

SE_KINDS = ("examples", "mc")
LEGACY_SE = "test_bits_se_{label}"  # runs evaluated before the two standard errors had their own names


def test_metric(label: str, unit: str = "bits") -> str:
    """The bound at one step count (label 'n10' ... or 'inf')."""
    return f"test_{unit}_{label}"


def test_se_metric(label: str, kind: str = "examples", unit: str = "bits") -> str:
    """A standard error of the bound: across test 'examples' or Monte Carlo ('mc') across repeats."""
    if kind not in SE_KINDS:
        raise ValueError(f"standard error kind must be one of {SE_KINDS}, not {kind!r}")
    return f"test_{unit}_se_{kind}_{label}"
