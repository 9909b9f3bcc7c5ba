"""text8 sample quality: spelling accuracy, the fraction of sampled words that are words of the training
text (the "spelling accuracy" of the BFN-Solver paper, Xue et al. 2024).

What counts as a word: a sample (a row of text8 ids, 0 = space, 1..26 = a..z) is cut at every space;
a word is a maximal run of letters with a space on BOTH sides inside the sample. The run before a
sample's first space and the run after its last space are not counted, since a 256-character window
may cut them (a sample without any space has no counted word). Accuracy is pooled over all samples:
(counted words found in the vocabulary) / (counted words), 0.0 when no word is counted (a sampler
that never emits a space spells nothing). The vocabulary is the set of words of text8's training split
(its last run of letters excluded, which the split may cut).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pipelines.data.text import TEXT8_ALPHABET
from pipelines.errors import PipelineError

_ID_TO_BYTE = np.frombuffer(TEXT8_ALPHABET.encode("ascii"), dtype=np.uint8)


def _rows_as_bytes(samples: np.ndarray | Iterable[str]) -> list[bytes]:
    if isinstance(samples, np.ndarray) and np.issubdtype(samples.dtype, np.integer):
        ids = samples.reshape(1, -1) if samples.ndim == 1 else samples
        if ids.ndim != 2:
            raise PipelineError(f"text samples must be id rows (N, L), got shape {samples.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(TEXT8_ALPHABET)):
            raise PipelineError(f"text samples hold ids {ids.min()}..{ids.max()}, "
                                f"outside text8's 0..{len(TEXT8_ALPHABET) - 1}")
        table = _ID_TO_BYTE[ids.astype(np.int64)]
        return [row.tobytes() for row in table]
    rows = [s.encode("ascii") if isinstance(s, str) else bytes(s) for s in samples]
    return rows


def counted_words(samples: np.ndarray | Iterable[str]) -> list[bytes]:
    """The words of samples that spelling accuracy counts: runs of letters with a space on both sides."""
    words: list[bytes] = []
    for row in _rows_as_bytes(samples):
        # split on single spaces: parts[0] and parts[-1] are the possibly cut ends; empty parts are runs of spaces
        words.extend(w for w in row.split(b" ")[1:-1] if w)
    return words


def spelling_accuracy(samples: np.ndarray | Iterable[str], vocabulary: frozenset[bytes] | set[bytes]) -> tuple[float, int]:
    """(fraction of counted words in ``vocabulary``, number of counted words) of text samples."""
    words = counted_words(samples)
    if not words:
        return 0.0, 0
    return sum(w in vocabulary for w in words) / len(words), len(words)


def vocabulary_from_text(text: str | bytes) -> frozenset[bytes]:
    """The set of words (maximal runs of non-space characters) of a text."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    return frozenset(raw.split())


def text8_vocabulary(source_dir: str | None = None, cache_dir: str | Path | None = None) -> frozenset[bytes]:
    """The words of text8's training split (its first 90%; the possibly cut last word excluded), cached as a
    word list keyed by the text8 file's sha256."""
    from pipelines.data.download import locate
    from pipelines.data.paper_sets import TEXT8_FILE, read_text8, text8_split_ids
    from pipelines.quality.digits_classifier import default_cache_dir

    local = locate("text8", [TEXT8_FILE], source_dir)[TEXT8_FILE.name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"text8-train-vocabulary-{local.sha256[:16]}.txt"
    if path.is_file():
        return frozenset(path.read_bytes().split())
    # the split rule is the source's own (text8_split_ids), so the vocabulary is of exactly the training text
    train = _ID_TO_BYTE[text8_split_ids(read_text8(local.path), "train")].tobytes()
    # the 90% cut may fall inside a word: a fragment is no word, so the text after the last space is dropped
    vocabulary = vocabulary_from_text(train[:train.rfind(b" ") + 1])
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"\n".join(sorted(vocabulary)))
    tmp.replace(path)
    return vocabulary
