"""The paper's networks: parameter counts of the authors' reference setups (nnaisense/bayesian-flow-networks,
net + input/output adapters) within 1%, and small versions of every network option run, with gradients
reaching every parameter (DDP needs no unused parameters)."""
import math

import pytest
import torch

from bfn_core import make_bfn
from bfn_core.networks import Transformer, UNet, VDMUNet
from bfn_core.networks.blocks import SpatialAttention
from bfn_core.networks.embeddings import fourier_features, sinusoidal_positions
from pipelines.config import TransformerConfig, UNetConfig, VDMUNetConfig

# The reference configs expressed as this project's network arguments (configs/paper/*.yaml use them).
CIFAR10_VDM = dict(network="vdm_unet", width=128, n_blocks=32, heads=1, dropout=0.1, norm_groups=32,
                   fourier_exponents=(5, 6), attention_everywhere=False)
MNIST_UNET = dict(network="unet", width=128, channel_mults=(1, 2, 2), blocks_per_level=2, attention_resolutions=(),
                  heads=4, dropout=0.5, fourier_exponents=(), conv_resample=True, scale_shift=False, time_scale=4000.0,
                  time_channel=True, project_input=True, skip=True, head_channels=128)
TEXT8_GPT = dict(network="transformer", width=768, depth=24, heads=12, dropout=0.0, bias=True, skip=True,
                 positions="sinusoidal")

REFERENCE = {  # name: (make_bfn arguments, parameters of the reference's net + adapters)
    "cifar10_discretised_256": (dict(kind="discretised", data_shape=(32, 32, 3), num_classes=256, sigma_1=1e-3, **CIFAR10_VDM), 30.72e6),
    "mnist_binarised": (dict(kind="discrete", data_shape=(28, 28, 1), num_classes=2, beta_1=9.0, **MNIST_UNET), 24.81e6),
    "text8": (dict(kind="discrete", data_shape=(256,), num_classes=27, beta_1=0.5625, **TEXT8_GPT), 170.18e6),
}


def _count(**kwargs) -> int:
    with torch.device("meta"):  # no memory, no init cost: only shapes
        bfn = make_bfn(**kwargs)
    return sum(p.numel() for p in bfn.net.parameters())


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_parameter_counts_within_one_percent(name, record_property):
    kwargs, reference = REFERENCE[name]
    n = _count(**kwargs)
    record_property("parameters", n)
    print(f"{name}: {n} parameters (reference {reference / 1e6:.2f}M)")
    assert abs(n - reference) <= 0.01 * reference, (n, reference)


def test_continuous_cifar10_has_a_one_channel_head(record_property):
    # The reference's continuous output adapter has output_height 1: 131 * 3 weights and 3 biases fewer.
    kwargs = dict(REFERENCE["cifar10_discretised_256"][0], kind="continuous", num_classes=None)
    n, n_disc = _count(**kwargs), _count(**REFERENCE["cifar10_discretised_256"][0])
    record_property("parameters", n)
    print(f"cifar10_continuous: {n} parameters")
    assert n_disc - n == 131 * 3 + 3
    assert abs(n - 30.72e6) <= 0.01 * 30.72e6


@pytest.mark.parametrize("config", [VDMUNetConfig(), UNetConfig(**MNIST_UNET),
                                    TransformerConfig(**TEXT8_GPT)], ids=lambda c: c.network)
def test_typed_configs_carry_the_reference_arguments(config):
    kwargs = config.model_dump()
    network = kwargs.pop("network")
    setup = {"vdm_unet": "cifar10_discretised_256", "unet": "mnist_binarised", "transformer": "text8"}[network]
    ref_kwargs, reference = REFERENCE[setup]
    data = {k: ref_kwargs[k] for k in ("kind", "data_shape", "num_classes", "sigma_1", "beta_1") if k in ref_kwargs}
    assert abs(_count(network=network, **data, **kwargs) - reference) <= 0.01 * reference


