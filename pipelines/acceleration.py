"""How the network runs on its device: autocast precision, torch.compile, memory format, TF32,
fused AdamW and the DDP options; one place, so training, validation, evaluation, sampling and the
benchmark run the same network the same way.

`auto` is the fast choice on CUDA (bf16 autocast, compiled network, channels_last convolutions)
and eager float32 elsewhere: on CPUs bf16 autocast is usually slower than float32, and inductor's
C++ compile takes about a minute for a small U-Net on two cores. Only the network is compiled and
autocast: the flow and the loss stay eager in float32 (BFN.loss turns autocast off around them),
and t enters the network as a tensor, so the random times of each batch never recompile it.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

Precision = Literal["auto", "bf16", "fp32"]
CompileSetting = Literal["auto", "on", "off"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
COMPILE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")


@dataclass(frozen=True)
class Acceleration:
    """The resolved settings for one device: autocast dtype (None: float32), compile, channels_last."""

    device: torch.device
    dtype: torch.dtype | None
    compile: bool
    backend: str | Callable = "inductor"  # a torch.compile backend: a name or a compiler function
    layout: Literal["auto", "nchw", "nhwc"] = "auto"  # auto: channels_last (NHWC) convolutions on CUDA

    def __post_init__(self):
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def resolve(cls, device: torch.device | str, precision: Precision = "auto", compile: CompileSetting = "auto",
                backend: str | Callable = "inductor") -> "Acceleration":
        """Settings from the config's words; `auto` = bf16 and compile on CUDA, neither elsewhere."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda) else None
        return cls(device, dtype, compile == "on" or (compile == "auto" and cuda), backend)

    @property
    def channels_last(self) -> bool:
        """NHWC convolutions: what cuDNN's tensor-core kernels read; on CPU they only add copies."""
        return self.layout == "nhwc" or (self.layout == "auto" and self.device.type == "cuda")

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"

    def autocast(self) -> AbstractContextManager:
        """The network's autocast (off for float32); BFN.loss keeps the flow and loss out of it."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def place(self, bfn: nn.Module) -> nn.Module:
        """Move the BFN to the device and, for convolutional networks on GPU, to channels_last."""
        bfn.to(self.device)
        if self.channels_last and has_convolutions(bfn.net):
            bfn.net.to(memory_format=torch.channels_last)
        return bfn

    def compile_network(self, bfn: nn.Module) -> nn.Module:
        """Compile the BFN's network in place when set: state_dict keys stay as they are, so checkpoints
        and logged models are the same compiled or not. Deep-copy (the EMA) before, not after."""
        if self.compile:
            bfn.net.compile(backend=self.backend)
        return bfn

    def prepare(self, bfn: nn.Module) -> nn.Module:
        """place, then compile_network: a model for evaluation or sampling."""
        return self.compile_network(self.place(bfn))

    def describe(self) -> str:
        return (f"{self.device.type} {self.precision}{' compiled' if self.compile else ''}"
                f"{' channels_last' if self.channels_last else ''}")


def has_convolutions(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def configure_backends(device: torch.device, tf32: bool = True) -> None:
    """TF32 matmuls and convolutions (float32 work left outside autocast) and cuDNN autotuning on CUDA."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes per run: the autotuned kernels are reused


def fused_adamw_available(device: torch.device) -> bool:
    """One fused kernel for the whole AdamW step: CUDA only (the CPU path is the foreach one)."""
    return torch.device(device).type == "cuda"


def match_optimizer_layout(opt: torch.optim.Optimizer) -> None:
    """Give each optimiser state tensor its parameter's memory layout: a checkpoint written by an
    NCHW run and restored into channels_last parameters would otherwise mix layouts in the fused kernel."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def ddp_options(accumulation_steps: int) -> dict:
    """DistributedDataParallel options: gradients as views of the all-reduce buckets (no copy), no
    search for unused parameters (every parameter takes part in every step), and a static graph
    when no micro-batch runs under no_sync: DDP's static_graph with no_sync fails or, worse, stops
    all-reducing (pytorch/pytorch#143580, fix pending in #187732)."""
    return {"gradient_as_bucket_view": True, "find_unused_parameters": False,
            "static_graph": accumulation_steps == 1}


# bf16 dense peak (FLOP/s, no sparsity) by device-name fragment, for model FLOP utilisation.
BF16_PEAK_FLOPS = {  # checked in order: a fragment that contains another comes first
    "GH200": 989e12, "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,  # H100 SXM (HBM3)
    "B200": 2250e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "V100": 125e12,  # V100: fp16 tensor cores (no bf16)
}


def bf16_peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak, or None when the name is not in the table."""
    for fragment, peak in BF16_PEAK_FLOPS.items():
        if fragment.lower() in device_name.lower():
            return peak
    return None
