"""Sampling from trained models to arrays and files: .npy plus a picture (image grid, text lines, scatter).

Conditioning options, shared by `bfn sample`, the notebook API and the benchmarks:

* classes: one class, a list cycled over the n samples (sample i gets classes[i % len]), or "all"; ints,
  or the class names the model's config or training manifest records. Only for models trained with a
  `conditioning` block (their BFN has num_classes > 0).
* guidance, guidance_space: classifier-free guidance weight w (0: plain conditional, -1: unconditional,
  > 0 guided) in "output" or "params" space (bfn_core.guidance).
* observed, mask (or a mask file, `read_inpainting`): inpainting, the samples equal `observed` where
  `mask` is True. `observed` is in the model's convention, the one `bfn sample` writes its .npy in:
  floats in [-1, 1] for continuous and discretised data (discretised: bin centres), integer class
  indices 0..K-1 for discrete data. Works for unconditional models too. resample R > 1: RePaint's
  resampling (bfn_core.solvers.integrate), every step taken R times; needs a mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipelines.errors import PipelineError

GUIDANCE_SPACES = ("output", "params")  # bfn_core.guidance.GUIDANCE_SPACES, checked here before any model loads


def check_sampler_choice(sampler: str, grid: str | None, final: str) -> None:
    """The sampler, time grid and final-output names, checked before any model is loaded."""
    from bfn_core.samplers import SAMPLERS
    from bfn_core.solvers import FINALS
    from bfn_core.time_grids import TIME_GRIDS

    if sampler not in SAMPLERS:
        raise PipelineError(f"--sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if grid is not None and grid not in TIME_GRIDS:
        raise PipelineError(f"--grid must be one of {', '.join(TIME_GRIDS)}, not {grid!r}")
    if final not in FINALS:
        raise PipelineError(f"--final must be one of {', '.join(FINALS)}, not {final!r}")


def check_guidance_choice(classes, guidance: float, guidance_space: str) -> None:
    """Guidance settings that need no model: a known space, a finite weight, and classes to guide towards."""
    if guidance_space not in GUIDANCE_SPACES:
        raise PipelineError(f"--guidance-space must be one of {', '.join(GUIDANCE_SPACES)}, not {guidance_space!r}")
    if not np.isfinite(guidance):
        raise PipelineError(f"--guidance must be a finite number (e.g. 1.0), got {guidance}")
    if guidance != 0.0 and classes is None:
        raise PipelineError("--guidance needs --class: guidance steers samples towards a class (e.g. --class 3 --guidance 1)")


@dataclass
class Conditioning:
    """Per-sample conditioning of n samples: labels (n,) int64, guidance, inpainting (n, *data_shape) arrays."""

    labels: np.ndarray | None = None
    guidance: float = 0.0
    guidance_space: str = "output"
    observed: np.ndarray | None = None
    mask: np.ndarray | None = None
    resample: int = 1

    def batch(self, start: int, stop: int) -> dict:
        """bfn_core.BFN.sample keywords for samples start..stop-1."""
        import torch

        out: dict = {"guidance": self.guidance, "guidance_space": self.guidance_space}
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[start:stop])
        if self.mask is not None:
            out["observed"] = torch.from_numpy(np.ascontiguousarray(self.observed[start:stop]))
            out["mask"] = torch.from_numpy(np.ascontiguousarray(self.mask[start:stop]))
            if self.resample > 1:
                out["resample"] = self.resample
        return out


def training_manifest(config: dict):
    """The manifest of a model's training shards, or None where the config names none or it does not load
    (moved, deleted, unreachable): for conveniences (class names, a text alphabet) that must not fail sampling."""
    url = (config.get("data") or {}).get("train")
    if not url:
        return None
    try:
        from pipelines.data.manifest import load_manifest
        from pipelines.prepare import expand_env

        return load_manifest(expand_env(url))
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def class_names(config: dict) -> list[str] | None:
    """The class names a model's config records (conditioning.class_names), else its training manifest's
    label field; None when neither says (ints still work)."""
    names = (config.get("conditioning") or {}).get("class_names")
    if names:
        return [str(v) for v in names]
    manifest = training_manifest(config)
    field = manifest.label_field if manifest is not None else None
    names = getattr(field, "class_names", None) if field is not None else None
    return [str(v) for v in names] if names else None


def parse_classes(spec, num_classes: int, names: Sequence[str] | None = None, model: str = "the model") -> list[int]:
    """Class ids 0..C-1 from an int, a list, or text "3" / "0,1,2" / "cat,dog" (names as the model records them)
    / "all" (every class in order)."""
    if not num_classes:
        raise PipelineError(f"{model} was trained without labels: train with a conditioning block "
                            "(conditioning: {num_classes: C, label_dropout: 0.1}) to sample by class, or drop --class")
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(num_classes))
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(np.atleast_1d(spec))
    if not items or any(isinstance(v, str) and not v for v in items):
        raise PipelineError(f"--class takes a class id or a comma-separated list (e.g. 3 or 0,1,2), got {spec!r}")
    index = {name: i for i, name in enumerate(names or [])}
    out = []
    for item in items:
        if isinstance(item, str) and item in index:  # a name first: names may themselves be digits ("0".."9")
            out.append(index[item])
            continue
        try:
            value = int(item)
        except (TypeError, ValueError):
            known = f"one of {', '.join(names)}" if names else f"an id 0..{num_classes - 1} (no class names recorded)"
            raise PipelineError(f"unknown class {item!r}: --class takes {known}") from None
        if not 0 <= value < num_classes:
            raise PipelineError(f"class {value} is out of range: {model} has classes 0..{num_classes - 1}")
        out.append(value)
    return out


def read_inpainting(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(observed, mask) from an .npz holding both, or from "OBSERVED.npy,MASK.npy"."""
    text = str(path)
    try:
        if "," in text:
            obs_path, mask_path = (p.strip() for p in text.split(",", 1))
            observed, mask = np.load(obs_path, allow_pickle=False), np.load(mask_path, allow_pickle=False)
        else:
            with np.load(text, allow_pickle=False) as f:
                if not hasattr(f, "files"):
                    raise PipelineError(f"--mask {text} is one .npy: pass an .npz with arrays 'observed' and 'mask', "
                                        "or OBSERVED.npy,MASK.npy")
                missing = [k for k in ("observed", "mask") if k not in f.files]
                if missing:
                    raise PipelineError(f"--mask {text} lacks {', '.join(missing)} (it holds {', '.join(f.files) or 'nothing'}): "
                                        "save it with np.savez(FILE, observed=..., mask=...)")
                observed, mask = f["observed"], f["mask"]
    except PipelineError:
        raise
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot read --mask {text}: {str(err).splitlines()[0][:160]} (an .npz with 'observed' "
                            "and 'mask', or OBSERVED.npy,MASK.npy)") from None
    return observed, mask


