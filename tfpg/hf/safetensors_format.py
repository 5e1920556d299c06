"""The safetensors file format, read and written with numpy alone.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`
padded with spaces to a multiple of 8 bytes, then the tensors' raw little-endian
bytes (row-major) at those offsets. This is all tfpg needs to write a transformers
checkpoint or PEFT adapters without the `safetensors` package (and its tests to read
them back); `bfloat16` comes from `ml_dtypes`, which TensorFlow depends on.

Imports no TensorFlow.
"""

import json
import struct

import numpy as np

__all__ = ["write_file", "read_file", "read_header"]

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}
_CODES = {name: code for code, name in _DTYPES.items()}


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def write_file(path, tensors, metadata=None):
    """Writes `tensors` ({name: array}) to `path` in the safetensors format.

    Tensors are stored under their sorted names, each in its own dtype (F32, F16,
    BF16, ...), like `safetensors.numpy.save_file`.

    Args:
        path: the file to write (replaced if it exists).
        tensors: {name: numpy array (or anything `np.asarray` takes)}.
        metadata: {str: str} stored as the header's `__metadata__` (transformers
            reads `{"format": "pt"}`).
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(np.asarray(tensors[name]))
        code = _CODES.get(array.dtype.name)
        if code is None:
            raise ValueError(f"{name}: dtype {array.dtype.name} has no safetensors code")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)        # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays:
            f.write(array.tobytes())


def read_header(path):
    """The JSON header of the safetensors file `path` (a dict, `__metadata__` included)."""
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(length))


def read_file(path):
    """{name: numpy array} of the safetensors file `path` (`__metadata__` left out)."""
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = _numpy_dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(entry["shape"])
    return tensors
