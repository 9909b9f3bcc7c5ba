"""Argument checks shared by the flows, losses, samplers and networks: each raises a BfnError that names
the argument and its range."""
from __future__ import annotations

import torch

from bfn_core.errors import BfnError


def check_sigma_1(sigma_1: float) -> float:
    if not 0.0 < float(sigma_1) < 1.0:
        raise BfnError(f"sigma_1 must be in (0, 1) (e.g. 0.001 for 8-bit images), got {sigma_1}")
    return float(sigma_1)


def check_beta_1(beta_1: float) -> float:
    if not float(beta_1) > 0.0:
        raise BfnError(f"beta_1 must be > 0 (e.g. 9.0 = 3**2 for binarised MNIST), got {beta_1}")
    return float(beta_1)


def check_num_classes(k: int, name: str = "K") -> int:
    if int(k) != k or int(k) < 2:
        raise BfnError(f"{name} must be an integer >= 2, got {k}")
    return int(k)


def check_n_steps(n_steps: int, name: str = "n_steps") -> int:
    if int(n_steps) != n_steps or int(n_steps) < 1:
        raise BfnError(f"{name} must be an integer >= 1, got {n_steps}")
    return int(n_steps)


def check_positive(value: float, name: str) -> float:
    if not float(value) > 0.0:
        raise BfnError(f"{name} must be > 0, got {value}")
    return float(value)


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise BfnError(f"{name} must be one of {choices}, got {value!r}")
    return value


def registered(registry: dict, name: str, what: str):
    """registry[name], or a BfnError naming the registered choices."""
    if name not in registry:
        raise BfnError(f"unknown {what} {name!r}: choose one of {sorted(registry)}")
    return registry[name]


def check_continuous_data(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise BfnError(f"x must be a floating-point tensor in [-1, 1] for continuous data, got dtype {x.dtype}")
    if x.numel() and (x.min() < -1.0 or x.max() > 1.0):
        raise BfnError(
            f"x must lie in [-1, 1] for continuous data, got values in [{x.min().item():.4g}, {x.max().item():.4g}]; "
            "rescale the data (e.g. 2 * u8 / 255 - 1)"
        )


def check_class_indices(x: torch.Tensor, k: int) -> None:
    if torch.is_floating_point(x) or torch.is_complex(x) or x.dtype == torch.bool:
        raise BfnError(f"x must hold integer class indices in [0, {k}) for discrete data, got dtype {x.dtype}")
    if x.numel():
        # Compared as Python ints: a tensor comparison would wrap K into x's dtype (uint8: 256 -> 0).
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= k:
            raise BfnError(f"class index out of range: x must lie in [0, K) = [0, {k}), got values in [{lo}, {hi}]")


def check_label_classes(n: int) -> int:
    """Number of class labels a conditional network takes (0: unconditional)."""
    if isinstance(n, bool) or int(n) != n or int(n) < 0:
        raise BfnError(f"num_classes (class labels of a conditional network) must be an integer >= 0 (0: unconditional), got {n}")
    return int(n)


def check_label_dtype(y: torch.Tensor, batch: int) -> None:
    """Labels are integer class ids of shape (B,); the range is checked by check_labels (it reads the values)."""
    if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
        raise BfnError(f"labels y must be integer class ids (a LongTensor of shape (B,)), got dtype {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise BfnError(f"labels y must have shape (B,) = ({batch},), one class id per example, got {tuple(y.shape)}")


def check_labels(y: torch.Tensor, num_classes: int, batch: int) -> None:
    """Class ids in [0, num_classes]; num_classes itself is the null (unconditional) class."""
    check_label_dtype(y, batch)
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > num_classes:
            raise BfnError(f"labels y must lie in [0, {num_classes}] ({num_classes} = the null class), "
                           f"got values in [{lo}, {hi}]")
