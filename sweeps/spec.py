"""Typed sweep specs: a base experiment config, a search space over its fields, one objective (or
several, for a Pareto front), a budget, ASHA and Optuna settings. Everything is checked here, before
Ray or any trial starts.

A search space maps a dotted config path (``flow.sigma_1``, ``optimizer.lr``, ``loss.n_steps``) to a
distribution. ``loss.n_steps`` is the training loss's n (``null``: the continuous-time loss), so one
dimension covers "L^inf or L^n with n from a list".

Every trial is judged by the same metric, measured the same way: a step count is a training
hyperparameter (the loss's n) or part of the metric's name (``val_bits_n25``), never a searched
choice of which metric to compare: a trial validated at n = 100 beats one validated at n = 25 by
construction, so a search over that choice optimises the mix, not the model. Specs that would mix
metrics are refused, saying why. The step counts an objective names are added to the trials'
``training.val_steps``; the others listed there are measured on every trial as a curve.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bfn_core import parse_steps, steps_label
from pipelines.config import ExperimentConfig, apply_overrides, flatten, format_validation_error, parse_config, read_yaml
from pipelines.errors import PipelineError
from pipelines.names import reported_metrics

LOSS_STEPS = "loss.n_steps"
MIXED = ("would rank trials measured at different step counts against each other (a trial validated at n = 100 "
         "beats one at n = 25 by construction)")
_VAL_METRIC = re.compile(r"^val_(bits|nats)_(inf|n\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Dimension(_Strict):
    """One searched value: exactly one of loguniform, uniform, choice."""
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly in log space")
    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform: [low, high], uniform: [low, high], choice: [...]")
        for k in ("loguniform", "uniform"):
            bounds = getattr(self, k)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{k} needs low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.loguniform[0]}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound the dimension: every value must make a valid config."""
        return list(self.choice) if self.choice is not None else list(self.loguniform or self.uniform)


class Objective(_Strict):
    metric: str = Field("val_bits_inf", description="a metric the trainer reports, e.g. val_bits_inf, val_bits_n25, loss")
    mode: Literal["min", "max"] = "min"

    def step_label(self) -> str | None:
        """The step label of a validation metric (val_bits_n25 -> 'n25'), else None."""
        found = _VAL_METRIC.match(self.metric)
        return found.group(2) if found else None


class Budget(_Strict):
    trials: int = Field(8, ge=1)
    concurrent: int = Field(2, ge=1, description="trials running at once; each holds its own Ray Train workers")
    time_limit_s: float | None = Field(None, gt=0, description="stop starting and running trials after this long")


