"""`check(cfg)`: what a config will run, measured without running it and without Ray.

The full-size network is built on PyTorch's meta device (shapes only, no memory, no arithmetic), so
a 170M-parameter transformer is counted in a second on a laptop. Activation memory per example is
what autograd saves for the backward pass of one forward of the network, measured on the meta device
at batch 1 and 2: the difference is the per-example part, free of anything the batch does not scale
(parameters saved by reference, the time embedding's constants).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from bfn_core import make_bfn
from pipelines.config import ExperimentConfig
from pipelines.errors import PipelineError
from pipelines.prepare import DataCheck, data_report


@dataclass
class CheckReport:
    parameters: int
    activation_bytes_per_example: int
    data_shape: tuple[int, ...]
    global_batch: int
    workers: int
    micro_batch: int
    accumulation_steps: int
    use_gpu: bool
    data: list[DataCheck] = field(default_factory=list)

    @property
    def data_ok(self) -> bool:
        return all(d.ok for d in self.data)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["data_shape"] = list(self.data_shape)
        out["activation_mib_per_example"] = self.activation_bytes_per_example / 2**20
        out["activation_gib_per_worker_pass"] = self.activation_bytes_per_example * self.micro_batch / 2**30
        return out


def _saved_bytes(net: torch.nn.Module, net_in_shape: tuple[int, ...], batch: int) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.zeros(batch, *net_in_shape), torch.zeros(batch))
    return total


def network_size(cfg: ExperimentConfig, data_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, float32 activation bytes saved for backward per example) of the full-size network."""
    with torch.device("meta"):
        bfn = make_bfn(data_shape=tuple(data_shape), **cfg.bfn_kwargs())
    net_in_shape = (*data_shape, bfn.flow.net_in_channels)
    parameters = sum(p.numel() for p in bfn.parameters())
    bfn.train()  # dropout and all: the training pass is what must fit
    per_example = _saved_bytes(bfn.net, net_in_shape, 2) - _saved_bytes(bfn.net, net_in_shape, 1)
    return parameters, per_example


def check(cfg: ExperimentConfig, *, look_at_data: bool = True) -> CheckReport:
    """Parameter count, activation memory, batch layout and (unless look_at_data is off) the data."""
    data: list[DataCheck] = []
    shape = None
    if look_at_data:
        report = data_report(cfg)
        data, shape = report.checks, report.shape
    shape = shape or cfg.data.shape
    if shape is None:
        raise PipelineError("the data shape is unknown without reading the data: set data.shape in the config "
                            "(e.g. [32, 32, 3]) or drop --no-data")
    parameters, per_example = network_size(cfg, shape)
    return CheckReport(parameters, per_example, tuple(shape), cfg.training.batch_size, cfg.scaling.num_workers,
                       cfg.micro_batch_size, cfg.accumulation_steps, cfg.scaling.use_gpu, data)


def human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"
