"""The safetensors format, read and written with numpy alone (no `safetensors`, no torch).

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`
(padded with spaces to a multiple of 8 bytes), then the tensors' raw little-endian
bytes (row-major) at those offsets. A sharded checkpoint
(`model.safetensors.index.json`, `weight_map` name -> file) is read file by file.

`read_file` / `write_file` keep each tensor's dtype (bfloat16 is `ml_dtypes.bfloat16`,
which TensorFlow depends on): what tfpg needs to write a transformers checkpoint or
PEFT adapters, and its tests to read them back. `SafetensorsReader` reads a checkpoint
directory for KerasHub's converters, bfloat16 widened to float32 (exact: a bfloat16 is
the upper half of the float32 with the same value).

Imports no TensorFlow.
"""

import json
import os
import struct

import numpy as np

__all__ = ["SafetensorsReader", "read_file", "read_header", "write_file"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_METADATA = "__metadata__"
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}
_CODES = {name: code for code, name in _DTYPES.items()}


def _numpy_dtype(code, path="", name=""):
    """The little-endian numpy dtype of a safetensors dtype code ("F32", "BF16", ...)."""
    if code not in _DTYPES:
        raise ValueError(f"{path}: tensor {name} has dtype {code}, which tfpg cannot read "
                         f"(supported: {', '.join(_DTYPES)})")
    if code == "BF16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code]).newbyteorder("<")


def _read_header(f, path):
    """(header dict, `__metadata__` included; byte offset of the data) of the open file."""
    size_bytes = f.read(8)
    if len(size_bytes) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    size = struct.unpack("<Q", size_bytes)[0]
    try:
        header = json.loads(f.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    return header, 8 + size


def _decode(raw, entry, path, name):
    """The numpy array of one tensor's bytes, in its stored dtype."""
    dtype = _numpy_dtype(entry["dtype"], path, name)
    return np.frombuffer(raw, dtype).reshape(entry["shape"])


def read_header(path):
    """The JSON header of the safetensors file `path` (a dict, `__metadata__` included)."""
    with open(path, "rb") as f:
        return _read_header(f, path)[0]


def read_file(path):
    """{name: numpy array} of the safetensors file `path`, each in its stored dtype
    (`__metadata__` left out)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
        data = f.read()
    return {name: _decode(data[entry["data_offsets"][0]:entry["data_offsets"][1]], entry,
                          path, name)
            for name, entry in header.items() if name != _METADATA}


def write_file(path, tensors, metadata=None):
    """Writes `tensors` ({name: array}) to `path` in the safetensors format.

    Tensors are stored under their sorted names, each in its own dtype (F32, F16,
    BF16, ...), like `safetensors.numpy.save_file`.

    Args:
        path: str. The file to write (replaced if it exists).
        tensors: dict. Name -> numpy array (or anything `np.asarray` takes).
        metadata: dict or None. str -> str, stored as the header's `__metadata__`
            (transformers reads `{"format": "pt"}`).
    """
    header = {}
    if metadata:
        header[_METADATA] = {str(k): str(v) for k, v in metadata.items()}
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


class SafetensorsReader:
    """The tensors of a checkpoint directory, by name, as numpy arrays.

    bfloat16 tensors come back as float32 (exact); the other dtypes as stored.
    KerasHub's converters call `port_weight(keras_variable, hf_weight_key, hook_fn)`
    and `get_tensor(key)` on their loader: this class has both, so a converter's
    `convert_weights(backbone, reader, config)` reads through it.

    Args:
        directory: str. A directory with `model.safetensors`, or shards named by
            `model.safetensors.index.json`.
    """

    def __init__(self, directory):
        self.directory = directory
        self._headers = {}
        self.prefix = ""
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                self.weight_map = dict(json.load(f)["weight_map"])
        elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
            header, _ = self._header(SINGLE_FILE)
            self.weight_map = {name: SINGLE_FILE for name in header}
        else:
            raise ValueError(f"{directory}: no {SINGLE_FILE} (nor {INDEX_FILE}); tfpg reads "
                             "transformers checkpoints saved as safetensors")

    def keys(self):
        return list(self.weight_map)

    def dtypes(self):
        """The set of stored dtypes ("F32", "BF16", ...)."""
        kinds = set()
        for file in set(self.weight_map.values()):
            header, _ = self._header(file)
            kinds |= {entry["dtype"] for entry in header.values()}
        return kinds

    def _header(self, file):
        """(header without `__metadata__`, byte offset of the data) of one file."""
        if file not in self._headers:
            with open(os.path.join(self.directory, file), "rb") as f:
                header, start = _read_header(f, file)
            header.pop(_METADATA, None)
            self._headers[file] = header, start
        return self._headers[file]

    def _key(self, name):
        """The stored name of `name`: itself, or with the prefix the file uses
        (e.g. "model." of a CausalLM where KerasHub asks for "embed_tokens.weight")."""
        if name in self.weight_map:
            return name
        for key in self.weight_map:
            if key.endswith("." + name):
                return key
        raise KeyError(f"{self.directory}: no weight named {name!r} in the checkpoint")

    def get_tensor(self, name):
        key = self._key(name)
        file = self.weight_map[key]
        header, start = self._header(file)
        entry = header[key]
        begin, end = entry["data_offsets"]
        with open(os.path.join(self.directory, file), "rb") as f:
            f.seek(start + begin)
            raw = f.read(end - begin)
        tensor = _decode(raw, entry, file, key)
        # KerasHub's converters take float32; widening a bfloat16 is exact.
        return tensor.astype(np.float32) if entry["dtype"] == "BF16" else tensor

    def __contains__(self, name):
        try:
            self._key(name)
        except KeyError:
            return False
        return True

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        """keras_variable <- the tensor (through `hook_fn(tensor, keras_shape)`)."""
        tensor = self.get_tensor(hf_weight_key)
        if hook_fn is not None:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        keras_variable.assign(np.asarray(tensor).reshape(keras_variable.shape))

    # KerasHub's loader is a context manager.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
