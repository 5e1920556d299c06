"""What a model directory must show before tfpg runs it: a manifest and known ops.

A SavedModel is a program, not data (TensorFlow's own security guidance says so):
`tf.saved_model.load` runs the graph's resource initializers at once, and every
signature call runs whatever ops its function holds, `WriteFile` and `PyFunc`
included. So before `tfpg.load` (and `RewardModel.load`) hands a directory to
TensorFlow, it checks two things here:

* the manifest: the SHA-256 of every file of the export (`saved_model.pb`, each file
  under `variables/`, `tokenizer.json`, ...), recorded by the export in its marker
  JSON. A file edited or swapped after the export is refused. The manifest sits in
  the directory it describes, so it proves integrity (a corrupt copy, an edited
  graph), not authorship: whoever rewrites `saved_model.pb` can rewrite the manifest
  too. That is what the op check is for.
* the ops: `saved_model.pb` is parsed (never executed) and every node of every graph
  and of every function in its libraries (resource initializers, signatures, the
  checkpoint saver) must be an op type that tfpg's own exports contain
  (`tfpg/guards/allowed_ops.json`, derived by `benchmarks/export_ops.py` from the
  exports of every backbone, KerasHub family, tokenizer and reward model). None of
  them reads or writes files, opens sockets or calls Python.

The one exception is the checkpoint saver: every SavedModel carries a save and a
restore function (`saver_def`, used by session-based loaders such as TF Serving to
restore the variables from the directory's own `variables/`) whose `SaveV2`,
`RestoreV2` and `MergeV2Checkpoints` touch files. Those ops ("saver_ops" in the
allowlist) are accepted only inside the functions that `saver_def` names (and the
functions they call), and only when no other node or function calls them (a
signature that calls the saver could write the variables anywhere). TensorFlow 2's
`tf.saved_model.load` restores the variables with its own Python-built ops and
never runs these functions.

`trust_remote_code=True` skips the op check (not the manifest) for a graph its user
built himself; it then runs whatever the graph holds, with the user's rights.
"""

import functools
import hashlib
import json
import os

__all__ = ["UntrustedModelError", "file_manifest", "verify_manifest", "check_saved_model_ops",
           "verify_model_directory", "allowed_ops", "require_directory"]

ALLOWED_OPS_FILE = os.path.join(os.path.dirname(__file__), "allowed_ops.json")
# The files TensorFlow's loaders read: none may be there unless the manifest names it.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "saved_model.cpb",
                     "fingerprint.pb")
SAVED_MODEL_DIRECTORIES = ("variables", "assets")
_CHUNK = 1 << 20


class UntrustedModelError(ValueError):
    """A model directory that fails its manifest or holds an op tfpg never exports;
    the CLI reports it in one line and exits with status 2."""


