"""Trust and recovery (issue 22, items 1 and 2): loading verifies before it executes
(a manifest of the export's files, an allowlist of the ops its graph may hold), and
one writer per output (`OUTPUT.lock`; readers never delete a live writer's files)."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.guards import locking, trust
from tfpg.export import export_saved_model, load, recover
from tfpg.generation import generate
from tfpg.models import PolicyNetwork
from tfpg.rewards import RewardModel, train_reward_from_labels
from tfpg.text import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error, run_cli_cases  # noqa: E402

WORDS = "one two three four five six seven eight nine ten plus minus is".split()
PROMPTS = ["one plus two is", "three", "ten minus nine is"]
TFPG = [sys.executable, "-m", "tfpg.run.cli"]
ENV = {key: value for key, value in os.environ.items() if key != "TFPG_DEBUG"}
# A process that holds the writer lock of argv[1] until it is killed.
HOLD_LOCK = ("import sys, time\n"
             "from tfpg.guards.locking import output_lock\n"
             "with output_lock(sys.argv[1]):\n"
             "    print('locked', flush=True)\n"
             "    time.sleep(600)\n")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_texts([" ".join(WORDS)])


@pytest.fixture(scope="module")
def policy(tokenizer):
    keras.utils.set_random_seed(7)
    policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 24, max_length=64)
    policy.build()
    policy.lm_head.kernel.assign(policy.lm_head.kernel * 6.0)   # prompt-dependent greedy
    return policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory, policy, tokenizer):
    path = str(tmp_path_factory.mktemp("export") / "model")
    return export_saved_model(policy, tokenizer, path, max_new_tokens=6)


def greedy(policy, tokenizer, prompts):
    rows = tokenizer.encode(prompts)
    width = max(len(row) for row in rows)
    ids = np.array([[0] * (width - len(row)) + row for row in rows], np.int32)
    return tokenizer.decode(generate(policy, ids, max_new_tokens=6, sampler="greedy").token_ids)


def read_info(path):
    with open(os.path.join(path, "tfpg_export.json"), encoding="utf-8") as f:
        return json.load(f)


def write_info(path, info):
    with open(os.path.join(path, "tfpg_export.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


def copy_of(exported, directory):
    shutil.copytree(exported, directory)
    return str(directory)


# ------------------------------------------------------------- a malicious export


class FileWritingResource(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer writes `target`: `tf.saved_model.load` runs it."""

    def __init__(self, target):
        super().__init__()
        self._target = target

    def _create_resource(self):
        return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.string)

    def _initialize(self):
        return tf.io.write_file(self._target, "written at load")


