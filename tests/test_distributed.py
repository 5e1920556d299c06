"""Scale-out and fault tolerance: strategies, mixed precision, determinism, crashes.

The multi-process tests start real TensorFlow clusters on 127.0.0.1 (free ports) and
real `tfpg` commands, with tiny models so that they stay fast on 2 CPU cores.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfpg
from tfpg.run import pipeline
from tfpg.algorithms import PPO
from tfpg.distribution import apply_gradients

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
TFPG = [sys.executable, "-m", "tfpg.run.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# A tiny `tfpg train`: 80 one-digit sums, a 16/32 LSTM, 2 + 2 epochs of 2-5 steps.
TINY = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16, "steps_per_epoch": 2}
TRAIN = ["train", "--train-file", "add.tsv", "--config", "tiny.yaml", "--pretrain-epochs",
         "2", "--epochs", "2", "--reward", "length", "--max-new-tokens", "4"]
# Fields of metrics.json that name the run rather than measure it.
RUN_FIELDS = ("seconds", "output", "strategy", "replicas")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def write_tiny_job(directory):
    rng = np.random.default_rng(0)
    lines = [f"{a} + {b} =\t{' '.join(str(a + b))}" for a, b in rng.integers(0, 10, (80, 2))]
    (directory / "add.tsv").write_text("\n".join(lines) + "\n")
    (directory / "tiny.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))


def tfpg_cli(args, cwd, env=None, timeout=600):
    return subprocess.run(TFPG + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def metrics_of(path):
    metrics = json.loads(open(path).read())
    return {key: value for key, value in metrics.items() if key not in RUN_FIELDS}


def assert_close(a, b, tolerance):
    """Nested dicts / lists equal, floats to `tolerance`."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_close(a[key], b[key], tolerance)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, tolerance)
    elif isinstance(a, float):
        assert abs(a - b) <= tolerance, (a, b)
    else:
        assert a == b


# ------------------------------------------------------------------ strategies


def test_two_workers_equal_one_process_on_the_combined_batch(tmp_path):
    """MultiWorkerMirroredStrategy, 2 processes x 1 CPU, 3 steps of PPO and RLOO on
    global batches of 7 rows (4 + 3: each worker samples its rows with the noise a
    single device would use for them)."""
    script = os.path.join(SCRIPTS, "multi_worker_train.py")
    for attempt in range(2):            # a free port may be taken before a worker binds
        ports = ",".join(map(str, free_ports(2)))
        workers = [subprocess.Popen([sys.executable, script, str(i), ports, str(tmp_path),
                                     "ppo", "rloo"], env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for i in range(2)]
        outputs = [worker.communicate(timeout=500) for worker in workers]
        if all(worker.returncode == 0 for worker in workers) or attempt == 1:
            break
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]

    sys.path.insert(0, SCRIPTS)
    try:
        import multi_worker_train
    finally:
        sys.path.remove(SCRIPTS)
    for name in ("ppo", "rloo"):
        reference, _, update = multi_worker_train.train(name, tf.distribute.get_strategy())
        assert update > 1e-3, name                      # the steps really trained
        workers = [np.load(tmp_path / f"{name}-{i}.npz") for i in range(2)]
        weights = [[w[f"arr_{j}"] for j in range(len(reference))] for w in workers]
        for a, b in zip(*weights):
            assert np.array_equal(a, b), name                # the workers agree exactly
        difference = max(float(np.abs(a - r).max()) for a, r in zip(weights[0], reference))
        assert difference <= 1e-5, (name, difference)


