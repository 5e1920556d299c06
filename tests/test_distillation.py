"""On-policy distillation: the loss and gradient against hand computations of the
reverse-KL policy gradient, its expectation against GKD's full reverse KL, the frozen
teacher, the refusals, the config and the command line."""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpg
from tfpg.algorithms import OnPolicyDistillation
from tfpg.generation import GenerationOutput

sys.path.insert(0, os.path.dirname(__file__))
from cli_batch import assert_usage_error, run_in_fresh_directories  # noqa: E402
from keras_hub_models import build_causal_lm  # noqa: E402

VOCAB = 12
N = 4
TEMPERATURE = 0.8
SUPPRESSED = (0, 1)         # PolicyNetwork's pad and BOS: never sampled
PROMPTS = np.array([[1, 4, 5], [0, 1, 6], [1, 7, 3]], np.int32)     # row 1 left-padded
# Hand-made completions: EOS (2) ends rows 0 and 2, pad after it; row 1 truncated.
COMPLETIONS = np.array([[5, 3, 2, 0], [4, 5, 6, 5], [2, 0, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], np.float32)


def count_fives(prompt_ids, completion_ids, completion_mask, batch):
    hits = tf.cast(tf.equal(completion_ids, 5), tf.float32) * completion_mask
    return tf.reduce_sum(hits, axis=1)


@pytest.fixture(scope="module")
def models():
    """A student LSTM and a larger Transformer teacher on the same vocabulary."""
    keras.utils.set_random_seed(0)
    student = tfpg.PolicyNetwork(VOCAB, 16, 32)
    teacher = tfpg.PolicyNetwork(VOCAB, 24, 48, backbone="transformer", num_layers=2,
                                 max_length=16)
    student.build()
    teacher.build()
    return student, teacher


def fixed_sampler(completions, mask):
    """A `sample` that returns the given completions (the hand-made rollout)."""
    def sample(prompt_ids, seed, greedy=False, prompt_mask=None):
        ids = tf.constant(completions, tf.int32)
        return GenerationOutput(ids, tf.constant(mask, tf.float32), tf.zeros(ids.shape))
    return sample


def distillation(student, teacher, completions=COMPLETIONS, mask=MASK, cls=OnPolicyDistillation,
                 **options):
    options = {"max_new_tokens": completions.shape[1], "eos_id": 2,
               "temperature": TEMPERATURE, "head_chunk_size": 3, **options}
    agent = cls(student, teacher, **options)
    agent.compile(optimizer=keras.optimizers.SGD(0.0))
    object.__setattr__(agent, "sample", fixed_sampler(completions, mask))
    return agent


def dense(gradient):
    """A gradient (tensor or IndexedSlices, an embedding's) as a numpy array."""
    return tf.convert_to_tensor(gradient).numpy()


def trainer_step(agent, batch):
    """The trainer's loss, gradients and logs of one rollout of `batch` (no update)."""
    rollout, batch = agent.collect_rollout(batch)
    rollout.update(agent.compute_advantages(rollout, batch))
    total, gradients, logs = agent.loss_and_gradients(rollout)
    return float(total), gradients, {key: float(value) for key, value in logs.items()}


def completion_log_probs(model, prompts, completions, mask, suppress=()):
    """log softmax(logits / T) [B, N, V] at the positions predicting each completion
    token (the suppressed ids' logits -inf: the student's sampling distribution)."""
    sequence = tf.concat([prompts, completions], axis=1)
    padding = tf.concat([prompts != 0, mask > 0], axis=1)
    logits = model(sequence, padding_mask=padding)[:, prompts.shape[1] - 1:-1]   # [B, N, V]
    logits = logits / TEMPERATURE
    if suppress:
        banned = np.isin(np.arange(VOCAB), suppress)
        logits = tf.where(banned, -np.inf, logits)
    return tf.nn.log_softmax(logits)


def hand_computed(student, teacher, discount, reward_weight=0.0):
    """The reverse-KL policy gradient written out: k1 per token, its return with
    `discount`, plus reward_weight * R on every token, -A log pi averaged over the real
    tokens (loss, gradients, mean k1)."""
    def picked(log_probs):        # [B, N]; 0 after EOS (the pad there is suppressed: -inf)
        chosen = tf.gather(log_probs, COMPLETIONS[..., None], batch_dims=2)[..., 0]
        return tf.where(MASK > 0, chosen, 0.0)

    teacher_lp = picked(completion_log_probs(teacher, PROMPTS, COMPLETIONS, MASK))
    with tf.GradientTape() as tape:
        student_lp = picked(completion_log_probs(student, PROMPTS, COMPLETIONS, MASK,
                                                 SUPPRESSED))
        k1 = (tf.stop_gradient(student_lp) - teacher_lp).numpy() * MASK
        returns = np.zeros_like(k1)
        following = np.zeros(len(k1), np.float32)
        for t in reversed(range(N)):            # padding comes after the real tokens
            following = np.where(MASK[:, t] > 0, -k1[:, t] + discount * following, 0.0)
            returns[:, t] = following
        rewards = count_fives(None, tf.constant(COMPLETIONS), tf.constant(MASK), None).numpy()
        advantages = (returns + reward_weight * rewards[:, None]) * MASK
        loss = tf.reduce_sum(-advantages * student_lp * MASK) / MASK.sum()
    gradients = tape.gradient(loss, student.trainable_variables)
    return float(loss), gradients, float(k1.sum() / MASK.sum())


@pytest.mark.parametrize("discount, reward_weight", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.5)])
def test_loss_and_gradient_equal_the_hand_computed_reverse_kl_policy_gradient(
        models, discount, reward_weight):
    student, teacher = models
    reward = count_fives if reward_weight else None
    agent = distillation(student, teacher, discount=discount, reward_fn=reward,
                         reward_weight=reward_weight)
    total, gradients, logs = trainer_step(agent, {"prompt": tf.constant(PROMPTS)})
    loss, expected, mean_k1 = hand_computed(student, teacher, discount, reward_weight)
    assert abs(loss) > 1e-3 and abs(total - loss) <= 1e-6
    assert abs(logs["teacher_kl"] - mean_k1) <= 1e-6 and mean_k1 > 0.01
    assert len(gradients) == len(student.trainable_variables)     # the teacher: none
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(dense(got), dense(want), atol=1e-6)
    assert max(np.abs(dense(g)).max() for g in expected) > 1e-3


