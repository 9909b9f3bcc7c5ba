"""Likelihood evaluation: the bound L^n + L^r over a data set, for several n, with standard errors."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch

from bfn_core._checks import check_n_steps
from bfn_core.errors import BfnError

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
                raise BfnError(f"steps must be integers >= 1 or 'inf', got {part!r}") from None
    return out


@dataclass
class LikelihoodRow:
    """The bound at one step count, with two standard errors that measure different things:
    ``se_examples`` across test examples (how far the mean might move on other data from the same
    distribution), ``se_mc`` across Monte Carlo repeats of the whole test set (the noise of the estimate
    on this data, as the reference code reports it; None with a single repeat)."""

    steps: int | None
    nats: float  # mean bound per example
    nats_se_examples: float
    nats_se_mc: float | None
    bits_per_dim: float  # per dimension, or per character for text (the table's unit)
    bits_se_examples: float
    bits_se_mc: float | None

    @property
    def label(self) -> str:
        return steps_label(self.steps)


def _old_row(r: dict) -> dict:
    """Rows written before the two standard errors had their own names carried one across examples."""
    if "nats_se" in r:
        r = {k: v for k, v in r.items() if k not in ("nats_se", "bits_per_dim_se")} | {
            "nats_se_examples": r["nats_se"], "bits_se_examples": r["bits_per_dim_se"], "nats_se_mc": None,
            "bits_se_mc": None}
    return r


@dataclass
class LikelihoodTable:
    rows: list[LikelihoodRow]
    num_examples: int
    dims: int
    unit: str = "dim"  # "dim" for images and vectors, "char" for text
    n_repeats: int = 1

    def row(self, steps: int | None) -> LikelihoodRow:
        return next(r for r in self.rows if r.steps == steps)

    def to_dict(self) -> dict:
        return {"num_examples": self.num_examples, "dims": self.dims, "unit": self.unit, "n_repeats": self.n_repeats,
                "rows": [dict(asdict(r), label=r.label) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "LikelihoodTable":
        rows = [LikelihoodRow(**{k: v for k, v in _old_row(r).items() if k != "label"}) for r in d["rows"]]
        return cls(rows=rows, num_examples=d["num_examples"], dims=d["dims"], unit=d.get("unit", "dim"),
                   n_repeats=d.get("n_repeats", 1))

    def monotone_violations(self, z: float = 2.0) -> list[tuple[str, str]]:
        """Pairs of step counts (fewer, more) where the bound at more steps exceeds the bound at fewer by
        more than z combined Monte Carlo standard errors (L^n must fall towards L^inf as n grows)."""
        ordered = sorted(self.rows, key=lambda r: math.inf if r.steps is None else r.steps)
        bad = []
        for a, b in zip(ordered, ordered[1:]):
            se = math.hypot(a.nats_se_mc or a.nats_se_examples, b.nats_se_mc or b.nats_se_examples)
            if b.nats > a.nats + z * se:
                bad.append((a.label, b.label))
        return bad

    def format(self) -> str:
        mc = self.n_repeats > 1
        lines = [f"{'steps':>6} | {'nats/example':>18} | {'bits/' + self.unit:>16}" + (f" | {'MC s.e.':>8}" if mc else "")]
        for r in self.rows:
            lines.append(f"{r.label:>6} | {r.nats:10.3f} ± {r.nats_se_examples:5.3f} | {r.bits_per_dim:8.4f} ± "
                         f"{r.bits_se_examples:.4f}" + (f" | {r.bits_se_mc:8.4f}" if mc else ""))
        lines.append(f"({self.num_examples} examples, {self.dims} dims each, {self.n_repeats} repeat(s); ± one standard "
                     "error across examples" + ("; MC s.e.: across repeats, in bits" if mc else "") + ")")
        return "\n".join(lines)


@dataclass
class LikelihoodAccumulator:
    """Running sums per step count, mergeable across data-parallel workers.

    Per step count: the sum and sum of squares over examples of each example's bound (averaged over
    repeats), and for each repeat the sum over examples of that repeat's bound. Change it only through
    add_batch, merge and all_reduce: the sums, count and dims must move together.
    """

    steps: Sequence[int | None]
    n_repeats: int = 1
    count: int = 0
    sums: dict = field(default_factory=dict)
    sq_sums: dict = field(default_factory=dict)
    repeat_sums: dict = field(default_factory=dict)
    dims: int = 0  # data dimensions per example; 0 until a batch (or a merge, or an all-reduce) tells

    def add_batch(self, bounds: Mapping[int | None, torch.Tensor], dims: int) -> None:
        """Add one batch: bounds[s] is (n_repeats, B), the bound at step count s of each example per repeat,
        for every s in steps; dims is the number of data dimensions of one example."""
        if set(bounds) != set(self.steps):
            raise BfnError(f"a batch needs bounds for the step counts {list(self.steps)}, got {list(bounds)}")
        sizes = {v.reshape(self.n_repeats, -1).shape[1] for v in bounds.values()}
        if len(sizes) != 1:
            raise BfnError(f"every step count's bounds must cover the same examples, got batch sizes {sorted(sizes)}")
        self._check_dims(dims)
        for s in self.steps:
            self._add(s, bounds[s])
        self.count += sizes.pop()
        self.dims = dims

    def _check_dims(self, dims: int) -> None:
        if self.dims and dims and dims != self.dims:
            raise BfnError(f"examples of {dims} dimensions cannot join sums over examples of {self.dims}")

    def _add(self, steps: int | None, per_repeat: torch.Tensor) -> None:
        v = per_repeat.detach().double().cpu().reshape(self.n_repeats, -1)
        mean = v.mean(0)
        self.sums[steps] = self.sums.get(steps, 0.0) + mean.sum().item()
        self.sq_sums[steps] = self.sq_sums.get(steps, 0.0) + (mean**2).sum().item()
        by_repeat = v.sum(1).tolist()
        old = self.repeat_sums.get(steps, [0.0] * self.n_repeats)
        self.repeat_sums[steps] = [a + b for a, b in zip(old, by_repeat)]

    def merge(self, other: "LikelihoodAccumulator") -> None:
        """Add another worker's sums to these (e.g. the parts returned by Ray tasks)."""
        if other.n_repeats != self.n_repeats:
            raise BfnError(f"cannot merge sums over {other.n_repeats} repeats into sums over {self.n_repeats}")
        self._check_dims(other.dims)
        self.count += other.count
        self.dims = self.dims or other.dims
        for s in other.sums:
            self.sums[s] = self.sums.get(s, 0.0) + other.sums[s]
            self.sq_sums[s] = self.sq_sums.get(s, 0.0) + other.sq_sums[s]
            old = self.repeat_sums.get(s, [0.0] * self.n_repeats)
            self.repeat_sums[s] = [a + b for a, b in zip(old, other.repeat_sums[s])]

    def all_reduce(self, device: torch.device | str | None = None) -> "LikelihoodAccumulator":
        """Sum every rank's sums into each rank's accumulator (in place, returned) when a torch.distributed
        process group is initialised; a no-op otherwise. Every rank must call it, with the same steps.

        device is where the collective's tensors live: the rank's GPU for NCCL, the CPU for gloo; by
        default the one the group's backend needs. dims is reduced with MAX, not summed: a rank that saw
        no examples has dims 0.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if device is None:
            nccl = dist.get_backend() == dist.Backend.NCCL
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        vec = torch.tensor(self._to_vector(), dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        dims = torch.tensor([self.dims], dtype=torch.int64, device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        self._load_vector(vec.tolist())
        self.dims = int(dims.item())
        return self

    def _to_vector(self) -> list[float]:
        """The count and every sum as one flat list, in the order of steps (the all-reduce's payload)."""
        out = [float(self.count)]
        for s in self.steps:
            out += [self.sums.get(s, 0.0), self.sq_sums.get(s, 0.0), *self.repeat_sums.get(s, [0.0] * self.n_repeats)]
        return out

    def _load_vector(self, vec: Sequence[float]) -> None:
        """Replace the count and sums by those of a list written by _to_vector."""
        self.count = int(round(vec[0]))
        width = 2 + self.n_repeats
        for i, s in enumerate(self.steps):
            part = vec[1 + i * width: 1 + (i + 1) * width]
            self.sums[s], self.sq_sums[s], self.repeat_sums[s] = part[0], part[1], list(part[2:])

    def table(self, unit: str = "dim") -> LikelihoodTable:
        if self.count == 0:
            raise BfnError("no examples were evaluated: the data iterable was empty; check the data's "
                           "location and that its split holds examples")
        rows = []
        n, r = self.count, self.n_repeats
        scale = 1.0 / (self.dims * LN2)
        for s in self.steps:
            mean = self.sums[s] / n
            var = max(self.sq_sums[s] / n - mean**2, 0.0) * n / max(n - 1, 1)
            se_examples = math.sqrt(var / n)
            se_mc = None
            if r > 1:
                means = [total / n for total in self.repeat_sums[s]]
                m = sum(means) / r
                se_mc = math.sqrt(sum((v - m) ** 2 for v in means) / (r - 1) / r)
            rows.append(LikelihoodRow(s, mean, se_examples, se_mc, mean * scale, se_examples * scale,
                                      None if se_mc is None else se_mc * scale))
        return LikelihoodTable(rows, n, self.dims, unit, r)


@torch.no_grad()
def accumulate_likelihood(
    bfn,
    batches: Iterable[torch.Tensor],
    accumulator: LikelihoodAccumulator,
    n_mc: int = 10,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> LikelihoodAccumulator:
    """Add the bound L^n + L^r of every example of `batches` to the accumulator, for each of its step
    counts and repeats (an empty iterable adds nothing: a data-parallel share may hold only padding).

    Each repeat draws (t, theta, y) afresh for every example; L^r is drawn once per repeat and shared
    by the step counts. Runs the model in eval mode (no dropout) and restores its mode after.
    A batch may be a pair (x, labels) for a conditional model: the bound is then on -ln p(x | labels).
    """
    acc = accumulator
    was_training = bfn.training
    bfn.eval()
    try:
        for batch in batches:
            x, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
            cond = {} if labels is None else {"y": labels}  # unconditional calls stay as they were
            recon = torch.stack([bfn.reconstruction_loss(x, generator, **cond) for _ in range(acc.n_repeats)])
            bounds = {s: torch.stack([bfn.loss(x, s, generator, n_mc, **cond) for _ in range(acc.n_repeats)]) + recon
                      for s in acc.steps}
            acc.add_batch(bounds, dims=x[0].numel())
            if progress is not None:
                progress(x.shape[0])
    finally:
        bfn.train(was_training)
    return acc


def evaluate_likelihood(
    bfn,
    batches: Iterable[torch.Tensor],
    steps: Sequence[int | None] = DEFAULT_STEPS,
    n_repeats: int = 1,
    n_mc: int = 10,
    generator: torch.Generator | None = None,
    unit: str = "dim",
    progress: Callable[[int], None] | None = None,
) -> LikelihoodTable:
    """Mean bound L^n + L^r per example (nats and bits per dim/char) for each n in `steps`, averaged over
    n_repeats Monte Carlo draws (see accumulate_likelihood)."""
    acc = LikelihoodAccumulator(list(steps), n_repeats=check_n_steps(n_repeats, "n_repeats"))
    return accumulate_likelihood(bfn, batches, acc, n_mc=n_mc, generator=generator, progress=progress).table(unit)