def require_directory(path, what="tfpg SavedModel"):
    """FileNotFoundError "PATH: no such directory (expected a WHAT)" when `path` does not
    exist: the first thing a model directory must show (the command line asks before
    TensorFlow starts)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such directory (expected a {what})")


def file_manifest(directory, exclude=()):
    """{relative path: SHA-256 hex} of every file under `directory` (paths with "/"),
    except the names in `exclude` (the marker file that will hold the manifest)."""
    manifest = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            relative = os.path.relpath(full, directory).replace(os.sep, "/")
            if relative not in exclude:
                manifest[relative] = _sha256(full)
    return manifest


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_manifest(directory, manifest, marker, what):
    """Raises UntrustedModelError unless every file of `manifest` is in `directory`
    with its SHA-256, and no file TensorFlow reads is there unlisted (a
    `saved_model.pbtxt`, an extra variables shard). `marker` names the file holding
    the manifest and `what` the kind of model, for the message."""
    if not isinstance(manifest, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()):
        raise UntrustedModelError(f"{directory}: cannot load the {what}: the manifest in "
                                  f"{marker} is malformed")
    # The graph first: when it was swapped, that is the line worth reading.
    for relative, expected in sorted(manifest.items(),
                                     key=lambda item: (item[0] != "saved_model.pb", item[0])):
        full = os.path.join(directory, *relative.split("/"))
        if ".." in relative.split("/") or not os.path.isfile(full):
            raise UntrustedModelError(f"{directory}: cannot load the {what}: {relative} is "
                                      f"missing (listed in {marker})")
        if _sha256(full) != expected:
            raise UntrustedModelError(
                f"{directory}: cannot load the {what}: {relative} does not match its SHA-256 "
                f"in {marker} (changed since it was written); refusing to load it")
    for relative in _files_tensorflow_reads(directory):
        if relative not in manifest:
            raise UntrustedModelError(f"{directory}: cannot load the {what}: {relative} is "
                                      f"not in the manifest of {marker}; refusing to load it")


def _files_tensorflow_reads(directory):
    for name in SAVED_MODEL_FILES:
        if os.path.lexists(os.path.join(directory, name)):
            yield name
    for top in SAVED_MODEL_DIRECTORIES:
        for root, _, names in os.walk(os.path.join(directory, top)):
            for name in names:
                yield os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")


@functools.lru_cache(maxsize=1)
def allowed_ops():
    """(ops allowed anywhere, ops allowed only in the checkpoint saver's functions),
    two frozensets read from `tfpg/guards/allowed_ops.json`."""
    with open(ALLOWED_OPS_FILE, encoding="utf-8") as f:
        data = json.load(f)
    return frozenset(data["ops"]), frozenset(data["saver_ops"])


def read_saved_model(directory, what="SavedModel"):
    """The parsed `saved_model.pb` of `directory` (a `SavedModel` protobuf), or a
    one-line ValueError. Parsing a protobuf runs nothing."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2
    path = os.path.join(directory, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, DecodeError, RuntimeWarning) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{directory}: cannot load the {what} (cannot parse saved_model.pb: "
                         f"{first})") from None
    return proto


def graph_ops(proto):
    """Every op of a `SavedModel` protobuf: yields (op type, where, in_saver) for each
    node of each graph and each library function, where "where" is "the graph" or
    "function NAME", and `in_saver` tells whether the node belongs to the checkpoint
    saver (see the module docstring). A node whose op names a library function is a
    call of it, not an op: it is yielded as ("<call>", where, in_saver).

    Raises `SaverExposedError` when anything but `saver_def` can reach the saver.
    """
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        saver_nodes, saver_functions = _saver_scope(meta_graph, functions)
        for node in graph.node:
            yield _op_of(node, functions), "the graph", node.name in saver_nodes
        for name, function in functions.items():
            for node in function.node_def:
                yield _op_of(node, functions), f"function {name}", name in saver_functions


class SaverExposedError(Exception):
    """The saver's nodes or functions are reachable from something other than
    `saver_def` (args: what is reached, from where)."""


def _saver_scope(meta_graph, functions):
    """(saver node names, saver function names) of one MetaGraphDef, after checking
    that only `saver_def` reaches them: no other graph node takes a saver node as
    input, no signature or collection names one, no other function calls a saver
    function, and TensorFlow 2's object graph (what `tf.saved_model.load` can call)
    holds none."""
    graph = meta_graph.graph_def
    saver_nodes = _saver_node_names(meta_graph.saver_def)
    saver_functions = _reachable(
        [name for node in graph.node if node.name in saver_nodes
         for name in _calls(node, functions)], functions)
    for node in graph.node:
        if node.name in saver_nodes:
            continue
        for source in node.input:
            if _node_name(source) in saver_nodes:
                raise SaverExposedError(_node_name(source), f"graph node {node.name}")
        _check_no_saver_call(node, "the graph", saver_functions, functions)
    for name, function in functions.items():
        if name not in saver_functions:
            for node in function.node_def:
                _check_no_saver_call(node, f"function {name}", saver_functions, functions)
    for key, signature in meta_graph.signature_def.items():
        for tensor in list(signature.inputs.values()) + list(signature.outputs.values()):
            if _node_name(tensor.name) in saver_nodes:
                raise SaverExposedError(_node_name(tensor.name), f"signature {key}")
    for key, collection in meta_graph.collection_def.items():
        names = list(collection.node_list.value) + [
            value.decode("utf-8", "replace") for value in collection.bytes_list.value]
        for name in names:
            if _node_name(name) in saver_nodes:
                raise SaverExposedError(_node_name(name), f"collection {key}")
    for name in meta_graph.object_graph_def.concrete_functions:
        if name in saver_functions:
            raise SaverExposedError(name, "the object graph")
    return saver_nodes, saver_functions


def _node_name(tensor_name):
    """"^node", "node:0" -> "node"."""
    return tensor_name.lstrip("^").split(":")[0]


def _op_of(node, functions):
    return "<call>" if node.op in functions else node.op


def _saver_node_names(saver_def):
    """The graph nodes `saver_def` runs: its save tensor's and restore op's nodes."""
    names = {_node_name(name) for name in (saver_def.save_tensor_name,
                                           saver_def.restore_op_name)}
    return names - {""}


def _calls(node, functions):
    """Names of the library functions a node calls: its op itself, or any function
    (or list of functions) among its attributes (`f`, `then_branch`, `body`, ...)."""
    called = [node.op] if node.op in functions else []
    for value in node.attr.values():
        called.extend(_attr_functions(value))
    return [name for name in called if name in functions]


def _attr_functions(value):
    if value.HasField("func"):
        yield value.func.name
        for inner in value.func.attr.values():
            yield from _attr_functions(inner)
    if value.HasField("list"):
        for func in value.list.func:
            yield func.name
            for inner in func.attr.values():
                yield from _attr_functions(inner)


def _reachable(roots, functions):
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            stack.extend(_calls(node, functions))
    return seen


def _check_no_saver_call(node, where, saver_functions, functions):
    for callee in _calls(node, functions):
        if callee in saver_functions:
            raise SaverExposedError(callee, where)


def check_saved_model_ops(directory, what="SavedModel", anyway=None):
    """Raises UntrustedModelError, in one line naming the first op (and where it is),
    when `saved_model.pb` holds an op outside tfpg's allowlist, a saver-only op
    outside the saver, or a call of the saver from elsewhere. `anyway` is the call
    that would load it regardless, named in the message."""
    ops, saver_ops = allowed_ops()
    proto = read_saved_model(directory, what)
    hint = f" ({anyway} loads it anyway)" if anyway else ""
    try:
        for op, where, in_saver in graph_ops(proto):
            if op == "<call>" or op in ops or (in_saver and op in saver_ops):
                continue
            kind = "a checkpoint op outside the saver" if op in saver_ops else \
                "an op outside tfpg's exports"
            raise UntrustedModelError(f"{directory} holds {kind} ({op} in {where}): refusing "
                                      f"to load it{hint}")
    except SaverExposedError as exposed:
        reached, source = exposed.args
        raise UntrustedModelError(
            f"{directory} lets more than its checkpoint restore reach the saver ({reached} "
            f"from {source}): refusing to load it{hint}") from None


def verify_model_directory(directory, info, marker, what, trust_remote_code=False,
                           anyway=None):
    """The checks before TensorFlow reads `directory`: its manifest (`info["manifest"]`,
    from the marker file `marker`), then, unless `trust_remote_code`, the ops of its
    `saved_model.pb`.

    A directory written before manifests existed (no "manifest" key) is still loaded,
    with a warning: its files cannot be checked for edits, but the op check, which is
    what keeps code from running, applies to it as to any other.
    """
    import warnings
    manifest = info.get("manifest")
    if manifest is None:
        warnings.warn(f"{directory}: {marker} has no manifest (written by an older tfpg), "
                      "so its files cannot be checked for changes; write it again to add "
                      "one", stacklevel=3)
    else:
        verify_manifest(directory, manifest, marker, what)
    if not trust_remote_code:
        check_saved_model_ops(directory, what, anyway)
