"""FID's feature extractor: InceptionV3's 2048 pool features (the TensorFlow FID network ported to
PyTorch by torch-fidelity, the implementation torchmetrics' FID also uses), from a LOCAL weights file:
nothing is downloaded.

Why torch-fidelity: it is maintained, has no TensorFlow dependency, reproduces the reference FID
network bit for bit (its TF-compatible resize included) and takes a local weights path
(``feature_extractor_weights_path``); it is the optional extra ``bfn-platform[fid]``. The Fréchet
distance itself is this package's (frechet.py), so the same code scores Inception and digits features.

The weights file is looked up as: the ``weights_path`` argument, else $BFN_INCEPTION_WEIGHTS, else
$BFN_HOME/quality/weights-inception-2015-12-05-6726825d.pth. It is read with
``torch.load(weights_only=True)`` (or safetensors), never unpickled: torch-fidelity itself unpickles
its path, so it is given a copy re-saved here from the checked tensors.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from pipelines.errors import PipelineError
from pipelines.quality.frechet import GaussianStats, gaussian_stats
from pipelines.quality.image_metrics import ImageFeatures, features_in_batches

ENV_INCEPTION_WEIGHTS = "BFN_INCEPTION_WEIGHTS"  # belongs in pipelines/names.py with the other env names
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
FID_EXTRA = "pip install 'bfn-platform[fid]'"


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """The local Inception weights file (argument, else $BFN_INCEPTION_WEIGHTS, else $BFN_HOME/quality/...)."""
    from pipelines.quality.digits_classifier import default_cache_dir

    if weights_path is not None:
        path, origin = Path(weights_path), "weights_path"
    elif os.environ.get(ENV_INCEPTION_WEIGHTS):
        path, origin = Path(os.environ[ENV_INCEPTION_WEIGHTS]), f"${ENV_INCEPTION_WEIGHTS}"
    else:
        path, origin = default_cache_dir() / INCEPTION_WEIGHTS_FILE, "the default location"
    if not path.is_file():
        raise PipelineError(f"FID needs the Inception weights, not found at {path} ({origin}): download "
                            f"{INCEPTION_WEIGHTS_URL} and set {ENV_INCEPTION_WEIGHTS} (or weights_path=) to the file")
    return path


def read_inception_state(path: Path) -> dict:
    """The weights file's state dict, read without unpickling code (safetensors or weights_only torch.load)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PipelineError(f"{path} is not a plain weights file ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
                            f"use {INCEPTION_WEIGHTS_URL}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path} holds no state dict of tensors: use {INCEPTION_WEIGHTS_URL}")
    return state


def inception_extractor(weights_path: str | Path | None = None, device: str = "auto") -> ImageFeatures:
    """InceptionV3 pool features (N, 2048) of uint8 images (N, H, W, 1 or 3), resized to 299 as TF's FID does."""
    import torch

    path = inception_weights_path(weights_path)
    state = read_inception_state(path)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise PipelineError(f"FID needs torch-fidelity, which is not installed: {FID_EXTRA}") from None
    except Exception as err:  # e.g. a torchvision built for another torch (CUDA wheel beside CPU torch)
        raise PipelineError(f"torch-fidelity does not import ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
                            "install the torchvision build that matches your torch (CPU torch: PyTorch's CPU index)"
                            ) from None
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "inception.pth"
        torch.save(state, plain)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(plain))
        except RuntimeError as err:  # load_state_dict: missing or unexpected keys
            raise PipelineError(f"{path} does not fit torch-fidelity's InceptionV3 ({str(err).splitlines()[0][:120]}): "
                                f"use {INCEPTION_WEIGHTS_URL}") from None
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    net = net.to(dev).eval()

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey as RGB, as FID of MNIST is usually taken
        return net(x.contiguous().to(dev))[0].double().cpu().numpy()

    extract.weights_sha256 = _sha256_file(path)  # type: ignore[attr-defined]  # the reference-stats cache key
    return extract


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_reference_stats(images: np.ndarray, extractor: ImageFeatures,
                           cache_dir: str | Path | None = None) -> GaussianStats:
    """GaussianStats of a reference set's features, cached on disk by (extractor weights, images) digest:
    the test split's 10,000 Inception passes are paid once, not once per scored model."""
    from pipelines.quality.digits_classifier import default_cache_dir

    weights = getattr(extractor, "weights_sha256", None)
    if weights is None:  # an injected extractor has no stable identity: compute, never cache
        return gaussian_stats(features_in_batches(extractor, images))
    key = hashlib.sha256(weights.encode() + np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"fid-stats-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return GaussianStats(z["mu"], z["sigma"], int(z["count"]))
    stats = gaussian_stats(features_in_batches(extractor, images))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{path.name}.{os.getpid()}.npz"
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count)
    os.replace(tmp, path)
    return stats
