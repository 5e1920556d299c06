"""Reading `*.safetensors` weights with numpy alone (no `safetensors` / torch).

The format is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}` and
the raw little-endian tensors. bfloat16 has no numpy dtype: its 16 bits are the top
half of a float32, so it is widened exactly (shifted into float32). A sharded
checkpoint (`model.safetensors.index.json`, `weight_map` name -> file) is read file
by file.
"""

import json
import os

import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


def read_header(path):
    """(header dict without "__metadata__", byte offset of the data) of one file."""
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        size = int.from_bytes(size_bytes, "little")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _decode(raw, dtype, shape, path, name):
    if dtype == "BF16":
        # A bfloat16 is the upper 16 bits of the float32 with the same value.
        bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if dtype not in _DTYPES:
        raise ValueError(f"{path}: tensor {name} has dtype {dtype}, which tfpg cannot "
                         f"read (supported: BF16, {', '.join(_DTYPES)})")
    return np.frombuffer(raw, np.dtype(_DTYPES[dtype]).newbyteorder("<")).reshape(shape)


class SafetensorsReader:
    """The tensors of a checkpoint directory, by name, as numpy arrays.

    bfloat16 tensors come back as float32 (exact); the other dtypes as stored.
    KerasHub's converters call `port_weight(keras_variable, hf_weight_key, hook_fn)`
    and `get_tensor(key)` on their loader: this class has both, so a converter's
    `convert_weights(backbone, reader, config)` reads through it.

    Args:
        directory: a directory with `model.safetensors`, or shards named by
            `model.safetensors.index.json`.
    """

    def __init__(self, directory):
        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                self.weight_map = dict(json.load(f)["weight_map"])
        elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
            header, _ = read_header(os.path.join(directory, SINGLE_FILE))
            self.weight_map = {name: SINGLE_FILE for name in header}
        else:
            raise ValueError(f"{directory}: no {SINGLE_FILE} (nor {INDEX_FILE}); tfpg reads "
                             "transformers checkpoints saved as safetensors")
        self._headers = {}
        self.prefix = ""

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
        if file not in self._headers:
            self._headers[file] = read_header(os.path.join(self.directory, file))
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
        return _decode(raw, entry["dtype"], entry["shape"], file, key)

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
