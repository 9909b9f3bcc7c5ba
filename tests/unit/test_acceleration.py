"""The GPU performance path, exercised on CPU: autocast precision, compile without recompiles across
random times, layouts, DDP options (on a real two-process gloo group) and the peak-FLOPs table."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.testing import CompileCounter

from pipelines.acceleration import (
    Acceleration,
    bf16_peak_flops,
    ddp_options,
    match_optimizer_layout,
)
from pipelines.config import parse_config
from pipelines.worker import build_training, optimisation_step


def _cfg(network: dict | None = None, **training):
    raw = {"data": {"train": "m.json", "kind": "discretised", "num_classes": 16},
           "model": network or {"network": "unet", "width": 8, "channel_mults": [1, 2], "attention_resolutions": [4],
                                "fourier_exponents": []},
           "flow": {"sigma_1": 0.02}, "training": {"steps": 10, "batch_size": 8, **training}}
    return parse_config(raw)


def _x(b=8, shape=(8, 8, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, 16, (b, *shape), generator=g).float() + 1) / 16 - 1


def test_auto_is_bf16_and_compiled_on_gpu_and_plain_fp32_on_cpu():
    cpu, gpu = Acceleration.resolve("cpu"), Acceleration.resolve("cuda")
    assert (cpu.dtype, cpu.compile, cpu.channels_last) == (None, False, False)
    assert (gpu.dtype, gpu.compile, gpu.channels_last) == (torch.bfloat16, True, True)
    forced = Acceleration.resolve("cpu", "bf16", "on")
    assert (forced.dtype, forced.compile, forced.precision) == (torch.bfloat16, True, "bf16")
    assert Acceleration.resolve("cuda", "fp32", "off").dtype is None


def test_bf16_network_keeps_the_loss_in_float32_and_close_to_fp32():
    cfg = _cfg(precision="bf16")
    bfn, _, _ = build_training(cfg, (8, 8, 1), Acceleration.resolve("cpu", "fp32", "off"))
    x = _x()
    losses = {}
    for precision in ("fp32", "bf16"):
        with Acceleration.resolve("cpu", precision, "off").autocast():
            losses[precision] = bfn.loss(x, generator=torch.Generator().manual_seed(1))
    assert losses["bf16"].dtype == torch.float32
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0.05, atol=0.05)


NETWORKS = {
    "unet": ({"network": "unet", "width": 8, "channel_mults": [1, 2], "attention_resolutions": [4],
              "fourier_exponents": []}, "discretised", (8, 8, 1)),
    "vdm_unet": ({"network": "vdm_unet", "width": 8, "n_blocks": 1, "norm_groups": 4, "dropout": 0.1},
                 "discretised", (8, 8, 1)),
    "transformer": ({"network": "transformer", "width": 16, "depth": 1, "heads": 2}, "discrete", (12,)),
}


def _cfg_for(network: str, **training):
    net, kind, _ = NETWORKS[network]
    raw = {"data": {"train": "m.json", "kind": kind, "num_classes": 16}, "model": net,
           "flow": {"sigma_1": 0.02} if kind == "discretised" else {"beta_1": 1.0},
           "training": {"steps": 10, "batch_size": 8, **training}}
    return parse_config(raw)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_compiled_network_trains_like_eager_without_recompiling_for_new_times(network):
    """The loss draws fresh t every step; the compiled network sees t as a tensor, so it compiles once
    (a counting backend records every graph compiled). Eager and compiled runs take the same steps."""
    cfg = _cfg_for(network, grad_clip=1.0, ema_decay=0.9)
    shape = NETWORKS[network][2]
    data = [_x(seed=s) if len(shape) == 3 else torch.randint(0, 16, (8, *shape), generator=torch.Generator().manual_seed(s))
            for s in range(4)]
    counter = CompileCounter()
    losses = {}
    for name, accel in {"eager": Acceleration.resolve("cpu", "fp32", "off"),
                        "compiled": Acceleration("cpu", None, True, backend=counter)}.items():
        bfn, ema, opt = build_training(cfg, shape, accel)
        torch.manual_seed(3)
        losses[name] = [optimisation_step(bfn, bfn, ema, opt, [data[s]], cfg, s, 64, accel)[0].item()
                        for s in range(4)]
        state = bfn.state_dict()
    assert counter.frame_count == 1, f"{counter.frame_count} compilations over 4 steps with random t"
    assert all("_orig_mod" not in k for k in state), "compiling changed the state_dict keys"
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)


def test_the_ema_is_copied_before_compiling_and_compiles_separately():
    counter = CompileCounter()
    bfn, ema, _ = build_training(_cfg(), (8, 8, 1), Acceleration("cpu", None, True, backend=counter))
    assert ema.net is not bfn.net and not ema.training
    with torch.no_grad():
        ema.output_distribution(ema.flow.prior((2, 8, 8, 1)), torch.full((2,), 0.5))
    assert counter.frame_count == 1


def test_optimizer_state_takes_the_layout_of_channels_last_parameters():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters())
    opt.state[conv.weight] = {"exp_avg": torch.randn(conv.weight.shape), "step": torch.tensor(3.0)}
    before = opt.state[conv.weight]["exp_avg"].clone()
    match_optimizer_layout(opt)
    after = opt.state[conv.weight]["exp_avg"]
    assert after.stride() == conv.weight.stride() and torch.equal(after, before)


def test_ddp_uses_a_static_graph_only_without_no_sync():
    assert ddp_options(1)["static_graph"] and not ddp_options(4)["static_graph"]
    assert ddp_options(2)["gradient_as_bucket_view"] and not ddp_options(2)["find_unused_parameters"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, accumulation: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = _cfg(network={"network": "mlp", "hidden": 16, "depth": 1}, batch_size=4 * accumulation)
    bfn, ema, opt = build_training(cfg, (8, 8, 1), Acceleration.resolve("cpu"))
    model = torch.nn.parallel.DistributedDataParallel(bfn, **ddp_options(accumulation))
    torch.manual_seed(rank)  # different data and noise per rank: only the all-reduce makes them agree
    for step in range(3):
        micro = [_x(2, seed=10 * rank + step * accumulation + i) for i in range(accumulation)]
        optimisation_step(model, bfn, ema, opt, micro, cfg, step, 64)
    out[rank] = torch.cat([p.detach().flatten() for p in bfn.parameters()])
    dist.destroy_process_group()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_ddp_ranks_stay_identical_with_and_without_accumulation(accumulation):
    """A static graph under no_sync silently stops the all-reduce in some PyTorch versions: after a few
    steps on different data the two ranks' weights would differ."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_rank, args=(_free_port(), accumulation, out), nprocs=2, join=True)
        torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("Tesla T4", None)])