def start(args, cwd, env=None):
    return subprocess.Popen(TFPG + args, cwd=cwd, env=env or ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(processes, timeout=500):
    """Waits for every process; returns their (stdout, stderr) after checking exit 0."""
    outputs = [process.communicate(timeout=timeout) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


@pytest.fixture(scope="module")
def deterministic_run(tmp_path_factory):
    """`tfpg train --deterministic` on the tiny job, on one device. (That two such runs
    give the same bits is test_resume's: the unbroken run equals the resumed one.)"""
    workdir = tmp_path_factory.mktemp("deterministic")
    write_tiny_job(workdir)
    finish([start(TRAIN + ["--deterministic", "--output", "first/model", "--logdir",
                           "first/logs"], workdir)])
    assert metrics_of(workdir / "first/model/metrics.json")["after"]["kl"] != 0.0  # it trained
    return workdir


def test_cli_mirrored_and_multi_worker_runs_match_the_single_device_run(deterministic_run):
    """The same `tfpg train` on 2 logical CPUs and on 2 worker processes (all three
    processes at once) gives the single-device metrics.json."""
    workdir = deterministic_run
    single = metrics_of(workdir / "first/model/metrics.json")
    mirrored_args = TRAIN + ["--deterministic", "--strategy", "mirrored",
                             "--num-cpu-devices", "2", "--output", "mirrored/model",
                             "--logdir", "mirrored/logs"]
    worker_args = TRAIN + ["--deterministic", "--strategy", "multi_worker", "--output",
                           "multi/model", "--logdir", "multi/logs"]
    mirrored = start(mirrored_args, workdir)
    for attempt in range(2):            # a free port may be taken before a worker binds
        ports = free_ports(2)
        workers = [start(worker_args, workdir, dict(ENV, TF_CONFIG=tf_config(ports, i)))
                   for i in range(2)]
        outputs = [worker.communicate(timeout=500) for worker in workers]
        if all(worker.returncode == 0 for worker in workers) or attempt == 1:
            break
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    finish([mirrored])

    assert "held-out" in outputs[0][0]                       # the chief reports
    assert "the chief evaluates and exports" in outputs[1][0]
    for name, strategy in (("mirrored", "mirrored"), ("multi", "multi_worker")):
        metrics = json.loads((workdir / f"{name}/model/metrics.json").read_text())
        assert (metrics["strategy"], metrics["replicas"]) == (strategy, 2)
        assert_close(metrics_of(workdir / f"{name}/model/metrics.json"), single, 1e-4)
    assert tfpg.load(str(workdir / "multi/model")).generate(["3 + 4 ="])


def test_multi_worker_without_tf_config_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from tfpg.run.cli import main
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--strategy", "multi_worker", "--output", "out/m"]) == 2
    err = capsys.readouterr().err
    assert "TF_CONFIG" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------ mixed precision


@pytest.fixture
def precision():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)
    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def toy_prompts():
    prompts = np.array([[1, 4], [1, 6], [1, 7], [0, 1]] * 4, np.int32)
    return tf.data.Dataset.from_tensor_slices({"prompt": prompts}).batch(16)


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1)


@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_logits_and_loss_scaling(precision, policy_name):
    precision(policy_name)
    keras.utils.set_random_seed(0)
    policy = tfpg.PolicyNetwork(8, 16, 32)
    agent = PPO(policy, count_fives, value_model=tfpg.ValueNetwork(8, 16, 32),
                max_new_tokens=4, eos_id=None, num_epochs=2)
    agent.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert policy.dtype_policy.name == policy_name
    assert policy(tf.constant([[1, 4]])).dtype == tf.float32          # float32 log-softmax
    assert all(v.dtype == "float32" for v in agent.trainable_variables)
    is_scaled = isinstance(agent.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (policy_name == "mixed_float16")
    before = [v.numpy() for v in agent.trainable_variables]
    history = agent.fit(toy_prompts().repeat(3), epochs=1, verbose=0).history
    after = [v.numpy() for v in agent.trainable_variables]
    assert all(np.isfinite(value) for value in history["policy_loss"])
    assert all(np.isfinite(a).all() for a in after)
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) > 1e-4
    if is_scaled:
        assert float(agent.optimizer.dynamic_scale) > 1.0


