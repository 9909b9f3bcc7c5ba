"""Text prompts for inpainting a text model: `bfn sample MODEL --prefix "the cat"` or `--infix "40:in the"`.

The characters become the model's symbol ids through its training data's alphabet (the manifest's
field; text8's when the manifest cannot be read and the model has 27 classes, as pictures.py shows
text), and the mask marks their positions in every sample; pipelines.sampling inpaints the rest.
"""
from __future__ import annotations

import numpy as np

from pipelines.errors import PipelineError


def model_alphabet(config: dict) -> str | None:
    """The symbols of a text model's classes, from its training manifest, else text8's for 27 classes."""
    from pipelines.data.text import TEXT8_ALPHABET
    from pipelines.sampling import training_manifest

    manifest = training_manifest(config)
    if manifest is not None and manifest.field.alphabet:
        return manifest.field.alphabet
    return TEXT8_ALPHABET if (config.get("data") or {}).get("num_classes") == len(TEXT8_ALPHABET) else None


def parse_infix(text: str) -> tuple[int, str]:
    """'POS:TEXT' -> (POS, TEXT)."""
    pos, sep, body = text.partition(":")
    if not sep or not pos.strip().isdigit() or not body:
        raise PipelineError(f"--infix takes POSITION:TEXT (e.g. 40:in the), got {text!r}")
    return int(pos), body


def text_inpainting(config: dict, data_shape: tuple[int, ...], *, prefix: str | None = None,
                    infix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(observed, mask) of the data's shape holding the prompt's ids at its positions (prefix: from 0)."""
    if (prefix is None) == (infix is None):
        raise PipelineError("give one of --prefix TEXT or --infix POSITION:TEXT")
    flag = "--prefix" if prefix is not None else "--infix"
    data = config.get("data") or {}
    if data.get("kind") != "discrete" or len(data_shape) != 1:
        raise PipelineError(f"{flag} is for text models (1-D discrete data); this model's data is {data.get('kind')} of "
                            f"shape {tuple(data_shape)}: use --mask FILE")
    alphabet = model_alphabet(config)
    if alphabet is None:
        raise PipelineError(f"{flag}: the model's alphabet is unknown (its training manifest is gone and it has "
                            f"{data.get('num_classes')} classes): use --mask FILE with symbol ids")
    start, text = (0, prefix) if prefix is not None else parse_infix(infix)
    length = data_shape[0]
    if not text or start + len(text) > length:
        raise PipelineError(f"{flag} {text!r} at position {start} does not fit the model's {length} characters")
    index = {ch: i for i, ch in enumerate(alphabet)}
    unknown = sorted({ch for ch in text if ch not in index})
    if unknown:
        raise PipelineError(f"{flag} holds {''.join(unknown)!r}, not in the model's alphabet {alphabet!r}")
    observed, mask = np.zeros(length, np.int64), np.zeros(length, bool)
    observed[start:start + len(text)] = [index[ch] for ch in text]
    mask[start:start + len(text)] = True
    return observed, mask
