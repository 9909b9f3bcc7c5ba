"""Networks Psi(theta, t): (B, *data_dims, C_in) and t (B,) -> (B, *data_dims, C_out)."""
from bfn_core.networks.mlp import MLP
from bfn_core.networks.transformer import Transformer
from bfn_core.networks.unet import UNet
from bfn_core.networks.vdm_unet import VDMUNet

__all__ = ["MLP", "Transformer", "UNet", "VDMUNet"]