def check_inpainting(observed, mask, data_shape: tuple[int, ...], n: int, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """observed and mask checked against the model's data and broadcast to (n, *data_shape)."""
    observed, mask = np.asarray(observed), np.asarray(mask)
    if mask.dtype != np.bool_:
        raise PipelineError(f"the inpainting mask must be bool (True where the data is known), got dtype {mask.dtype}: "
                            "save it as mask.astype(bool)")
    shapes = (tuple(data_shape), (n, *data_shape), (1, *data_shape))
    for name, arr in (("observed", observed), ("mask", mask)):
        if arr.shape not in shapes:
            raise PipelineError(f"inpainting {name} has shape {arr.shape}: the model's data is {tuple(data_shape)}, "
                                f"so give {tuple(data_shape)} (all samples) or {(n, *data_shape)} (one per sample)")
    data = config["data"]
    full = (n, *data_shape)
    known = np.broadcast_to(observed, full)[np.broadcast_to(mask, full)]  # only these are data (the rest may be NaN)
    if data["kind"] == "discrete":
        if observed.dtype.kind not in "iu":
            raise PipelineError(f"inpainting observed must hold integer class indices for discrete data, got dtype "
                                f"{observed.dtype}")
        k = data.get("num_classes")
        if known.size and (known.min() < 0 or (k and known.max() >= k)):
            raise PipelineError(f"inpainting observed holds classes {known.min()}..{known.max()} where the mask is True: "
                                f"the model's data has 0..{k - 1}")
        dtype = np.int64
    else:
        if observed.dtype.kind != "f":
            raise PipelineError(f"inpainting observed must be floats in [-1, 1] for {data['kind']} data (as `bfn sample` "
                                f"writes them), got dtype {observed.dtype}: scale levels v of K to 2 v / (K - 1) - 1")
        if known.size and not (np.isfinite(known).all() and known.min() >= -1.0 and known.max() <= 1.0):
            raise PipelineError("inpainting observed must be finite and in [-1, 1] where the mask is True "
                                f"(got {np.nanmin(known):.3g}..{np.nanmax(known):.3g})")
        dtype = np.float32
    return np.broadcast_to(observed.astype(dtype), full).copy(), np.broadcast_to(mask, full).copy()  # writable, own


def conditioning(loaded, n: int, *, classes=None, guidance: float = 0.0, guidance_space: str = "output",
                 observed=None, mask=None, resample: int = 1, model: str = "the model") -> Conditioning:
    """Conditioning of n samples from a LoadedModel, every option checked with a one-line error."""
    check_guidance_choice(classes, guidance, guidance_space)
    labels = None
    if classes is not None:
        ids = parse_classes(classes, loaded.bfn.num_classes, class_names(loaded.config), model)
        labels = np.resize(np.asarray(ids, np.int64), n)  # cycled over the samples
    if (observed is None) != (mask is None):
        raise PipelineError("inpainting needs both observed (the known data) and mask (True where known)")
    if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) or resample < 1:
        raise PipelineError(f"--resample must be a whole number >= 1 (1: off), got {resample!r}")
    if resample > 1 and mask is None:
        raise PipelineError("--resample needs --mask: resampling is for inpainting (e.g. --mask known.npz --resample 10)")
    if mask is not None:
        observed, mask = check_inpainting(observed, mask, loaded.data_shape, n, loaded.config)
    return Conditioning(labels, float(guidance), guidance_space, observed, mask, int(resample))


