"""What one stored sample looks like: dtype, shape, and what its values mean.

Shards store raw data (uint8 grey levels, symbol ids, float32 points); the model-side form, a
(data kind, K) pair of bfn_core, is chosen at read time (see transforms.py).  A ``FieldSpec`` says
enough about the stored values to decide which reads make sense: grey levels can be read as
discretised bins, binarised or kept as classes; symbol ids only as classes.

A class label (the optional field ``y`` of a labelled set) is a FieldSpec too, made by
:func:`class_label_field`: a scalar int64 with ``content="label"``, so the writer, the range check
(0..K-1) and the fixed record layout treat it exactly like ``x``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DATA_KINDS = ("continuous", "discretised", "discrete")
CONTENTS = ("image", "text", "points", "sequence", "label")
LABEL_DTYPE = "int64"


@dataclass(frozen=True)
class FieldSpec:
    """One stored field of a sample.

    ``data_kind``/``num_classes`` describe the stored values: "discretised" with K grey levels
    0..K-1, "discrete" with K classes 0..K-1, or "continuous" floats in [-1, 1] (K is None).
    ``content`` says how to show it ("image", "text", "points", "sequence"); ``alphabet`` maps
    class ids of text or sequences to characters.
    """

    dtype: str
    shape: tuple[int, ...]
    data_kind: str
    num_classes: int | None
    content: str
    alphabet: str | None = None
    encoding: str = "raw"  # C-order bytes of an array of `dtype` and `shape`: no header to parse
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.data_kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be one of {DATA_KINDS}, not {self.data_kind!r}")
        if self.content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, not {self.content!r}")
        if (self.num_classes is None) != (self.data_kind == "continuous"):
            raise ValueError("num_classes is required for discretised and discrete data, and None for continuous")
        np.dtype(self.dtype)  # raises for an unknown dtype name
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "_nbytes", int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize)

    @property
    def nbytes(self) -> int:
        return self._nbytes  # computed once: the reader asks for it per block

    @property
    def class_names(self) -> list[str] | None:
        """A label field's names of classes 0..K-1, where the source publishes them."""
        return self.extra.get("class_names")

    def member(self, name: str) -> str:
        """The tar member suffix of this field, e.g. ``x.uint8`` (webdataset's "extension")."""
        return f"{name}.{self.dtype}"

    def encode(self, value: np.ndarray) -> bytes:
        value = np.asarray(value)
        if value.shape != self.shape:
            raise ValueError(f"sample shape {value.shape} differs from the schema's {self.shape}")
        return np.ascontiguousarray(value, dtype=self.dtype).tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        """The stored array (read-only view of ``data``); a wrong length raises ValueError."""
        if len(data) != self.nbytes:
            raise ValueError(f"member has {len(data)} bytes, the schema expects {self.nbytes}")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dtype": self.dtype, "shape": list(self.shape), "data_kind": self.data_kind,
            "num_classes": self.num_classes, "content": self.content, "encoding": self.encoding,
        }
        if self.alphabet is not None:
            out["alphabet"] = self.alphabet
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FieldSpec":
        known = {"dtype", "shape", "data_kind", "num_classes", "content", "alphabet", "encoding"}
        return cls(
            dtype=d["dtype"], shape=tuple(d["shape"]), data_kind=d["data_kind"], num_classes=d.get("num_classes"),
            content=d["content"], alphabet=d.get("alphabet"), encoding=d.get("encoding", "raw"),
            extra={k: v for k, v in d.items() if k not in known},
        )


def class_label_field(num_classes: int, class_names: list[str] | tuple[str, ...] | None = None) -> FieldSpec:
    """The field ``y`` of a labelled set: one int64 class id in 0..num_classes-1 per sample."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    extra = {"class_names": [str(n) for n in class_names]} if class_names is not None else {}
    return FieldSpec(LABEL_DTYPE, (), "discrete", int(num_classes), "label", extra=extra)


def is_label_field(spec: FieldSpec) -> bool:
    return spec.content == "label" and spec.shape == () and np.dtype(spec.dtype).kind in "iu" and bool(spec.num_classes)


@dataclass(frozen=True)
class ReadSpec:
    """A model-side form: bfn_core's data kind and K (None for continuous)."""

    data_kind: str
    num_classes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"data_kind": self.data_kind, "num_classes": self.num_classes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ReadSpec":
        return cls(d["data_kind"], d.get("num_classes"))

    def label(self) -> str:
        return self.data_kind if self.num_classes is None else f"{self.data_kind} K={self.num_classes}"
