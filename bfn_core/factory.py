"""Build a BFN for a data kind from plain arguments: the one place that pairs flows, losses and networks."""
from __future__ import annotations

from torch import nn

from bfn_core.bfn import BFN
from bfn_core.errors import BfnError
from bfn_core.flows import ContinuousBayesianFlow, DiscreteBayesianFlow
from bfn_core.losses import ContinuousLoss, DiscreteLoss, DiscretisedLoss, Loss, Receiver
from bfn_core.networks import MLP, Transformer, UNet, VDMUNet

DATA_KINDS = ("continuous", "discretised", "discrete")
NETWORKS = ("mlp", "unet", "vdm_unet", "transformer")


def make_loss(kind: str, *, num_classes: int | None = None, sigma_1: float | None = None,
              beta_1: float | None = None, reconstruction_std_scale: float = 1.0,
              receiver: Receiver = "mixture") -> Loss:
    """The flow and loss for a data kind. num_classes is K bins (discretised) or K classes (discrete);
    for continuous data it optionally names the data's quantisation for the reconstruction term.

    Where the reference code departs from the paper's text, a named option picks (defaults: the paper):
    reconstruction_std_scale (continuous data only) is the std of p_O(x | theta; 1) in units of
    sigma_1 (the reference uses 0.7 for 16-bin CIFAR-10); receiver (discrete data only) is the
    discrete-time loss's receiver, "mixture" (paper) or "factorised" (reference, a looser bound).
    """
    if kind != "continuous" and reconstruction_std_scale != 1.0:
        raise BfnError(f"reconstruction_std_scale applies to continuous data only, got it for {kind} data")
    if kind != "discrete" and receiver != "mixture":
        raise BfnError(f"receiver applies to discrete data only, got receiver={receiver!r} for {kind} data")
    if kind == "continuous":
        return ContinuousLoss(ContinuousBayesianFlow(_need(sigma_1, "sigma_1", kind)), num_bins=num_classes,
                              reconstruction_std_scale=reconstruction_std_scale)
    if kind == "discretised":
        return DiscretisedLoss(ContinuousBayesianFlow(_need(sigma_1, "sigma_1", kind)), _need(num_classes, "num_classes", kind))
    if kind == "discrete":
        flow = DiscreteBayesianFlow(_need(num_classes, "num_classes", kind), _need(beta_1, "beta_1", kind))
        return DiscreteLoss(flow, receiver=receiver)
    raise BfnError(f"kind must be one of {DATA_KINDS}, got {kind!r}")


def make_bfn(kind: str, data_shape: tuple[int, ...], *, network: str = "mlp", num_classes: int | None = None,
             sigma_1: float | None = None, beta_1: float | None = None, reconstruction_std_scale: float = 1.0,
             receiver: Receiver = "mixture", label_classes: int = 0, **net_kwargs) -> BFN:
    """A BFN for examples of shape data_shape (no batch dimension): (H, W, C) images, (L,) sequences, (D,) vectors.
    The loss options (reconstruction_std_scale, receiver) are make_loss's. label_classes > 0 makes it conditional
    on class labels 0..label_classes - 1 (the network's num_classes; label_classes is the null class); num_classes
    here is the data's K."""
    loss = make_loss(kind, num_classes=num_classes, sigma_1=sigma_1, beta_1=beta_1,
                     reconstruction_std_scale=reconstruction_std_scale, receiver=receiver)
    cin, cout = loss.flow.net_in_channels, loss.factory.net_out_channels
    data_shape = tuple(data_shape)
    if label_classes:  # absent for unconditional models: networks built by older callers see the same arguments
        net_kwargs["num_classes"] = label_classes
    net: nn.Module
    if network == "mlp":
        net = MLP(data_shape, cin, cout, **net_kwargs)
    elif network in ("unet", "vdm_unet"):
        if len(data_shape) != 3:
            raise BfnError(f"network {network!r} needs image data of shape (H, W, C), got data_shape {data_shape}")
        net = (UNet if network == "unet" else VDMUNet)(data_shape, cin, cout, **net_kwargs)
    elif network == "transformer":
        if len(data_shape) != 1:
            raise BfnError(f"network 'transformer' needs sequence data of shape (L,), got data_shape {data_shape}")
        net = Transformer(data_shape[0], cin, cout, **net_kwargs)
    else:
        raise BfnError(f"network must be one of {NETWORKS}, got {network!r}")
    return BFN(net, loss)


def _need(value, name: str, kind: str):
    if value is None:
        raise BfnError(f"{name} is required for {kind} data")
    return value