class Asha(_Strict):
    enabled: bool = True
    grace_period: int = Field(ge=1, description="training steps every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class Search(_Strict):
    sampler: Literal["tpe", "random", "nsga2"] | None = Field(None, description="default: tpe, or nsga2 with several objectives")
    seed: int = 0
    storage: str | None = Field(None, description="Optuna storage URL (sqlite:///path.db, postgresql://...) for optuna-dashboard")


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: str = Field(description="experiment config YAML, relative to the spec file")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the base config for every trial")
    space: dict[str, Dimension]
    objective: Objective | None = None
    objectives: list[Objective] | None = Field(None, description="two or more: a multi-objective sweep reporting the Pareto front")
    budget: Budget = Budget()
    asha: Asha | None = Field(None, description="early stopping of poor trials (single objective only)")
    search: Search = Search()
    experiment: str | None = Field(None, description="MLflow experiment (default: the base config's)")
    source: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _dotted_keys(cls, raw):
        """`space` keys are dotted config paths; nested sections (as --set space.flow.sigma_1... makes) are joined."""
        if isinstance(raw, dict) and isinstance(raw.get("space"), dict):
            raw = {**raw, "space": _join_space(raw["space"])}
        return raw

    @model_validator(mode="after")
    def _goals(self):
        if self.objective is not None and self.objectives is not None:
            raise ValueError("give objective: (one metric) or objectives: (a list, for a Pareto front), not both")
        if self.objectives is not None:
            names = [o.metric for o in self.objectives]
            if len(names) < 2 or len(set(names)) != len(names):
                raise ValueError(f"objectives needs two or more different metrics, got {names}; use objective: for one")
            if self.asha is not None and self.asha.enabled:
                raise ValueError("asha stops trials on one metric; a multi-objective sweep runs every trial to the end: "
                                 "remove asha: (or set asha.enabled: false)")
        if self.objective is None and self.objectives is None:
            self.objective = Objective()
        return self

    @property
    def goals(self) -> list[Objective]:
        """The objectives: one, or several for a Pareto front."""
        return list(self.objectives) if self.objectives is not None else [self.objective]

    @property
    def sampler(self) -> str:
        return self.search.sampler or ("nsga2" if len(self.goals) > 1 else "tpe")

    @property
    def early_stopping(self) -> bool:
        return self.asha is not None and self.asha.enabled

    def base_config(self) -> ExperimentConfig:
        path = Path(self.base)
        if not path.is_absolute():
            path = Path(self.source).parent / path
        if not path.is_file():
            raise PipelineError(f"sweep {self.source}: base config {path} does not exist")
        sets = flatten(self.set)  # dotted keys, or nested sections (as `--set set.training.steps=40` makes)
        cfg = parse_config(apply_overrides(read_yaml(path, "base config"), sets), f"{path} (with the sweep's set:)")
        # ASHA compares trials on the validation metric, so every report must carry it: validate
        # at every checkpoint report and only there.
        steps = list(cfg.training.val_steps)
        for goal in self.goals:  # the step counts the objectives name are validated on every trial
            label = goal.step_label()
            if label is not None and label not in {steps_label(n) for n in steps}:
                steps += parse_steps(label.removeprefix("n"))
        training = cfg.training.model_copy(update={"checkpoint_every": cfg.training.val_every, "val_steps": steps})
        tracking = cfg.tracking.model_copy(update={"experiment": self.experiment or cfg.tracking.experiment})
        return cfg.model_copy(update={"training": training, "tracking": tracking})


def _join_space(space: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) & {"loguniform", "uniform", "choice"}:
            out.update(_join_space(value, name + "."))
        else:
            out[name] = value
    return out


def trial_config(base: ExperimentConfig, sampled: dict[str, Any], source: str = "sweep") -> ExperimentConfig:
    """The experiment config of one trial: the base with the sampled values set."""
    raw = apply_overrides(base.model_dump(mode="json"), dict(sampled))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, source)) from None


def trial_metrics(cfg: ExperimentConfig) -> set[str]:
    """Every metric name a trial's reports carry (pipelines.worker writes them with the same names)."""
    return reported_metrics([steps_label(n) for n in cfg.training.val_steps] if cfg.data.val else [])


def check_spec(spec: SweepSpec) -> ExperimentConfig:
    """All checks that need no cluster: every bound of the space makes a valid config, every trial is
    judged by the same reported metrics, ASHA's grace period fits. Returns the base config."""
    _check_one_measure(spec)
    base = spec.base_config()
    known = set(base.flat())
    for key, dim in spec.space.items():
        top = key.split(".")[0]
        if key not in known and top not in ("model", "flow"):  # model.* and flow.* may be unset in the base
            raise PipelineError(f"sweep {spec.source}: space.{key} is not a field of the experiment config "
                                f"(fields look like flow.sigma_1, optimizer.lr, training.batch_size)")
        wrong_flow = {"flow.sigma_1": "discrete", "flow.beta_1": "continuous and discretised"}
        if key in wrong_flow and (base.data.kind == "discrete") == (key == "flow.sigma_1"):
            other = "flow.beta_1" if key == "flow.sigma_1" else "flow.sigma_1"
            raise PipelineError(f"sweep {spec.source}: space.{key} has no effect on {base.data.kind} data; search {other} instead")
        for value in dim.extremes():
            trial_config(base, {key: value}, f"{spec.source} space.{key}={value!r}")  # raises on an invalid value
    for sampled in _corners(spec):
        cfg = trial_config(base, sampled, spec.source)
        for goal in spec.goals:
            if goal.metric not in trial_metrics(cfg):
                hint = "" if cfg.data.val else " (the base config has no data.val, so no validation metric is reported)"
                raise PipelineError(f"sweep {spec.source}: objective metric {goal.metric!r} is never reported by the trainer{hint}; "
                                    f"reported: {', '.join(sorted(trial_metrics(cfg)))}")
    if spec.early_stopping:
        if spec.asha.grace_period > base.training.steps:
            raise PipelineError(f"sweep {spec.source}: asha.grace_period={spec.asha.grace_period} exceeds training.steps="
                                f"{base.training.steps}; lower it or raise training.steps")
        if spec.asha.grace_period < base.training.val_every:
            raise PipelineError(f"sweep {spec.source}: asha.grace_period={spec.asha.grace_period} is shorter than training.val_every="
                                f"{base.training.val_every}: no objective would be reported before the first decision")
    return base


