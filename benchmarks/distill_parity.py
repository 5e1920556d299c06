"""tfpg's on-policy distillation against TRL 1.16's GKD (`lmbda=1, beta=1`: on-policy,
reverse KL) and a torch hand computation, on one fixed batch.

Optional: without torch, transformers or trl importable it prints a skip line and
exits 0.

What is compared (the same tiny random GPT-2 student, 1 layer x width 8, and GPT-2
teacher, 2 layers x width 16, in torch and, converted by KerasHub's converter, in
tfpg; a character vocabulary of 49 ids with EOS = pad = BOS last, so that nothing is
suppressed and the student samples from its whole softmax; 4 equal-length prompts,
completions of 2-6 tokens, temperature 1):

1. "k1 estimator, discount 0 / 1": tfpg's `OnPolicyDistillation` loss and gradient on
   the fixed completions against the same estimator written in torch: per-token
   reward -(log pi - log pi_teacher) at the sampled token, its return (discount 0:
   itself; 1: the reward-to-go), loss = sum_t -A_t log pi(a_t) / real tokens.
2. "GKD expectation": GKD minimises the full reverse KL at each sampled position,
   mean_t sum_v pi(v|s_t) (log pi(v|s_t) - log pi_teacher(v|s_t)) (TRL's
   `GKDTrainer.generalized_jsd_loss(beta=1)` on the batch, over the completion
   labels). tfpg's trainer is its single-sample estimator; enumerating every id v at
   every position t of the fixed completions, with the student's pi(v|s_t) as the
   row's loss weight, gives the estimator's exact expectation: its gradient equals
   GKD's gradient and its `teacher_kl` log equals GKD's loss. Not equal per sample:
   GKD's gradient of one sequence uses the whole vocabulary, tfpg's the sampled token.

Printed per row: |loss difference| (GKD row: GKD's loss against tfpg's `teacher_kl`),
max per-parameter gradient difference, gradient-norm difference.

    /work/trlenv/bin/python benchmarks/distill_parity.py        # ~1 min
"""

import os
import sys
import tempfile
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")     # GKD lives in trl.experimental
try:
    import torch
    import transformers  # noqa: F401
    import trl
    from trl.experimental.gkd import GKDTrainer
except ImportError as error:
    print(f"distill_parity: skipped ({error.name} is not importable; pip install torch trl)")
    sys.exit(0)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import vs_trl  # noqa: E402  (its character tokenizer and GPT-2)
from trl_parity import torch_to_keras_hub  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                "tests"))
import trl_parity_case  # noqa: E402  (KerasHub GPT-2 policies from converted weights)

STUDENT = types.SimpleNamespace(width=8, layers=1, heads=2, context=24)
TEACHER = types.SimpleNamespace(width=16, layers=2, heads=2, context=24)
PROMPTS, PROMPT_LENGTH, NEW_TOKENS = 4, 6, 6


