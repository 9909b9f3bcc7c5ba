"""Pictures people would rather see than read: sample grids, text samples, likelihood-versus-steps plots."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipelines.data.text import TEXT8_ALPHABET


def save_figure(fig, path: str | Path, dpi: int | None = None) -> Path:
    """Write a matplotlib figure (creating its folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and workers
    import matplotlib.pyplot as plt

    return plt


SEPARATOR = 0.5  # mid grey: neither a white stroke nor a black background merges with it


def readable_log_ticks(axis) -> None:
    """Plain numbers (0.001, 20, 100) on a log axis instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) images with values in [0, 1] into one (H', W', C) array, mid-grey between them."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), SEPARATOR, dtype=np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


MIN_TILE_PX = 56  # each image drawn at least this many pixels high: 8 x 8 digits become readable


def save_image_grid(images: np.ndarray, path: str | Path, title: str | None = None, scale: int | None = None) -> Path:
    """Write (N, H, W, C) images in [-1, 1] (or {0, 1} class indices) as one PNG grid, small images scaled up."""
    images = np.asarray(images)
    if images.dtype.kind in "iub":  # class indices: binary images
        images = images.astype(np.float32)
    else:
        images = (images.astype(np.float32) + 1.0) / 2.0
    return _save_grid(image_grid(images, pad=max(1, images.shape[1] // 8)), images.shape[1], path, title, scale)


def save_image_rows(images: np.ndarray, rows: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Images (N, H, W, C) in [-1, 1] (or {0, 1} classes) as one row per value of `rows` (N,), in order of first
    appearance, short rows padded: a row per class of conditional samples, or given / completed / true."""
    images = images.astype(np.float32) if images.dtype.kind in "iub" else (images.astype(np.float32) + 1) / 2
    rows = np.asarray(rows)
    groups = [images[rows == r] for r in dict.fromkeys(rows.tolist())]
    width = max(len(g) for g in groups)
    blank = np.full(images.shape[1:], SEPARATOR, np.float32)
    tiles = np.stack([g[i] if i < len(g) else blank for g in groups for i in range(width)])
    return _save_grid(image_grid(tiles, ncols=width, pad=max(1, images.shape[1] // 8)), images.shape[1], path, title)


def _save_grid(grid: np.ndarray, tile_height: int, path: str | Path, title: str | None, scale: int | None = None) -> Path:
    """A grid of images in [0, 1] as a PNG, each tile scaled up to at least MIN_TILE_PX high."""
    grid = np.clip(grid, 0.0, 1.0)
    scale = scale or max(2, math.ceil(MIN_TILE_PX / tile_height))
    plt = _pyplot()
    h, w = grid.shape[:2]
    fig = plt.figure(figsize=(max(2.0, w * scale / 100), max(2.0, h * scale / 100) + (0.3 if title else 0)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1 if not title else 0.92])
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def save_likelihood_plot(table: dict, path: str | Path, title: str = "NLL bound versus steps",
                         baseline: tuple[str, float] | None = None) -> Path:
    """The bound in bits per dim (or char) against the number of steps n, with ± 1 standard error
    across test examples: ticks at the evaluated n, continuous time as a dashed line and band, and
    a reference line (e.g. ("independent-pixel baseline", 4.1)) when given."""
    plt = _pyplot()
    rows = table["rows"]
    finite = [r for r in rows if r["steps"] is not None]
    cts = [r for r in rows if r["steps"] is None]
    unit = table.get("unit", "dim")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if finite:
        ns = [r["steps"] for r in finite]
        ax.errorbar(ns, [r["bits_per_dim"] for r in finite], yerr=[r["bits_se_examples"] for r in finite], marker="o",
                    capsize=3, label="discrete time $L^n + L^r$ (± 1 s.e.)")
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    for r in cts:
        ax.axhline(r["bits_per_dim"], color="C1", linestyle="--", label="continuous time $L^\\infty + L^r$ (± 1 s.e.)")
        ax.axhspan(r["bits_per_dim"] - r["bits_se_examples"], r["bits_per_dim"] + r["bits_se_examples"], color="C1", alpha=0.2)
    if baseline is not None:
        ax.axhline(baseline[1], color="0.4", linestyle=":", label=f"{baseline[0]} ({baseline[1]:.3f})")
    ax.set_xlabel("sampling steps n (log scale)")
    ax.set_ylabel(f"test bound, bits / {unit}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_text_samples(samples: np.ndarray, path: str | Path, alphabet: str) -> Path:
    """Write (N, L) class-index sequences as one line of text each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("".join(alphabet[i] for i in row) for row in np.asarray(samples)) + "\n")
    return path




def save_scatter(points: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """2-D samples as a scatter plot on [-1, 1]^2."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_samples(samples: np.ndarray, kind: str, stem: str | Path, title: str | None = None,
                 alphabet: str | None = None) -> Path:
    """The picture that suits the data: a PNG grid for images (N, H, W, C), text lines for
    sequences of classes (N, L), a scatter PNG for 2-D points, else a PNG of the values."""
    samples = np.asarray(samples)
    stem = Path(stem)
    if samples.ndim == 4:
        if kind == "discrete" and samples.max(initial=0) > 1:  # many classes: show as grey levels
            samples = samples.astype(np.float32) / samples.max() * 2 - 1
        return save_image_grid(samples, stem.with_suffix(".png"), title=title)
    if samples.ndim == 2 and kind == "discrete":
        k = int(samples.max(initial=0)) + 1
        alphabet = alphabet or (TEXT8_ALPHABET if k <= 27 else None)
        if alphabet is None or k > len(alphabet):
            alphabet = "".join(chr(ord("0") + i) if i < 10 else chr(ord("A") + i - 10) for i in range(k))
        return save_text_samples(samples, stem.with_suffix(".txt"), alphabet)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return save_scatter(samples, stem.with_suffix(".png"), title=title)
    flat = samples.reshape(len(samples), 1, -1, 1)
    return save_image_grid(np.clip(flat, -1, 1), stem.with_suffix(".png"), title=title)