class EnumeratedPositions(OnPolicyDistillation):
    """Each row's last real token stands for one vocabulary id at one position; the
    batch's "weight" [B, N] (pi(v | s_t) there, 0 elsewhere) replaces the loss mask."""

    def compute_advantages(self, rollout, batch):
        return dict(super().compute_advantages(rollout, batch), loss_mask=batch["weight"])


def test_expected_gradient_is_the_gradient_of_gkds_full_reverse_kl(models):
    """Weighting every id v at every position t of fixed completions by the student's
    pi(v | s_t) turns the sampled-token estimator into its expectation: the trainer's
    gradient then equals the gradient of mean_t KL(pi(. | s_t) || teacher(. | s_t)), the
    loss of TRL's GKD with lmbda=1, beta=1 (<= 1e-6), and `teacher_kl` equals that
    KL itself."""
    student, teacher = models
    base = np.array([[5, 3, 4], [4, 6, 6]], np.int32)            # 2 prompts, 3 positions
    prompts = PROMPTS[:2]
    count, length = base.shape
    full_mask = np.ones(base.shape, np.float32)
    student_lp = completion_log_probs(student, prompts, base, full_mask, SUPPRESSED)
    teacher_lp = completion_log_probs(teacher, prompts, base, full_mask)
    ids = [v for v in range(VOCAB) if v not in SUPPRESSED]
    rows, masks, weights, row_prompts = [], [], [], []
    probabilities = np.exp(student_lp.numpy())
    for b in range(count):
        for t in range(length):
            for v in ids:
                completion = base[b].copy()
                completion[t] = v
                completion[t + 1:] = 0
                rows.append(completion)
                masks.append((np.arange(length) <= t).astype(np.float32))
                weight = np.zeros(length, np.float32)
                weight[t] = probabilities[b, t, v]
                weights.append(weight)
                row_prompts.append(prompts[b])
    agent = distillation(student, teacher, np.array(rows), np.array(masks),
                         cls=EnumeratedPositions, eos_id=None)
    batch = {"prompt": tf.constant(np.array(row_prompts)),
             "weight": tf.constant(np.array(weights))}
    _, gradients, logs = trainer_step(agent, batch)
    with tf.GradientTape() as tape:
        # Over the ids the student can sample (the suppressed ones have p = 0).
        log_p = tf.gather(completion_log_probs(student, prompts, base, full_mask, SUPPRESSED),
                          ids, axis=-1)                                     # [B, N, V']
        log_q = tf.gather(teacher_lp, ids, axis=-1)
        per_position = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)     # [B, N]
        reverse_kl = tf.reduce_mean(per_position)
    expected = tape.gradient(reverse_kl, student.trainable_variables)
    assert abs(logs["teacher_kl"] - float(reverse_kl)) <= 1e-6
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(dense(got), dense(want), atol=1e-6)
    assert max(np.abs(dense(g)).max() for g in expected) > 1e-3