def test_clipping_under_loss_scaling_equals_float32_clipping():
    """clip(s g, s c) / s == clip(g, c): the loss scale never changes the update."""
    gradient = tf.constant([3.0, 4.0])                       # norm 5
    results = []
    for scaled in (False, True):
        variable = keras.Variable([0.0, 0.0])
        optimizer = keras.optimizers.SGD(1.0)
        if scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1024.0)
        optimizer.build([variable])
        g = gradient * (1024.0 if scaled else 1.0)
        apply_gradients(optimizer, [g], [variable], max_grad_norm=1.0)
        results.append(variable.numpy())
    np.testing.assert_allclose(results[0], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


def test_run_training_with_mixed_precision_exports_a_float32_model(tmp_path, precision):
    write_tiny_job(tmp_path)
    config = pipeline.TrainConfig(
        train_file=str(tmp_path / "add.tsv"), reward="exact_match", pretrain_epochs=1,
        epochs=1, max_new_tokens=4, mixed_precision="mixed_float16",
        output=str(tmp_path / "out/model"), logdir=str(tmp_path / "out/logs"), **TINY)
    metrics = pipeline.run_training(config, log=lambda *_: None)
    assert metrics["mixed_precision"] == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "float32"    # restored
    generator = tfpg.load(str(tmp_path / "out/model"))
    assert len(generator.generate(["3 + 4 ="])) == 1
    assert np.isfinite(generator.score(["3 + 4 ="], ["7"])[0])


# ----------------------------------------------------------------- faults


def test_a_checkpoint_is_committed_only_by_the_state_rename(tmp_path):
    """A crash after writing checkpoint k+1 but before naming it in state.json
    resumes from checkpoint k; its stray files are removed by the next commit."""
    config = pipeline.TrainConfig(output=str(tmp_path / "model"))
    state = pipeline.RunState(str(tmp_path / "model.checkpoint"), config)
    variable = keras.Variable([1.0, 2.0])
    checkpoint = pipeline.variable_checkpoint(policy=[variable])
    pipeline.write_checkpoint(checkpoint, state, "pretrain", 1)

    variable.assign([5.0, 6.0])
    original_save = state.save

    def crash(**updates):
        raise KeyboardInterrupt                      # killed before the commit

    state.save = crash
    with pytest.raises(KeyboardInterrupt):
        pipeline.write_checkpoint(checkpoint, state, "pretrain", 2)
    state.save = original_save
    assert glob.glob(str(tmp_path / "model.checkpoint/pretrain-2.*"))    # stray files

    resumed = pipeline.RunState(str(tmp_path / "model.checkpoint"), config)
    assert (resumed["pretrain_epochs_done"], resumed["pretrain_checkpoint"]) == (1, "pretrain-1")
    restored = keras.Variable([0.0, 0.0])
    pipeline.restore(pipeline.variable_checkpoint(policy=[restored]), resumed.directory,
                      resumed["pretrain_checkpoint"])
    np.testing.assert_array_equal(restored.numpy(), [1.0, 2.0])

    pipeline.write_checkpoint(checkpoint, resumed, "pretrain", 2)
    names = sorted(os.listdir(tmp_path / "model.checkpoint"))
    assert [n for n in names if n.startswith("pretrain")] == [
        "pretrain-2.data-00000-of-00001", "pretrain-2.index"]


def test_a_resumed_run_with_another_strategy_is_accepted(tmp_path):
    config = pipeline.TrainConfig(output=str(tmp_path / "model"))
    state = pipeline.RunState(str(tmp_path / "model.checkpoint"), config)
    state.save(seconds=1.0)
    other = pipeline.TrainConfig(output=str(tmp_path / "model"), strategy="mirrored",
                                 num_cpu_devices=2, deterministic=True)
    assert pipeline.RunState(state.directory, other).resumed
    with pytest.raises(pipeline.UsageError, match="other options"):
        pipeline.RunState(state.directory, pipeline.TrainConfig(
            output=str(tmp_path / "model"), learning_rate=0.5))


def test_sigkill_during_export_leaves_the_previous_export_intact(deterministic_run,
                                                                 tmp_path):
    checkpoint = str(deterministic_run / "first/model.checkpoint")
    target = tmp_path / "export"
    pipeline.export_from_source(checkpoint, str(target))
    expected = tfpg.load(str(target)).generate(["3 + 4 =", "9 + 9 ="])
    for delay in (0.0,):
        process = subprocess.Popen(TFPG + ["export", checkpoint, "--output", str(target)],
                                   env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None \
                and not glob.glob(str(target) + ".tmp-*"):
            time.sleep(0.01)
        assert process.poll() is None, "the export finished before it could be killed"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert glob.glob(str(target) + ".tmp-*") or delay > 0     # caught mid-write
        assert tfpg.load(str(target)).generate(["3 + 4 =", "9 + 9 ="]) == expected
        assert not glob.glob(str(target) + ".tmp-*")               # load cleaned up
    shutil.rmtree(target)