def test_bf16_peaks_by_device_name(name, peak):
    assert bf16_peak_flops(name) == peak


def test_sampling_under_bf16_autocast_uses_float32_outputs():
    """The sampler's distributions get float32 network outputs under bf16 autocast, as the loss does."""
    bfn, _, _ = build_training(_cfg(), (8, 8, 1), Acceleration.resolve("cpu"))
    theta, t = bfn.flow.prior((2, 8, 8, 1)), torch.full((2,), 0.7)
    with Acceleration.resolve("cpu", "bf16", "off").autocast():
        dist = bfn.output_distribution(theta, t)
        samples = bfn.sample((2, 8, 8, 1), 3, generator=torch.Generator().manual_seed(0))
    assert dist.mu_x.dtype == torch.float32 and dist.sigma_x.dtype == torch.float32
    assert samples.dtype == torch.float32 and samples.abs().max() <= 1


def test_training_batches_are_checked_on_the_host_before_the_copy(tmp_path):
    """The worker checks each batch where it costs no GPU wait; a bad batch still fails with the flow's error."""
    from bfn_core.errors import BfnError
    from pipelines.worker import train_batches

    seen = []

    def check(x):
        seen.append(x.device.type)
        raise BfnError("x must lie in [-1, 1]")

    cfg = _cfg()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": str(_digits_manifest(tmp_path))})})
    with pytest.raises(BfnError, match=r"\[-1, 1\]"):
        next(train_batches(cfg, 0, 1, 0, torch.device("cpu"), check=check))
    assert seen == ["cpu"]


def _digits_manifest(tmp_path):
    from pipelines.data.writer import write_shards

    write_shards("digits", "train", str(tmp_path / "digits"), shard_size=512)
    return tmp_path / "digits" / "train" / "manifest.json"