def make_batch(tokenizer):
    rng = np.random.default_rng(11)
    prompts = vs_trl.prompts(PROMPTS, PROMPT_LENGTH, 11)
    eos = tokenizer.eos_token_id
    lengths = np.array([6, 2, 4, 6])
    ids = np.full([PROMPTS, NEW_TOKENS], eos, np.int32)
    mask = np.zeros([PROMPTS, NEW_TOKENS], np.float32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(0, eos, length)
        mask[i, :length] = 1
        if length < NEW_TOKENS:
            ids[i, length - 1] = eos
    prompt_ids = np.array([tokenizer(p)["input_ids"] for p in prompts], np.int32)
    return {"prompt_ids": prompt_ids, "completion_ids": ids, "completion_mask": mask}


def perturbed(model, scale, seed):
    """{name: tensor}: the model's parameters plus Gaussian noise (a random GPT-2's
    softmax is nearly uniform; this gives the two models something to disagree on)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        values = {name: p + scale * torch.randn(p.shape, generator=generator)
                  for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.copy_(values[name])
    return values


def torch_logits(model, batch):
    """Logits [B, N, V] at the positions that predict each completion token."""
    sequence = torch.tensor(np.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1),
                            dtype=torch.long)
    attention = torch.tensor(np.concatenate([np.ones_like(batch["prompt_ids"]),
                                             batch["completion_mask"]], 1), dtype=torch.long)
    logits = model(input_ids=sequence, attention_mask=attention).logits
    return logits[:, PROMPT_LENGTH - 1:-1]


def torch_estimator(student, teacher, batch, discount):
    """The k1 estimator's loss and gradients, by hand in torch."""
    student.zero_grad()
    ids = torch.tensor(batch["completion_ids"], dtype=torch.long)[..., None]
    mask = torch.tensor(batch["completion_mask"])
    log_p = torch.log_softmax(torch_logits(student, batch), -1).gather(-1, ids)[..., 0]
    with torch.no_grad():
        log_q = torch.log_softmax(torch_logits(teacher, batch), -1).gather(-1, ids)[..., 0]
    rewards = -(log_p.detach() - log_q) * mask
    returns = torch.zeros_like(rewards)
    following = torch.zeros(len(rewards))
    for t in reversed(range(NEW_TOKENS)):
        following = torch.where(mask[:, t] > 0, rewards[:, t] + discount * following,
                                torch.zeros(()))
        returns[:, t] = following
    loss = (-returns * log_p * mask).sum() / mask.sum()
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in student.named_parameters()}


def gkd(student, teacher, batch):
    """TRL's GKD loss (lmbda=1: these completions are the student's; beta=1: reverse KL)
    and its gradients."""
    student.zero_grad()
    labels = np.where(batch["completion_mask"] > 0, batch["completion_ids"], -100)
    with torch.no_grad():
        teacher_logits = torch_logits(teacher, batch)
    loss = GKDTrainer.generalized_jsd_loss(torch_logits(student, batch), teacher_logits,
                                           labels=torch.tensor(labels, dtype=torch.long),
                                           beta=1.0)
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in student.named_parameters()}


def tfpg_run(models, batch, discount=0.0, enumerate_ids=False):
    """tfpg's (loss, gradients in the student backbone's weight order, teacher_kl) on
    the batch; `models`: (student policy, its backbone, teacher policy)."""
    policy, backbone, teacher = models
    import keras
    import tensorflow as tf
    from tfpg.algorithms import OnPolicyDistillation
    from tfpg.generation import GenerationOutput

    class Enumerated(OnPolicyDistillation):
        def compute_advantages(self, rollout, batch):
            return dict(super().compute_advantages(rollout, batch),
                        loss_mask=batch["weight"])

    prompts, ids, mask = batch["prompt_ids"], batch["completion_ids"], batch["completion_mask"]
    feed = {"prompt": prompts}
    cls = OnPolicyDistillation
    if enumerate_ids:                       # one row per (b, t, v), weight pi(v | s_t)
        cls = Enumerated
        probabilities = tfpg_probabilities(policy, batch)                    # [B, N, V]
        vocab = probabilities.shape[-1]
        rows, masks, weights, row_prompts = [], [], [], []
        for b in range(len(ids)):
            for t in range(int(mask[b].sum())):
                for v in range(vocab):
                    row = ids[b].copy()
                    row[t] = v
                    rows.append(row)
                    masks.append((np.arange(NEW_TOKENS) <= t).astype(np.float32))
                    weight = np.zeros(NEW_TOKENS, np.float32)
                    weight[t] = probabilities[b, t, v]
                    weights.append(weight)
                    row_prompts.append(prompts[b])
        ids, mask = np.array(rows), np.array(masks)
        feed = {"prompt": np.array(row_prompts), "weight": tf.constant(np.array(weights))}
    agent = cls(policy, teacher, max_new_tokens=NEW_TOKENS, eos_id=None, discount=discount,
                max_grad_norm=None)
    agent.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
    fixed = GenerationOutput(tf.constant(ids, tf.int32), tf.constant(mask, tf.float32),
                             tf.zeros(ids.shape))
    # An instance attribute, out of Keras' tracking: `collect_rollout` samples through it.
    object.__setattr__(agent, "sample", lambda *args, **kwargs: fixed)
    rollout, feed = agent.collect_rollout(feed)
    rollout.update(agent.compute_advantages(rollout, feed))
    loss, gradients, logs = agent.loss_and_gradients(rollout)
    position = {id(v): i for i, v in enumerate(agent.trainable_variables)}
    flat = np.concatenate([tf.convert_to_tensor(gradients[position[id(v)]]).numpy().ravel()
                           for v in backbone.weights])
    return float(loss), flat, float(logs["teacher_kl"])


