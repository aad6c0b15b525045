"""Safetensors files with numpy alone: the format `[model] custom = { init = … }` reads
and `serve` writes a custom model's final weights in (PyTorch reads both with
``safetensors.torch``; these helpers need no torch)."""

from __future__ import annotations

import json
import struct
from typing import Dict, Mapping, Optional

import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: str, metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Writes ``tensors`` (name to numpy array) to ``path`` as safetensors, in the given
    order, little-endian."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        kind = _NAMES.get(array.dtype.str)
        if kind is None:
            raise ValueError(f"tensor `{name}`: dtype {array.dtype} has no safetensors name")
        data = array.tobytes()
        header[name] = {"dtype": kind, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for chunk in chunks:
            out.write(chunk)


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
    """The tensors of the safetensors file at ``path``, by name, in the file's order."""
    with open(path, "rb") as source:
        raw = source.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
    (size,) = struct.unpack("<Q", raw[:8])
    if 8 + size > len(raw):
        raise ValueError(f"{path}: not a safetensors file (header runs past the end)")
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    data = memoryview(raw)[8 + size :]
    tensors = {}
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return tensors
