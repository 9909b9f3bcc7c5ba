"""Text as symbol ids: the text8 alphabet and the conversions both ways.

Apart from transforms.py because the text sources (paper_sets.py) need only these, and must stay
importable without torch (``bfn data shard --help`` and the writer do not pay for it).
"""
from __future__ import annotations

import numpy as np

TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"  # id 0 is the space, then a..z = 1..26


def encode_text(text: str | bytes, alphabet: str = TEXT8_ALPHABET) -> np.ndarray:
    """Characters -> uint8 ids (space = 0, a..z = 1..26 for text8); other characters raise ValueError."""
    raw = text.encode("ascii", errors="strict") if isinstance(text, str) else bytes(text)
    table = np.full(256, 255, dtype=np.uint8)
    for i, ch in enumerate(alphabet):
        table[ord(ch)] = i
    ids = table[np.frombuffer(raw, dtype=np.uint8)]
    bad = np.flatnonzero(ids == 255)
    if bad.size:
        ch = chr(raw[bad[0]])
        raise ValueError(f"character {ch!r} at position {int(bad[0])} is not in the alphabet {alphabet!r}")
    return ids


def decode_text(ids: np.ndarray, alphabet: str = TEXT8_ALPHABET) -> str:
    """uint8/int64 ids -> characters (inverse of encode_text)."""
    return "".join(alphabet[int(i)] for i in np.asarray(ids).reshape(-1))
