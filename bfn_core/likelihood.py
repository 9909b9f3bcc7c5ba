"""Likelihood evaluation: the bound L^n + L^r over a data set, for several n, with standard errors."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from bfn_core._checks import check_n_steps

DEFAULT_STEPS: tuple[int | None, ...] = (10, 25, 50, 100, 1000, None)  # None = continuous time
LN2 = math.log(2.0)


def steps_label(steps: int | None) -> str:
    """'n10' ... for discrete time, 'inf' for continuous time (used in metric names)."""
    return "inf" if steps is None else f"n{steps}"


def parse_steps(text: str) -> list[int | None]:
    """'10,25,inf' -> [10, 25, None]."""
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("inf", "cts", "continuous"):
            out.append(None)
        else:
            try:
                out.append(check_n_steps(int(part), "steps"))
            except ValueError:
                raise ValueError(f"steps must be integers >= 1 or 'inf', got {part!r}") from None
    return out


@dataclass
class LikelihoodRow:
    steps: int | None
    nats: float  # mean bound per example
    nats_se: float  # standard error of that mean over examples
    bits_per_dim: float
    bits_per_dim_se: float

    @property
    def label(self) -> str:
        return steps_label(self.steps)


@dataclass
class LikelihoodTable:
    rows: list[LikelihoodRow]
    num_examples: int
    dims: int
    unit: str = "dim"  # "dim" for images and vectors, "char" for text

    def row(self, steps: int | None) -> LikelihoodRow:
        return next(r for r in self.rows if r.steps == steps)

    def to_dict(self) -> dict:
        return {"num_examples": self.num_examples, "dims": self.dims, "unit": self.unit,
                "rows": [dict(asdict(r), label=r.label) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "LikelihoodTable":
        rows = [LikelihoodRow(**{k: v for k, v in r.items() if k != "label"}) for r in d["rows"]]
        return cls(rows=rows, num_examples=d["num_examples"], dims=d["dims"], unit=d.get("unit", "dim"))

    def format(self) -> str:
        lines = [f"{'steps':>6} | {'nats/example':>18} | {'bits/' + self.unit:>16}"]
        for r in self.rows:
            lines.append(f"{r.label:>6} | {r.nats:10.3f} ± {r.nats_se:5.3f} | {r.bits_per_dim:8.4f} ± {r.bits_per_dim_se:.4f}")
        lines.append(f"({self.num_examples} examples, {self.dims} dims each; ± one standard error)")
        return "\n".join(lines)


@dataclass
class LikelihoodAccumulator:
    """Running sums per step count, mergeable across data-parallel workers."""

    steps: Sequence[int | None]
    count: int = 0
    sums: dict = field(default_factory=dict)
    sq_sums: dict = field(default_factory=dict)
    dims: int = 0

    def add(self, steps: int | None, values: torch.Tensor) -> None:
        v = values.detach().double().cpu()
        self.sums[steps] = self.sums.get(steps, 0.0) + v.sum().item()
        self.sq_sums[steps] = self.sq_sums.get(steps, 0.0) + (v**2).sum().item()

    def merge(self, other: "LikelihoodAccumulator") -> None:
        self.count += other.count
        self.dims = self.dims or other.dims
        for s in other.sums:
            self.sums[s] = self.sums.get(s, 0.0) + other.sums[s]
            self.sq_sums[s] = self.sq_sums.get(s, 0.0) + other.sq_sums[s]

    def table(self, unit: str = "dim") -> LikelihoodTable:
        if self.count == 0:
            raise ValueError("no examples were evaluated: the data iterable was empty")
        rows = []
        for s in self.steps:
            mean = self.sums[s] / self.count
            var = max(self.sq_sums[s] / self.count - mean**2, 0.0) * self.count / max(self.count - 1, 1)
            se = math.sqrt(var / self.count)
            scale = 1.0 / (self.dims * LN2)
            rows.append(LikelihoodRow(s, mean, se, mean * scale, se * scale))
        return LikelihoodTable(rows, self.count, self.dims, unit)


@torch.no_grad()
def evaluate_likelihood(
    bfn,
    batches: Iterable[torch.Tensor],
    steps: Sequence[int | None] = DEFAULT_STEPS,
    n_repeats: int = 1,
    n_mc: int = 10,
    generator: torch.Generator | None = None,
    unit: str = "dim",
    progress: Callable[[int], None] | None = None,
    accumulator: LikelihoodAccumulator | None = None,
) -> LikelihoodTable:
    """Mean bound L^n + L^r per example (nats and bits per dim/char) for each n in `steps`.

    Each example's bound is averaged over n_repeats Monte Carlo draws of (t, theta, y); the
    standard error is over examples. L^r is drawn once per repeat and shared by the step counts.
    """
    n_repeats = check_n_steps(n_repeats, "n_repeats")
    acc = accumulator or LikelihoodAccumulator(list(steps))
    was_training = bfn.training
    bfn.eval()
    try:
        for x in batches:
            recon = sum(bfn.reconstruction_loss(x, generator) for _ in range(n_repeats)) / n_repeats
            for s in steps:
                bound = sum(bfn.loss(x, s, generator, n_mc) for _ in range(n_repeats)) / n_repeats
                acc.add(s, bound + recon)
            acc.count += x.shape[0]
            acc.dims = x[0].numel()
            if progress is not None:
                progress(x.shape[0])
    finally:
        bfn.train(was_training)
    return acc.table(unit)