def _perturb(module: torch.nn.Module) -> None:
    """Move every parameter off its (often zero) init, so a used parameter gets a non-zero gradient."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


SMALL = {
    "vdm_unet": (dict(kind="discretised", data_shape=(8, 8, 3), num_classes=16, sigma_1=0.01, network="vdm_unet",
                      width=16, n_blocks=2, heads=2, dropout=0.0, norm_groups=4), 2),
    "vdm_unet_attention_everywhere": (dict(kind="continuous", data_shape=(4, 4, 1), sigma_1=0.01, network="vdm_unet",
                                           width=8, n_blocks=1, norm_groups=None, fourier_exponents=(), dropout=0.0,
                                           attention_everywhere=True), 1),
    "unet_reference_options": (dict(kind="discrete", data_shape=(8, 8, 1), num_classes=2, beta_1=3.0,
                                    **dict(MNIST_UNET, width=16, head_channels=8, dropout=0.0, attention_resolutions=(4,), heads=2)), 1),
    "unet_pooling_fourier_no_skip": (dict(kind="discretised", data_shape=(8, 8, 2), num_classes=16, sigma_1=0.01, network="unet",
                                          width=8, channel_mults=(1, 2), conv_resample=False, fourier_exponents=(5,),
                                          time_channel=True, head_channels=4), 2),
    "unet_skip_without_projection": (dict(kind="discrete", data_shape=(8, 8, 1), num_classes=3, beta_1=3.0, network="unet",
                                          width=8, channel_mults=(1, 2), skip=True, scale_shift=False), 3),
    "unet_defaults": (dict(kind="discretised", data_shape=(8, 8, 1), num_classes=16, sigma_1=0.01, network="unet",
                           width=8, channel_mults=(1, 2), attention_resolutions=(4,)), 2),
    "transformer_reference_options": (dict(kind="discrete", data_shape=(12,), num_classes=27, beta_1=0.5625, network="transformer",
                                           width=24, depth=2, heads=3, skip=True, positions="sinusoidal"), 27),
    "transformer_no_bias_learned": (dict(kind="discrete", data_shape=(6,), num_classes=2, beta_1=3.0, network="transformer",
                                         width=16, depth=1, heads=2, bias=False, dropout=0.1), 1),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_networks_shapes_and_every_parameter_gets_a_gradient(name):
    kwargs, c_out = SMALL[name]
    torch.manual_seed(0)
    bfn = make_bfn(**kwargs)
    shape = kwargs["data_shape"]
    b = 3
    if kwargs["kind"] == "discrete":
        x = torch.randint(0, kwargs["num_classes"], (b, *shape))
    else:
        x = torch.rand(b, *shape) * 2 - 1
    c_in = 1 if kwargs["kind"] != "discrete" or kwargs["num_classes"] == 2 else kwargs["num_classes"]
    out = bfn.net(torch.randn(b, *shape, c_in), torch.rand(b))
    assert out.shape == (b, *shape, c_out)
    # Zero-inits make most gradients exactly zero at init; off it, every parameter must be used.
    _perturb(bfn.net)
    bfn.loss(x, generator=torch.Generator().manual_seed(1)).mean().backward()
    for pname, p in bfn.net.named_parameters():
        assert p.grad is not None, f"{pname} is unused"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{pname} gets no gradient"


def test_zero_inits_make_residual_branches_start_as_the_identity():
    torch.manual_seed(0)
    attn = SpatialAttention(8, heads=2, groups=2)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(attn(x), x)
    net = VDMUNet((4, 4, 1), 1, 2, width=8, n_blocks=1, norm_groups=2, dropout=0.0)
    x = torch.randn(2, 4, 4, 1, 1)
    out, out_t = net(x, torch.zeros(2)), net(x, torch.ones(2))
    assert torch.allclose(out, out_t)  # time acts only through zero-initialised projections at init


def test_spatial_attention_is_per_head_softmax_attention_over_pixels():
    torch.manual_seed(0)
    attn = SpatialAttention(8, heads=2, groups=2)
    torch.nn.init.normal_(attn.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = attn.qkv(attn.norm(x)).flatten(2).chunk(3, 1)  # (B, C, T) each, heads as channel blocks of 4
    heads = []
    for hq, hk, hv in zip(q.chunk(2, 1), k.chunk(2, 1), v.chunk(2, 1)):
        w = torch.softmax(hq.transpose(1, 2) @ hk / math.sqrt(4), -1)  # (B, T, T)
        heads.append(hv @ w.transpose(1, 2))  # (B, 4, T)
    expected = x + attn.proj(torch.cat(heads, 1).reshape(2, 8, 3, 3))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_transformer_is_not_causal():
    torch.manual_seed(0)
    net = Transformer(6, 4, 4, width=16, depth=1, heads=2).eval()
    x, t = torch.randn(1, 6, 4), torch.rand(1)
    x2 = x.clone()
    x2[0, -1] += 1.0
    assert not torch.allclose(net(x, t)[0, 0], net(x2, t)[0, 0])  # the first token sees the last one


def test_fourier_features_use_frequencies_two_pi_two_to_the_e():
    x = torch.tensor([[0.1, -0.3]])
    f = fourier_features(x, (0, 2), dim=-1)
    args = torch.tensor([2 * math.pi * 0.1, 2 * math.pi * -0.3, 8 * math.pi * 0.1, 8 * math.pi * -0.3])
    assert torch.allclose(f, torch.cat([x, args.sin()[None], args.cos()[None]], -1))
    assert fourier_features(x, ()) is x


def test_sinusoidal_positions_follow_the_reference_formula():
    pe = sinusoidal_positions(5, 6)
    for pos in range(5):
        for j in range(6):
            angle = pos / 1000.0 ** (j / 6)
            assert pe[pos, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle), abs=1e-6)


def test_unet_defaults_still_build_the_small_digits_network():
    net = UNet((8, 8, 1), 1, 2, width=32, channel_mults=(1, 2), attention_resolutions=(4,), fourier_exponents=())
    out = net(torch.zeros(2, 8, 8, 1, 1), torch.rand(2))
    assert out.shape == (2, 8, 8, 1, 2) and torch.equal(out, torch.zeros_like(out))  # zero-initialised conv head
