"""Build a BFN for a data kind from plain arguments: the one place that pairs flows, losses and networks."""
from __future__ import annotations

from typing import Literal

from torch import nn

from bfn_core.bfn import BFN
from bfn_core.flows import ContinuousBayesianFlow, DiscreteBayesianFlow
from bfn_core.losses import ContinuousLoss, DiscreteLoss, DiscretisedLoss, Loss
from bfn_core.networks import MLP, Transformer, UNet

DataKind = Literal["continuous", "discretised", "discrete"]
DATA_KINDS = ("continuous", "discretised", "discrete")
NETWORKS = ("mlp", "unet", "transformer")


def make_loss(kind: str, *, num_classes: int | None = None, sigma_1: float | None = None,
              beta_1: float | None = None) -> Loss:
    """The flow and loss for a data kind. num_classes is K bins (discretised) or K classes (discrete);
    for continuous data it optionally names the data's quantisation for the reconstruction term."""
    if kind == "continuous":
        return ContinuousLoss(ContinuousBayesianFlow(_need(sigma_1, "sigma_1", kind)), num_bins=num_classes)
    if kind == "discretised":
        return DiscretisedLoss(ContinuousBayesianFlow(_need(sigma_1, "sigma_1", kind)), _need(num_classes, "num_classes", kind))
    if kind == "discrete":
        return DiscreteLoss(DiscreteBayesianFlow(_need(num_classes, "num_classes", kind), _need(beta_1, "beta_1", kind)))
    raise ValueError(f"kind must be one of {DATA_KINDS}, got {kind!r}")


def net_in_channels(loss: Loss) -> int:
    """Channels per data dimension that the flow feeds to the network."""
    if isinstance(loss, DiscreteLoss):
        return 1 if loss.K == 2 else loss.K
    return 1


def make_bfn(kind: str, data_shape: tuple[int, ...], *, network: str = "mlp", num_classes: int | None = None,
             sigma_1: float | None = None, beta_1: float | None = None, **net_kwargs) -> BFN:
    """A BFN for examples of shape data_shape (no batch dimension): (H, W, C) images, (L,) sequences, (D,) vectors."""
    loss = make_loss(kind, num_classes=num_classes, sigma_1=sigma_1, beta_1=beta_1)
    cin, cout = net_in_channels(loss), loss.factory.net_out_channels
    data_shape = tuple(data_shape)
    net: nn.Module
    if network == "mlp":
        net = MLP(data_shape, cin, cout, **net_kwargs)
    elif network == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"network 'unet' needs image data of shape (H, W, C), got data_shape {data_shape}")
        net = UNet(data_shape, cin, cout, **net_kwargs)
    elif network == "transformer":
        if len(data_shape) != 1:
            raise ValueError(f"network 'transformer' needs sequence data of shape (L,), got data_shape {data_shape}")
        net = Transformer(data_shape[0], cin, cout, **net_kwargs)
    else:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return BFN(net, loss)


def _need(value, name: str, kind: str):
    if value is None:
        raise ValueError(f"{name} is required for {kind} data")
    return value
