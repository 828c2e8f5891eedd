"""A served model's signature: named input and output tensors with dtypes and shapes.

Framework neutral (numpy dtype names, ``None`` for a dimension of any size;
the first dimension is the batch). The registry records it in ``model.json``,
the validation gate builds a sample input from it, and the server checks each
request against it before the request reaches the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError


class InputError(WorkbenchError, ValueError):
    """A request's inputs do not fit the signature (names, shape, dtype)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a numpy dtype name: float32, int64, bool, object (strings)...
    shape: tuple[int | None, ...]  # shape[0] is the batch dimension

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(None if s is None or s < 0 else int(s) for s in d["shape"]))

    def describe(self) -> str:
        dims = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method: str = "predict"
    extra: dict[str, Any] = field(default_factory=dict)  # framework-specific facts (e.g. TF tensor names)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "method": self.method,
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            d.get("method", "predict"),
            dict(d.get("extra") or {}),
        )

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise InputError(f"unknown input {name!r}; this model's inputs: {self.input_names()}")

    def input_names(self) -> str:
        return ", ".join(t.name for t in self.inputs)

    def sample(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """A random input batch that fits the signature (unknown dimensions become 1)."""
        rng = np.random.default_rng(seed)
        out = {}
        for t in self.inputs:
            shape = (batch, *(1 if s is None else s for s in t.shape[1:]))
            kind = np.dtype(t.dtype).kind if t.dtype != "object" else "O"
            if kind == "f":
                out[t.name] = rng.random(shape).astype(t.dtype)
            elif kind in "iu":
                out[t.name] = rng.integers(0, 2, shape).astype(t.dtype)
            elif kind == "b":
                out[t.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[t.name] = np.full(shape, "", dtype=object)
        return out


def coerce(spec: TensorSpec, value: Any, batched: bool = True) -> np.ndarray:
    """``value`` (nested lists or an array) as an array of ``spec``'s dtype and shape, or a clear InputError."""
    if spec.dtype == "object":  # strings: text and bytes may mix, which numpy's own string types cannot hold
        arr = np.asarray(value, dtype=object)
        if not all(isinstance(v, (str, bytes)) for v in arr.flat):
            raise InputError(f'input {spec.name!r} must be strings (text, or binary as {{"b64": ...}})')
    else:
        try:
            arr = np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise InputError(f"input {spec.name!r} is not a rectangular array ({e})") from None
        arr = _cast(spec, arr, np.dtype(spec.dtype))
    shape = spec.shape if batched else spec.shape[1:]
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=False)):
        what = "shape" if batched else "shape of one instance"
        expected = ", ".join("?" if s is None else str(s) for s in shape)
        raise InputError(f"input {spec.name!r} has {what} {list(arr.shape)}; the model expects [{expected}]")
    return arr


def _cast(spec: TensorSpec, arr: np.ndarray, want: np.dtype) -> np.ndarray:
    """``arr`` as the numeric or boolean ``want`` (strings are coerce's own case)."""
    have = arr.dtype.kind
    ok = {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}.get(want.kind, want.kind)
    if have not in ok:
        got = {"f": "floating-point numbers", "U": "strings", "S": "bytes", "O": "mixed values", "b": "booleans"}.get(
            have, arr.dtype.name
        )
        raise InputError(f"input {spec.name!r} must be {spec.dtype}; got {got}")
    if want.kind in "iu" and have in "iu":
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InputError(f"input {spec.name!r} has values outside the range of {spec.dtype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return arr.astype(want, copy=False)
    except FloatingPointError:
        raise InputError(f"input {spec.name!r} has values outside the range of {spec.dtype}") from None