def test_fit_trains_the_student_and_leaves_the_teacher_frozen():
    keras.utils.set_random_seed(1)
    student = tfpg.PolicyNetwork(VOCAB, 16, 32)
    teacher = tfpg.PolicyNetwork(VOCAB, 16, 48)
    teacher.build()
    before = [w.copy() for w in teacher.get_weights()]
    agent = OnPolicyDistillation(student, teacher, max_new_tokens=N, eos_id=2, seed=0)
    agent.compile(optimizer=keras.optimizers.Adam(3e-2))
    start = [w.copy() for w in student.get_weights()]
    prompts = tf.data.Dataset.from_tensors({"prompt": tf.constant(PROMPTS)})
    history = agent.fit(prompts.repeat(6), epochs=1, verbose=0).history
    assert not teacher.trainable
    assert {id(v) for v in agent.trainable_variables} == {
        id(v) for v in student.trainable_variables}
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(start, student.get_weights()))
    assert "reward" not in history and history["teacher_kl"][0] > 0


def test_keras_hub_teacher_and_the_lora_students_own_base_refused():
    """A LoRA KerasHub student: its adapters-off base is refused as a teacher; another
    KerasHub model is scored (eagerly here: tracing KerasHub's decode takes seconds)."""
    student = tfpg.KerasHubPolicy(build_causal_lm("gpt2", seed=0), lora_rank=2)
    with pytest.raises(ValueError, match="adapters-off base model") as error:
        OnPolicyDistillation(student, student.lora_reference())
    assert "\n" not in str(error.value)
    teacher = tfpg.KerasHubPolicy(build_causal_lm("gpt2", seed=1))
    agent = distillation(student, teacher, completions=np.array([[70, 71, 72], [73, 74, 75]]),
                         mask=np.array([[1, 1, 1], [1, 1, 0]], np.float32), eos_id=None)
    prompts = next(iter(tfpg.data.prompt_dataset(["the cat", "1 + 2 ="], student.tokenizer,
                                                 batch_size=2)))
    _, gradients, logs = trainer_step(agent, prompts)
    assert abs(logs["teacher_kl"]) > 1e-3      # two random models: they disagree
    # Only the adapters train: a gradient for each, none for either model's base weights.
    assert len(gradients) == len(student.trainable_variables) == 8
    # (LoRA's B starts at 0, so A's gradient is 0 at the first step; B's is not.)
    assert sum(np.abs(dense(g)).max() > 0 for g in gradients) == 4


