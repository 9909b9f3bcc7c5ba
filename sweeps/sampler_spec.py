"""The spec of a sampler sweep (`kind: sampler`): which samplers, step counts, time grids and, for a
class-conditional model, which classes and guidance weights and spaces to measure on one trained model.
Checked here, before any model loads or Ray starts; sweeps.sampler_sweep runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import apply_overrides, format_validation_error, read_yaml
from pipelines.errors import PipelineError


class SamplerSweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["sampler"]
    model: str = Field(description="run id, runs:/RUN, models:/NAME@ALIAS or models:/NAME/VERSION, or a checkpoint folder")
    samplers: list[str] = Field(default_factory=lambda: ["bfn", "ode2", "sde2"], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [10, 20, 50, 100], min_length=1)
    grids: list[str | None] = Field(default_factory=lambda: [None], min_length=1, description="null: each sampler's own grid")
    final: str = "sample"
    n_samples: int = Field(256, ge=2)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    dataset: str | None = Field(None, description="the quality metrics' data set (default: the model's training data)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    tolerance: float = Field(0.05, ge=0, description="recommend the fewest NFE within this fraction of the best quality")
    recommend: bool = Field(True, description="tag a registered model version with the recommended sampler")
    experiment: str | None = None
    classes: int | str | list[int | str] | None = Field(
        None, description="a conditional model: draw for these classes, cycled (ids, names or 'all'); null: unconditional")
    guidance: list[float] | None = Field(None, min_length=1, description="guidance weights w with classes (default [0])")
    guidance_spaces: list[Literal["output", "params"]] = Field(default_factory=lambda: ["output"], min_length=1)
    min_class_accuracy: float | None = Field(None, ge=0, le=1, description="recommend only points at least this accurate")
    source: str = Field("", exclude=True)

    @field_validator("steps")
    @classmethod
    def _positive(cls, steps):
        if any(s < 1 for s in steps):
            raise ValueError(f"step counts must be >= 1, got {steps}")
        return sorted(set(steps))

    def check(self) -> None:
        from pipelines.sampling import check_guidance_choice, check_sampler_choice

        for sampler in self.samplers:
            for grid in self.grids:
                check_sampler_choice(sampler, grid, self.final)
        if self.classes is None and (self.guidance is not None or self.min_class_accuracy is not None):
            raise PipelineError("guidance and min_class_accuracy need classes: the class ids (or 'all') to draw samples for")
        for w in self.guidance or []:
            check_guidance_choice(self.classes, w, self.guidance_spaces[0])

    def points(self) -> list[dict]:
        """measure_sampler keywords of every point (pipelines.sample_quality.point_grid)."""
        from pipelines.sample_quality import guidance_weights, point_grid

        return point_grid(self.samplers, self.steps, self.grids, guidance_weights(self.classes, self.guidance),
                          self.guidance_spaces)


def is_sampler_spec(path: str | Path) -> bool:
    raw = read_yaml(path, "sweep spec")
    return isinstance(raw, dict) and raw.get("kind") == "sampler"


def load_sampler_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SamplerSweepSpec:
    raw = apply_overrides(read_yaml(path, "sweep spec"), overrides or {})
    try:
        spec = SamplerSweepSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, str(path)).replace("invalid config", "invalid sweep spec", 1)) from None
    try:
        spec.check()
    except PipelineError as err:
        raise PipelineError(f"sweep {path}: {str(err).replace('--', '')}") from None
    return spec