class MaliciousExport(tf.Module):
    """The four signatures of a tfpg export; `generate` writes `at_call` each call,
    and a resource writes `at_load` when the SavedModel is loaded."""

    def __init__(self, at_load=None, at_call=None, extra_op=None):
        super().__init__()
        if at_load:
            self.resource = FileWritingResource(at_load)
        self._at_call, self._extra_op = at_call, extra_op
        prompts = tf.TensorSpec([None], tf.string, name="prompts")
        self.generate = tf.function(self._generate, input_signature=[prompts])
        self.generate_with_options = tf.function(self._generate_with_options, input_signature=[
            prompts, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int64)])
        self.log_probs = tf.function(self._log_probs, input_signature=[
            prompts, tf.TensorSpec([None], tf.string, name="completions")])

    def _generate(self, prompts):
        if self._at_call:
            tf.io.write_file(self._at_call, "written at call")
        if self._extra_op:
            self._extra_op()
        return {"completions": tf.strings.join([prompts, "!"]),
                "token_ids": tf.zeros([tf.shape(prompts)[0], 1], tf.int32)}

    def _generate_with_options(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        return self._generate(prompts)

    def _log_probs(self, prompts, completions):
        zeros = tf.zeros([tf.shape(prompts)[0], 1])
        return {"log_probs": zeros, "mask": zeros,
                "token_ids": tf.zeros([tf.shape(prompts)[0], 1], tf.int32)}

    def save(self, directory):
        signatures = {"generate": self.generate.get_concrete_function(),
                      "serving_default": self.generate.get_concrete_function(),
                      "generate_with_options": self.generate_with_options.get_concrete_function(),
                      "log_probs": self.log_probs.get_concrete_function()}
        tf.saved_model.save(self, directory, signatures=signatures)


def disguise(exported, directory, module, manifest="recomputed"):
    """`module` saved in `directory` beside the two JSON files of a real export: its
    copied manifest ("copied"), one made for the new files ("recomputed", what an
    attacker does) or none ("removed", as in an export of an older tfpg)."""
    module.save(str(directory))
    for name in ("tfpg_export.json", "tokenizer.json"):
        shutil.copy(os.path.join(exported, name), directory)
    info = read_info(directory)
    if manifest == "recomputed":
        info["manifest"] = trust.file_manifest(str(directory), exclude=("tfpg_export.json",))
    elif manifest == "removed":
        del info["manifest"]
    write_info(directory, info)
    return str(directory)


@pytest.fixture
def targets(tmp_path):
    """The files a malicious export would write: at load, and at each generate call."""
    return str(tmp_path / "written-at-load"), str(tmp_path / "written-at-call")


def assert_nothing_written(targets):
    assert [os.path.exists(target) for target in targets] == [False, False]


def refusal(path, error=ValueError, **options):
    with pytest.raises(error) as info:
        load(path, **options)
    message = str(info.value)
    assert "\n" not in message and path in message, message
    return message


@pytest.mark.parametrize("writes,where", [("both", "function __inference_"),
                                          ("at_load", "function __inference__initializer_"),
                                          ("at_call", "function __inference__generate_")])
@pytest.mark.parametrize("manifest", ["recomputed", "removed"])
def test_a_graph_that_writes_files_is_refused_before_it_runs(exported, tmp_path, targets,
                                                             writes, where, manifest):
    at_load, at_call = targets
    module = MaliciousExport(at_load=at_load if writes != "at_call" else None,
                             at_call=at_call if writes != "at_load" else None)
    path = disguise(exported, tmp_path / "model", module, manifest)
    with pytest.warns(UserWarning, match="no manifest") if manifest == "removed" else \
            contextlib.nullcontext():
        message = refusal(path)
    assert f"holds an op outside tfpg's exports (WriteFile in {where}" in message, message
    assert "trust_remote_code=True" in message
    assert_nothing_written(targets)


def test_a_copied_manifest_refuses_the_swapped_graph(exported, tmp_path, targets):
    path = disguise(exported, tmp_path / "model", MaliciousExport(*targets), "copied")
    assert "saved_model.pb does not match its SHA-256" in refusal(path)
    assert_nothing_written(targets)


def test_cli_generate_and_evaluate_refuse_it_in_one_line(exported, tmp_path, targets):
    path = disguise(exported, tmp_path / "model", MaliciousExport(*targets))
    edited = copy_of(exported, tmp_path / "edited")
    with open(os.path.join(edited, "saved_model.pb"), "ab") as f:
        f.write(b"\0")
    results = run_cli_cases([(["generate", path, "one plus two is"], tmp_path),
                             (["evaluate", path], tmp_path),
                             (["evaluate", path, "--task", "arithmetic"], tmp_path),
                             (["generate", edited, "one"], tmp_path)], env=ENV)
    for result in results[:3]:
        assert_usage_error(result, path, "WriteFile", "refusing to load it")
        assert result.stdout == ""
    assert_usage_error(results[3], edited, "saved_model.pb does not match its SHA-256")
    assert_nothing_written(targets)


def test_trust_remote_code_skips_the_op_check(exported, tmp_path, targets):
    """What the check guards against, shown with writes into tmp_path: the graph
    runs code when loaded and at every call."""
    at_load, at_call = targets
    path = disguise(exported, tmp_path / "model", MaliciousExport(at_load, at_call))
    model = load(path, trust_remote_code=True)
    assert os.path.exists(at_load) and not os.path.exists(at_call)
    assert model.generate(["one"]) == ["one!"]
    assert open(at_call).read() == "written at call"


def test_an_op_outside_the_allowlist_is_named_even_when_harmless(exported, tmp_path):
    module = MaliciousExport(extra_op=lambda: tf.raw_ops.Timestamp())
    path = disguise(exported, tmp_path / "model", module)
    assert "(Timestamp in function __inference__generate_" in refusal(path)
    assert load(path, trust_remote_code=True).generate(["two"]) == ["two!"]


def test_checkpoint_ops_are_allowed_only_in_the_saver(exported, tmp_path):
    target = str(tmp_path / "checkpoint")

    def save_v2():
        tf.raw_ops.SaveV2(prefix=target, tensor_names=["x"], shape_and_slices=[""],
                          tensors=[tf.constant(1.0)])
    path = disguise(exported, tmp_path / "model", MaliciousExport(extra_op=save_v2))
    assert "a checkpoint op outside the saver (SaveV2 in function __inference__generate_" \
        in refusal(path)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("checkpoint")]