@pytest.mark.parametrize("make_teacher, options, words", [
    (lambda s: s, {}, "the student itself"),
    (lambda s: tfpg.PolicyNetwork(VOCAB + 1, 8, 8), {}, r"vocabulary \(13 ids\) is not"),
    (lambda s: None, {}, "needs a teacher"),
    (lambda s: tfpg.PolicyNetwork(VOCAB, 8, 8), {"discount": 1.5}, "discount must be in"),
    (lambda s: tfpg.PolicyNetwork(VOCAB, 8, 8), {"reward_weight": -1.0}, "reward_weight"),
    (lambda s: tfpg.PolicyNetwork(VOCAB, 8, 8), {"kl_coef": 0.1, "target_kl": 1.0},
     "target_kl"),
    (lambda s: tfpg.PolicyNetwork(VOCAB, 8, 8), {"num_epochs": 2}, "on-policy"),
])
def test_refusals_are_one_line(models, make_teacher, options, words):
    student, _ = models
    with pytest.raises(ValueError, match=words) as error:
        OnPolicyDistillation(student, make_teacher(student), **options)
    assert "\n" not in str(error.value)


def test_get_config_round_trip(models):
    student, teacher = models
    agent = OnPolicyDistillation(student, teacher, reward_weight=0.25, discount=1.0,
                                 max_new_tokens=5, temperature=0.7, top_k=4, eos_id=2,
                                 kl_coef=0.05, seed=3)
    config = agent.get_config()
    assert (config["reward_weight"], config["discount"], config["kl_coef"]) == (0.25, 1.0, 0.05)
    assert config["teacher"]["config"]["backbone"] == "transformer"
    clone = OnPolicyDistillation.from_config(config)
    assert clone.get_config() == config
    assert clone.teacher.get_config() == teacher.get_config()
    assert not clone.teacher.trainable


def _cli_directory(directory):
    """A teacher `.keras` with the arithmetic task's tokenizer beside it, and a student
    `.keras` of another vocabulary in `other/`."""
    from tfpg.tasks import get_task
    keras.utils.set_random_seed(0)
    tokenizer = get_task("arithmetic", seed=0).tokenizer()
    teacher = tfpg.PolicyNetwork(tokenizer.vocabulary_size, 16, 32)
    teacher.build()
    teacher.save(str(directory / "teacher.keras"))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "other").mkdir()
    words = tfpg.Tokenizer.from_texts(["one plus two is three"], level="word")
    other = tfpg.PolicyNetwork(words.vocabulary_size, 8, 8)
    other.build()
    other.save(str(directory / "other" / "student.keras"))
    words.save(str(directory / "other" / "tokenizer.json"))
    return directory


CLI_CASES = [
    (["--algorithm", "distill", "--teacher", "teacher.keras", "--pretrain-epochs", "0",
      "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
      "--reward-weight", "0.5"], None),
    (["--algorithm", "distill"], ("needs --teacher",)),
    (["--algorithm", "grpo", "--teacher", "teacher.keras"],
     ("--teacher is for --algorithm distill",)),
    (["--algorithm", "distill", "--teacher", "missing.keras"], ("missing.keras", "not found")),
    (["--algorithm", "distill", "--teacher", "teacher.keras", "--reward-weight", "-1"],
     ("--reward-weight must be >= 0",)),
    (["--algorithm", "distill", "--teacher", "teacher.keras", "--model",
      "other/student.keras"], ("tokenizer is not the student's",)),
]


def test_cli_distill_end_to_end_and_its_bad_input(tmp_path_factory):
    """`tfpg train --algorithm distill --teacher F.keras`: a new student takes the
    teacher's tokenizer, fine-tunes, exports; bad combinations exit 2 in one line,
    writing nothing (all in one subprocess, tests/cli_batch.py)."""
    commands = [["train"] + args + ["--output", "out/model", "--logdir", "out/logs"]
                for args, _ in CLI_CASES]
    runs = run_in_fresh_directories(tmp_path_factory, commands, _cli_directory)
    directory, _, result = runs[0]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher_kl" in result.stdout
    metrics = json.loads((directory / "out/model/metrics.json").read_text())
    assert metrics["algorithm"] == "distill" and "exact_match" in metrics["after"]
    assert (directory / "out/model/saved_model.pb").exists()
    for (directory, before, result), (_, words) in zip(runs[1:], CLI_CASES[1:]):
        assert_usage_error(result, *words)
        assert set(os.listdir(directory)) == before