def resolve_model(ref):
    """(LoadedModel, its name in messages) of a model reference (run id, URI, folder) or a LoadedModel."""
    from pipelines.model_store import LoadedModel, load_model

    if isinstance(ref, LoadedModel):
        return ref, "the model"
    if not Path(ref).is_dir():
        from pipelines.tracking import setup_mlflow

        setup_mlflow()
    return load_model(ref), f"model {ref}"


def sample_array(ref, *, n: int, steps: int, seed: int = 0, batch_size: int = 256, device: str = "auto",
                 sampler: str = "bfn", grid: str | None = None, final: str = "sample", precision: str = "auto",
                 classes=None, guidance: float = 0.0, guidance_space: str = "output", observed=None, mask=None,
                 resample: int = 1, on_progress: Callable[[int], None] | None = None):
    """(samples, Conditioning, LoadedModel, NFE per batch) of a model reference or LoadedModel (see the module
    docstring for the conditioning keywords); on_progress(k) is told of k more samples drawn."""
    from pipelines.evaluation import check_precision, resolve_device
    from pipelines.sample_quality import draw

    if n < 1 or steps < 1:
        raise PipelineError(f"--n and --steps must be >= 1, got n={n}, steps={steps}")
    check_sampler_choice(sampler, grid, final)
    check_guidance_choice(classes, guidance, guidance_space)
    check_precision(precision)
    dev = resolve_device(device)
    loaded, name = resolve_model(ref)
    cond = conditioning(loaded, n, classes=classes, guidance=guidance, guidance_space=guidance_space,
                        observed=observed, mask=mask, resample=resample, model=name)
    samples, nfe, _ = draw(loaded, n=n, steps=steps, sampler=sampler, grid=grid, final=final, batch_size=batch_size,
                           seed=seed, device=dev, precision=precision, on_batch=on_progress, conditioning=cond)
    return samples, cond, loaded, nfe


def sample_to_files(ref: str, *, n: int, steps: int, out: str, seed: int = 0, batch_size: int = 256,
                    device: str = "auto", sampler: str = "bfn", grid: str | None = None, final: str = "sample",
                    precision: str = "auto", classes=None, guidance: float = 0.0, guidance_space: str = "output",
                    mask_file: str | None = None, prefix: str | None = None, infix: str | None = None,
                    resample: int = 1, on_progress: Callable[[int], None] | None = None) -> list[Path]:
    """Draw n samples with `sampler` over `steps` steps of `grid` (None: the sampler's own) on `device`
    (auto: a GPU when there is one), in batches, conditioned as the module docstring says (mask_file: see
    read_inpainting; prefix / infix: a text prompt, pipelines.prompts); writes OUT.npy (plus OUT.labels.npy
    for class-conditional samples) and a picture."""
    observed = mask = None
    if sum(v is not None for v in (mask_file, prefix, infix)) > 1:
        raise PipelineError("give one of --mask, --prefix or --infix: each says which coordinates are known")
    if mask_file is not None:
        observed, mask = read_inpainting(mask_file)  # before the model: a bad file fails fast
    check_guidance_choice(classes, guidance, guidance_space)
    if prefix is not None or infix is not None:
        from pipelines.prompts import text_inpainting

        ref, _ = resolve_model(ref)
        observed, mask = text_inpainting(ref.config, ref.data_shape, prefix=prefix, infix=infix)
    samples, cond, loaded, nfe = sample_array(
        ref, n=n, steps=steps, seed=seed, batch_size=batch_size, device=device, sampler=sampler, grid=grid, final=final,
        precision=precision, classes=classes, guidance=guidance, guidance_space=guidance_space, observed=observed,
        mask=mask, resample=resample, on_progress=on_progress)
    from pipelines.pictures import save_image_rows, save_samples

    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npy = stem.with_suffix(".npy")
    np.save(npy, samples)
    files = [npy]
    title = f"{n} samples, {sampler} sampler, {steps} steps ({nfe} NFE)"
    if cond.labels is not None:
        labels_npy = stem.with_name(stem.name + ".labels.npy")
        np.save(labels_npy, cond.labels)
        files.append(labels_npy)
        title += f", guidance {cond.guidance:g} ({cond.guidance_space})" if cond.guidance else ""
    if cond.labels is not None and samples.ndim == 4 and not (loaded.config["data"]["kind"] == "discrete"
                                                              and samples.max(initial=0) > 1):
        files.append(save_image_rows(samples, cond.labels, stem.with_suffix(".png"), title=title + "; one row per class"))
    else:
        files.append(save_samples(samples, loaded.config["data"]["kind"], stem, title=title))
    return files