def _check_one_measure(spec: SweepSpec) -> None:
    """Refuse specs whose trials would be judged by different metrics (see the module docstring)."""
    fix = ("judge every trial by one metric (objective.metric: val_bits_n25), list the other step counts in "
           "set: training.val_steps to see them as curves, or give objectives: [...] for a Pareto front")
    if "eval_steps" in spec.space:
        raise PipelineError(f"sweep {spec.source}: space.eval_steps {MIXED}; {fix}")
    for goal in spec.goals:
        if "{" in goal.metric:
            raise PipelineError(f"sweep {spec.source}: objective metric {goal.metric!r} has a placeholder, so it {MIXED}; {fix}")
        if goal.metric == "loss" and LOSS_STEPS in spec.space:
            raise PipelineError(f"sweep {spec.source}: objective metric 'loss' is L^n for each trial's own n, so searching "
                                f"loss.n_steps {MIXED}; judge trials by a validation bound (objective.metric: val_bits_inf)")


def _corners(spec: SweepSpec):
    """A few sampled points covering every choice of the discrete dimensions (for metric checks)."""
    choices = {k: d.choice for k, d in spec.space.items() if d.choice is not None}
    longest = max((len(v) for v in choices.values()), default=1)
    for i in range(longest):
        yield {k: v[i % len(v)] for k, v in choices.items()}


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read a sweep spec, apply overrides ({dotted path: value}), validate."""
    raw = apply_overrides(read_yaml(path, "sweep spec"), overrides or {})
    try:
        return SweepSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, str(path)).replace("invalid config", "invalid sweep spec", 1)) from None


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """The search space as Ray Tune domains (OptunaSearch converts them to Optuna distributions)."""
    from ray import tune

    out = {}
    for key, dim in spec.space.items():
        if dim.loguniform is not None:
            out[key] = tune.loguniform(*dim.loguniform)
        elif dim.uniform is not None:
            out[key] = tune.uniform(*dim.uniform)
        else:
            out[key] = tune.choice(dim.choice)
    return out


def flat_spec(spec: SweepSpec) -> dict[str, str]:
    """The spec as MLflow params of the sweep's parent run."""
    out = {"sweep.name": spec.name, "sweep.base": spec.base,
           "objective.metric": ",".join(g.metric for g in spec.goals), "objective.mode": ",".join(g.mode for g in spec.goals),
           "search.sampler": spec.sampler}
    out.update({f"set.{k}": str(v) for k, v in spec.set.items()})
    for key, dim in spec.space.items():
        out[f"space.{key}"] = str(dim.model_dump(exclude_none=True))
    for section in ("budget", "asha", "search"):
        values = getattr(spec, section)
        out.update({f"{section}.{k}": str(v) for k, v in (values.model_dump() if values else {"enabled": False}).items()
                    if f"{section}.{k}" not in out})
    return out


def is_log_scale(spec: SweepSpec, key: str) -> bool:
    dim = spec.space.get(key)
    return bool(dim and dim.loguniform is not None)


def step_count_value(value: Any) -> float:
    """A step count for plotting: null (continuous time) drawn as infinity."""
    return math.inf if value is None else float(value)