def tfpg_probabilities(policy, batch):
    """The student's softmax [B, N, V] at the completion positions (tfpg side)."""
    import tensorflow as tf
    sequence = np.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    padding = np.concatenate([np.ones_like(batch["prompt_ids"]), batch["completion_mask"]], 1)
    logits = policy(tf.constant(sequence), padding_mask=tf.constant(padding > 0))
    return tf.nn.softmax(logits[:, PROMPT_LENGTH - 1:-1]).numpy()


def main():
    torch.manual_seed(0)
    tokenizer = vs_trl.char_tokenizer()
    batch = make_batch(tokenizer)
    student, teacher = vs_trl.hf_model(STUDENT, tokenizer), vs_trl.hf_model(TEACHER, tokenizer)
    perturbed(student, 0.3, 1)
    perturbed(teacher, 0.3, 2)
    import keras_hub.src.utils.transformers.convert_gpt2 as convert_gpt2
    converted = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, model in (("student", student), ("teacher", teacher)):
            weights = torch_to_keras_hub(model, dict(model.named_parameters()), directory)
            config = convert_gpt2.convert_backbone_config(model.config.to_dict())
            converted[name] = trl_parity_case.gpt2_policy(config, weights)
        models = converted["student"] + converted["teacher"][:1]

        def as_keras(gradients):
            return np.concatenate([g.ravel() for g in
                                   torch_to_keras_hub(student, gradients, directory)])

        rows = []
        for name, reference, mine in [
                ("k1 estimator, discount 0", torch_estimator(student, teacher, batch, 0.0),
                 tfpg_run(models, batch, 0.0)),
                ("k1 estimator, discount 1", torch_estimator(student, teacher, batch, 1.0),
                 tfpg_run(models, batch, 1.0)),
                ("GKD expectation (lmbda=1, beta=1)", gkd(student, teacher, batch),
                 tfpg_run(models, batch, enumerate_ids=True))]:
            loss, gradients = reference
            expected = as_keras(gradients)
            got_loss = mine[2] if name.startswith("GKD") else mine[0]
            rows.append({"name": name, "loss": abs(loss - got_loss),
                         "gradient": float(np.max(np.abs(expected - mine[1]))),
                         "norm": abs(float(np.linalg.norm(expected.astype(np.float64))
                                           - np.linalg.norm(mine[1].astype(np.float64)))),
                         "max_gradient": float(np.max(np.abs(expected))),
                         "reference_loss": loss})
            print(f"{name}: loss {loss:.5f}, |dloss| {rows[-1]['loss']:.1e}, max |dgrad| "
                  f"{rows[-1]['gradient']:.1e}", flush=True)
    print()
    common.print_table([("comparison", "name", None), ("loss", "reference_loss", "{:.4f}"),
                        ("|dloss|", "loss", "{:.1e}"), ("max |dgrad|", "gradient", "{:.1e}"),
                        ("|dnorm|", "norm", "{:.1e}"), ("max |grad|", "max_gradient",
                                                          "{:.3f}")], rows)
    common.write_json("benchmarks/results/distill_parity.json", {
        "environment": dict(common.environment(), torch=torch.__version__,
                            trl=trl.__version__), "rows": rows})


if __name__ == "__main__":
    main()