def test_a_saver_def_that_reaches_a_signature_is_refused(exported, tmp_path):
    """Naming the `generate` call as the restore op would make the saver's
    file-writing ops legal in a function that `tf.saved_model.load` serves."""
    from tensorflow.core.protobuf import saved_model_pb2
    path = copy_of(exported, tmp_path / "model")
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0]
    signature_node = graph.signature_def["generate"].outputs["completions"].name.split(":")[0]
    graph.saver_def.restore_op_name = signature_node
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    info = read_info(path)
    info["manifest"] = trust.file_manifest(path, exclude=("tfpg_export.json",))
    write_info(path, info)
    assert "reach the saver" in refusal(path)


# ------------------------------------------------------------------ the manifest


def test_an_export_records_the_sha256_of_its_files(exported):
    manifest = read_info(exported)["manifest"]
    assert {"saved_model.pb", "tokenizer.json", "variables/variables.index"} <= set(manifest)
    assert any(name.startswith("variables/variables.data-") for name in manifest)
    assert "tfpg_export.json" not in manifest
    for name, digest in manifest.items():
        with open(os.path.join(exported, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name


def _append_a_byte(path):
    with open(path, "ab") as f:
        f.write(b"\0")


def _change_a_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    with open(path, "wb") as f:
        f.write(bytes(data))


def _rename_a_token(path):
    with open(path, encoding="utf-8") as f:
        tokenizer = json.load(f)
    text = json.dumps(tokenizer).replace('"seven"', '"heaven"')
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("name,edit", [
    ("saved_model.pb", _append_a_byte), ("saved_model.pb", _change_a_byte),
    ("tokenizer.json", _rename_a_token), ("variables/variables.index", _change_a_byte)],
    ids=["pb-appended", "pb-changed", "tokenizer", "variables"])
def test_an_edited_file_is_refused(exported, tmp_path, name, edit):
    path = copy_of(exported, tmp_path / "model")
    edit(os.path.join(path, name))
    message = refusal(path)
    assert f"{name} does not match its SHA-256 in tfpg_export.json" in message, message


def test_missing_and_unlisted_files_are_refused(exported, tmp_path):
    path = copy_of(exported, tmp_path / "missing")
    os.remove(os.path.join(path, "variables", "variables.index"))
    assert "variables/variables.index is missing" in refusal(path)
    path = copy_of(exported, tmp_path / "unlisted")
    shutil.copy(os.path.join(path, "saved_model.pb"), os.path.join(path, "saved_model.pbtxt"))
    assert "saved_model.pbtxt is not in the manifest" in refusal(path)
    # Files TensorFlow does not read may join an export (tfpg train adds metrics.json).
    path = copy_of(exported, tmp_path / "notes")
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("mine")
    assert load(path).generate(["one"])


def test_a_normal_export_loads_and_generates_as_before(exported, policy, tokenizer):
    expected = greedy(policy, tokenizer, PROMPTS)
    assert load(exported).generate(PROMPTS) == expected
    assert load(exported, trust_remote_code=True).generate(PROMPTS) == expected


def test_an_export_without_manifest_loads_with_a_warning(exported, policy, tokenizer,
                                                         tmp_path):
    path = copy_of(exported, tmp_path / "old")
    info = read_info(path)
    del info["manifest"]
    write_info(path, info)
    with pytest.warns(UserWarning, match="has no manifest"):
        model = load(path)
    assert model.generate(PROMPTS) == greedy(policy, tokenizer, PROMPTS)


def test_the_allowlist_excludes_file_network_and_python_ops():
    ops, saver_ops = trust.allowed_ops()
    for op in ("ReadFile", "WriteFile", "PyFunc", "EagerPyFunc", "PyFuncStateless",
               "MatchingFiles", "SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save",
               "Restore", "ImmutableConst", "PrintV2", "InitializeTableFromTextFileV2"):
        assert op not in ops, op
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= saver_ops
    assert {"StatefulPartitionedCall", "LookupTableFindV2", "MatMul"} <= ops


# ------------------------------------------------------------------ reward models


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    tok = Tokenizer.from_texts(["good film", "bad film", "fine"])
    model = train_reward_from_labels(["good film", "bad film"] * 4, [1, 0] * 4, tok, epochs=1)
    return model.save(str(tmp_path_factory.mktemp("rm") / "rm"))


def test_reward_models_get_the_same_checks(reward_model_dir, tmp_path, targets):
    from tfpg.options import UsageError
    from tfpg.run.reward_pipeline import load_reward_model
    with open(os.path.join(reward_model_dir, "reward_model.json")) as f:
        info = json.load(f)
    assert {"saved_model.pb", "model.keras", "tokenizer.json"} <= set(info["manifest"])
    expected = RewardModel.load(reward_model_dir).score(["", ""], ["good film", "bad"])

    edited = copy_of(reward_model_dir, tmp_path / "edited")
    _rename_a_token(os.path.join(edited, "tokenizer.json"))
    with pytest.raises(ValueError, match="tokenizer.json does not match its SHA-256"):
        RewardModel.load(edited)

    swapped = copy_of(reward_model_dir, tmp_path / "swapped")
    for name in ("saved_model.pb", "fingerprint.pb", "variables"):
        path = os.path.join(swapped, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    MaliciousExport(*targets).save(str(tmp_path / "malicious"))
    shutil.copytree(tmp_path / "malicious", swapped, dirs_exist_ok=True)
    info["manifest"] = trust.file_manifest(swapped, exclude=("reward_model.json",))
    with open(os.path.join(swapped, "reward_model.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError, match=r"\(WriteFile in function .*RewardModel\.load\("):
        RewardModel.load(swapped)
    with pytest.raises(UsageError, match="--reward-model: .*WriteFile"):
        load_reward_model(swapped, Tokenizer.from_texts(["good film"]))
    assert_nothing_written(targets)
    # RewardModel.load reads model.keras (in Keras' safe mode), not the graph.
    np.testing.assert_allclose(RewardModel.load(swapped, trust_remote_code=True).score(
        ["", ""], ["good film", "bad"]), expected, atol=1e-6)
    assert_nothing_written(targets)


# ------------------------------------------------------------------ one writer


@pytest.fixture
def lock_holder():
    """start(output) -> a process holding the writer lock of `output` (killed after)."""
    processes = []

    def start(output):
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)],
                                   stdout=subprocess.PIPE, text=True, env=ENV)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process
    yield start
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_writer_exits_2_naming_the_holders_pid(tmp_path, lock_holder, tokenizer):
    holder = lock_holder(tmp_path / "out" / "model")
    keras.utils.set_random_seed(0)
    small = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    small.build()
    small.save(str(tmp_path / "policy.keras"))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    results = run_cli_cases([
        (["train", "--pretrain-epochs", "1", "--epochs", "1", "--steps-per-epoch", "2",
          "--batch-size", "16", "--output", "out/model", "--logdir", "out/logs"], tmp_path),
        (["train-reward", "--task", "preference", "--epochs", "1", "--output", "out/model"],
         tmp_path),
        (["export", "policy.keras", "--output", "out/model"], tmp_path)], env=ENV)
    for result in results:
        assert_usage_error(result, "out/model is being written by another tfpg process",
                           f"PID {holder.pid}")
    assert sorted(os.listdir(tmp_path / "out")) == ["model.lock"]    # the holder's
    assert open(tmp_path / "out" / "model.lock").read().strip() == str(holder.pid)


def test_load_leaves_a_live_writers_temp_folder_alone(exported, tmp_path, lock_holder):
    target = copy_of(exported, tmp_path / "model")
    in_progress = tmp_path / "model.tmp-0123abcd"
    in_progress.mkdir()
    (in_progress / "saved_model.pb").write_bytes(b"being written")
    holder = lock_holder(target)
    assert load(target).generate(["one"])
    assert tfpg.load(target + "/").generate(["one"])
    assert (in_progress / "saved_model.pb").read_bytes() == b"being written"
    with pytest.raises(locking.OutputLockedError, match=f"PID {holder.pid}"):
        recover(target)
    assert in_progress.exists()
    # Once the writer is dead (SIGKILL: the kernel drops its lock), its folder is stale.
    holder.kill()
    holder.wait()
    assert load(target).generate(["one"])
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_the_lock_is_reentrant_and_leaves_nothing_behind(tmp_path):
    output = tmp_path / "new" / "deeper" / "model"
    with locking.output_lock(output) as path:
        assert path == str(tmp_path / "new" / "deeper" / "model.lock")
        assert open(path).read().strip() == str(os.getpid())
        with locking.output_lock(str(output) + "/"):      # the same output: re-entered
            pass
        assert os.path.exists(path)
    assert not (tmp_path / "new").exists()       # directories made for the lock alone go
    with locking.try_output_lock(tmp_path / "missing-parent" / "model") as held:
        assert held is False
    assert not (tmp_path / "missing-parent").exists()
