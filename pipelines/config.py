"""Typed experiment configs (pydantic), loaded from YAML and validated before anything starts."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bfn_core.factory import NETWORKS
from pipelines.errors import PipelineError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    train: str = Field(description="manifest URL of the training shards (path, file:// or s3://)")
    val: str | None = Field(None, description="manifest URL of the validation shards")
    test: str | None = Field(None, description="manifest URL of the test shards")
    kind: Literal["continuous", "discretised", "discrete"]
    num_classes: int | None = Field(None, ge=2, description="K bins (discretised), K classes (discrete), or for "
                                    "continuous data the K levels it is quantised to (L^r over those K bins)")
    shape: tuple[int, ...] | None = Field(None, description=(
        "the shape of one example as the model reads it, e.g. [32, 32, 3]; checked against the data "
        "when both are known, and what `bfn check --no-data` builds the network for"))
    loader_workers: int = Field(1, ge=0, description=(
        "DataLoader worker processes per training worker: they read and decode the shards off the training thread"))
    prefetch_batches: int = Field(2, ge=1, description="micro-batches each loader worker keeps ready ahead of the step")
    shuffle_buffer: int = Field(1000, ge=1)
    verify_sha256: bool = Field(True, description=(
        "check every shard read against the manifest's sha256 (each piece reads its shard whole and parses "
        "those bytes: no second read); a tampered shard ends training with an error naming it"))


class MLPConfig(_Strict):
    network: Literal["mlp"] = "mlp"
    hidden: int = Field(256, ge=1)
    depth: int = Field(3, ge=1)
    time_dim: int = Field(64, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class UNetConfig(_Strict):
    network: Literal["unet"] = "unet"
    width: int = Field(32, ge=4)
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = Field(1, ge=1)
    attention_resolutions: tuple[int, ...] = Field((8,), description="feature-map sizes in pixels; the middle always has attention")
    heads: int = Field(1, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    fourier_exponents: tuple[int, ...] = Field((6, 7), description="features sin/cos(2 pi 2^e x) of the input")
    conv_resample: bool = Field(True, description="learned convs to down/upsample (else pooling / nearest)")
    scale_shift: bool = Field(True, description="time as scale and shift of the norm (else added)")
    time_scale: float = Field(1000.0, gt=0.0, description="the time embedding sees time_scale * t")
    time_channel: bool = Field(False, description="append 2t - 1 as an input channel")
    project_input: bool = Field(False, description="per-pixel linear map of the input to width channels")
    skip: bool = Field(False, description="the output layer also sees the (projected) input")
    head_channels: int | None = Field(None, ge=1, description="conv head channels before a per-pixel linear output")


class VDMUNetConfig(_Strict):
    network: Literal["vdm_unet"] = "vdm_unet"
    width: int = Field(128, ge=4)
    n_blocks: int = Field(32, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    norm_groups: int | None = Field(32, ge=1)
    fourier_exponents: tuple[int, ...] = Field((5, 6), description="features sin/cos(2 pi 2^e x) of the input")
    attention_everywhere: bool = False


class TransformerConfig(_Strict):
    network: Literal["transformer"] = "transformer"
    width: int = Field(128, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(True, description="biases in the blocks, final norm and head")
    skip: bool = Field(False, description="the head also sees the input embedding")
    positions: Literal["learned", "sinusoidal"] = "learned"


ModelConfig = Annotated[Union[MLPConfig, UNetConfig, VDMUNetConfig, TransformerConfig], Field(discriminator="network")]


class FlowConfig(_Strict):
    sigma_1: float | None = Field(None, gt=0.0, lt=1.0, description="continuous and discretised data")
    beta_1: float | None = Field(None, gt=0.0, description="discrete data: beta_1 itself, not its square root")


class LossConfig(_Strict):
    n_steps: int | None = Field(None, ge=1, description="n of the discrete-time loss L^n; null: the continuous-time loss")
    n_mc: int = Field(1, ge=1, description="Monte Carlo draws of y per example in the discrete-time loss")
    # Where the reference code departs from the paper's text, both are named here (defaults: the paper).
    reconstruction_std_scale: float = Field(1.0, gt=0.0, description=(
        "continuous data on K levels: the std of p_O(x | theta; 1) in units of sigma_1 (the paper: 1; the "
        "reference code: 0.7 for 16-bin CIFAR-10)"))
    receiver: Literal["mixture", "factorised"] = Field("mixture", description=(
        "discrete data, discrete-time loss: the paper's K-dimensional receiver mixture, or the reference code's "
        "per-class-coordinate two-component mixtures ('factorised', a looser bound)"))


class OptimizerConfig(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(2e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    weight_decay_on: Literal["all", "weights"] = Field("all", description=(
        "'all' parameters, or only the 'weights' of linear and convolution layers (not biases, norms, "
        "embeddings: nanoGPT's rule, which the reference's text8 transformer uses)"))
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up (0: none, as the reference)")


class TrainingConfig(_Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(32, ge=1, description="global: examples per optimiser step over all workers")
    micro_batch_size: int | None = Field(None, ge=1, description=(
        "examples per worker per forward pass; the rest of the global batch is gradient accumulation "
        "(default: batch_size / num_workers, no accumulation)"))
    grad_clip: float | None = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(500, ge=1)
    val_batches: int | None = Field(4, ge=1, description="validation batches per worker (null: the whole validation set)")
    val_repeats: int = Field(1, ge=1, description="Monte Carlo repeats of the validation bound per example")
    val_steps: list[int | None] = Field(default_factory=lambda: [None], description=(
        "step counts of the validation bound (null = continuous time); the first one scores the best checkpoint"))
    run_model: Literal["final", "best"] = Field("final", description=(
        "the run's model (what eval, sample and register use): the final EMA weights, or those of the checkpoint "
        "with the best validation bound; both are logged"))
    log_every: int = Field(10, ge=1)
    sample_steps: int = Field(100, ge=1, description="sampling steps for the pictures at validation")
    num_samples: int = Field(16, ge=1)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description=(
        "the network's autocast: bf16 or fp32 (auto: bf16 on GPU, fp32 on CPU); the flow and loss always run in fp32"))
    compile: Literal["auto", "on", "off"] = Field("auto", description=(
        "torch.compile the network for training, validation and sampling (auto: on for GPU)"))


class ScalingConfig(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    max_failures: int = Field(2, ge=0, description="worker or node failures to recover from")


class TrackingConfig(_Strict):
    experiment: str = "bfn"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    system_metrics: Literal["auto", "on", "off"] = Field(
        "auto", description="MLflow system metrics (CPU, memory, GPU) from rank 0's machine; auto: on for GPU runs")


class ConditioningConfig(_Strict):
    """Class-conditional training from labelled shards (the manifest's `y` field), ready for
    classifier-free guidance: each label is replaced by the null class with probability label_dropout."""

    num_classes: int = Field(ge=2, description="label classes C; the shards' labels must be 0..C-1")
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "probability that an example trains the unconditional (null-class) output; > 0 for guidance"))


class StorageConfig(_Strict):
    path: str | None = Field(None, description="checkpoint storage: local path or s3://bucket/prefix (default ./.bfn/ray_results)")


class ExperimentConfig(_Strict):
    data: DataConfig
    model: ModelConfig
    flow: FlowConfig = FlowConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig
    scaling: ScalingConfig = ScalingConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    conditioning: ConditioningConfig | None = None

    @model_validator(mode="after")
    def _kind_needs(self):
        kind = self.data.kind
        if kind in ("continuous", "discretised") and self.flow.sigma_1 is None:
            raise ValueError(f"flow.sigma_1 is required for {kind} data (a value in (0, 1), e.g. 0.001)")
        if kind == "discrete" and self.flow.beta_1 is None:
            raise ValueError("flow.beta_1 is required for discrete data (> 0, e.g. 9.0 for binarised MNIST)")
        if kind in ("discretised", "discrete") and self.data.num_classes is None:
            raise ValueError(f"data.num_classes is required for {kind} data (an integer >= 2)")
        t, workers = self.training, self.scaling.num_workers
        if t.batch_size % workers:
            raise ValueError(f"training.batch_size {t.batch_size} (the global batch) is not divisible by "
                             f"scaling.num_workers {workers}: choose a multiple of {workers}")
        if (t.batch_size // workers) % self.micro_batch_size:
            raise ValueError(f"training.micro_batch_size {t.micro_batch_size} does not divide the "
                             f"{t.batch_size // workers} examples each of {workers} worker(s) gets per step "
                             f"(training.batch_size {t.batch_size}): choose a divisor of {t.batch_size // workers}")
        if t.run_model == "best" and not self.data.val:
            raise ValueError("training.run_model 'best' needs validation data: set data.val or use 'final'")
        return self

    @property
    def micro_batch_size(self) -> int:
        """Examples per worker per forward pass."""
        return self.training.micro_batch_size or self.training.batch_size // self.scaling.num_workers

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per worker per optimiser step (gradient accumulation)."""
        return self.training.batch_size // (self.scaling.num_workers * self.micro_batch_size)

    def bfn_kwargs(self) -> dict[str, Any]:
        """Arguments for bfn_core.make_bfn (apart from the data shape)."""
        model = self.model.model_dump()
        network = model.pop("network")
        if self.conditioning is not None:  # absent otherwise: an unconditional model's meta stays as it was
            model["label_classes"] = self.conditioning.num_classes
        return dict(kind=self.data.kind, network=network, num_classes=self.data.num_classes,
                    sigma_1=self.flow.sigma_1, beta_1=self.flow.beta_1,
                    reconstruction_std_scale=self.loss.reconstruction_std_scale, receiver=self.loss.receiver, **model)

    @property
    def label_classes(self) -> int:
        """The label classes a conditional model is trained on; 0 when unconditional."""
        return self.conditioning.num_classes if self.conditioning is not None else 0

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings from the command line -> {dotted path: typed value}, each value read as
    YAML. The one place where override text becomes values; everything after passes values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set takes key=value (e.g. training.steps=100), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise PipelineError(f"--set {key.strip()}: {value!r} is not a YAML value ({yaml_problem(err)})") from None
    return out


def apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of a raw config dict with each dotted path set to its value (sections created as needed)."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = raw
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PipelineError(f"--set {key}: {part} is not a section of the config")
        node[leaf] = value
    return raw


def yaml_problem(err: "yaml.YAMLError") -> str:
    """What is wrong and where, one line: 'line 4, column 9: mapping values are not allowed here'."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    if mark is None:
        return problem
    context = getattr(err, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping (a config, a sweep spec), or a one-line error saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} {path} not found: pass the path of a YAML file (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PipelineError(f"{what} {path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{what} {path} must hold a mapping of sections (data, model, training, ...)")
    return raw


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: the field's dotted path and what is allowed."""
    problems = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        if len(parts) > 1 and parts[0] == "model" and parts[1] in NETWORKS:
            parts.pop(1)  # pydantic names the union member; users know the field by its path
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see configs/ for examples)"
        elif e["type"] == "missing":
            msg = "field required"
        elif e["type"] == "union_tag_invalid":
            tags = e["ctx"]["expected_tags"]
            loc, msg = f"{loc}.{e['ctx']['discriminator'].strip(chr(39))}", None
            problems.append(f"{loc} must be one of {tags}, got {e['ctx']['tag']!r}")
            continue
        problems.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid config {source}: " + "; ".join(problems)


def parse_config(raw: dict, source: str = "") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply overrides ({dotted path: value}, see parse_overrides), validate."""
    return parse_config(apply_overrides(read_yaml(path), overrides or {}), str(path))
