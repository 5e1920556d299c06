"""On-policy distillation against GRPO: a small student learns carries from a larger teacher.

The `arithmetic` task's teaching data drops the carry in 70% of its carry examples, so
a student pre-trained on it with cross-entropy writes "57+38=85". Two ways to fix it,
each for the same number of optimizer steps and the same 64 sampled completions a step:

* GRPO with the exact-match verifier: one bit per completion (right or wrong sum);
* on-policy distillation (`tfpg.algorithms.OnPolicyDistillation`): a larger teacher,
  pre-trained here on correct sums, scores every token the student samples; the
  per-token reward is -(log pi_student - log pi_teacher), the negative reverse KL.

The teacher's per-token signal says *which digit* is wrong, the verifier only that
the answer is. Held-out exact match (greedy decoding, pairs never trained on) of the
student before, after distillation and after GRPO, per seed and in the mean; the
reverse KL to the teacher of both students is measured on held-out prompts during
training (the same estimate for both: the mean over sampled tokens of
log pi_student - log pi_teacher).

    python examples/distillation.py [--seeds 0 1 2] [--steps 150]

`benchmarks/distillation.py` runs it and writes benchmarks/results/distillation.json
and distillation.png.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import tfpg
from tfpg import TrainConfig, evaluate_policy, make_job, pretrain
from tfpg.algorithms import GRPO, OnPolicyDistillation
from tfpg.tasks import get_task

# Sizes: the teacher has twice the student's recurrent units (334k weights, 3.9x the student's).
TEACHER = dict(embedding_dim=64, hidden_dim=256)
STUDENT = dict(embedding_dim=32, hidden_dim=128)
SAMPLES = 64            # completions per optimizer step, both methods
GROUP = 4               # GRPO's group size (16 prompts x 4); distillation: 64 prompts x 1


def teacher_policy(job, seed, epochs):
    """The teacher: a larger LSTM pre-trained with cross-entropy on *correct* sums (the
    task's own teaching pairs with flaw_rate 0; the held-out pairs are not among them)."""
    clean = get_task("arithmetic", seed=seed, flaw_rate=0.0)
    return pretrain(clean.pretrain_texts, job.tokenizer, epochs, seed=seed, **TEACHER)


def reverse_kl_probe(student, teacher, job, seed):
    """A function of no arguments: the mean per-token reverse-KL estimate
    log pi_student - log pi_teacher on 128 held-out prompts, completions sampled from
    the student (an `OnPolicyDistillation` rollout, never updated)."""
    probe = OnPolicyDistillation(student, teacher, max_new_tokens=job.max_new_tokens,
                                 eos_id=job.tokenizer.eos_id, seed=seed + 1000)
    probe.compile(optimizer="sgd", jit_compile=False)
    batch = next(iter(tfpg.data.prompt_dataset(job.heldout.prompts[:128], job.tokenizer,
                                               batch_size=128)))

    @tf.function
    def reverse_kl(batch):
        rollout, _ = probe.collect_rollout(batch)
        return tf.reduce_sum(rollout["teacher_kl"]) / tf.reduce_sum(rollout["completion_mask"])

    return lambda: float(reverse_kl(batch))


class ReverseKLCurve(keras.callbacks.Callback):
    """Records `measure()` before the first step and every `every` steps: [(step, KL)]."""

    def __init__(self, measure, every):
        super().__init__()
        self.measure, self.every, self.curve = measure, every, [(0, measure())]

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            self.curve.append((batch + 1, self.measure()))


def fine_tune(method, student, teacher, job, seed, steps, learning_rate, probe_every):
    """`steps` optimizer steps of `method` ("distill" or "grpo") on `student` (in
    place); returns the reverse-KL curve [(step, KL)] and the seconds taken."""
    tok = job.tokenizer
    common = dict(max_new_tokens=job.max_new_tokens, eos_id=tok.eos_id, seed=seed)
    if method == "distill":
        agent = OnPolicyDistillation(student, teacher, **common)
        batch_size = SAMPLES
    else:
        agent = GRPO(student, job.reward_fn, group_size=GROUP, kl_coef=0.0, **common)
        batch_size = SAMPLES // GROUP
    agent.compile(optimizer=keras.optimizers.Adam(learning_rate))
    prompts = tfpg.data.prompt_dataset(job.train.prompts, tok, references=job.train.references,
                                       batch_size=batch_size, shuffle=True, seed=seed,
                                       drop_remainder=True, repeat=True)
    curve = ReverseKLCurve(reverse_kl_probe(student, teacher, job, seed), probe_every)
    start = time.perf_counter()
    agent.fit(prompts.take(steps), epochs=1, verbose=0, callbacks=[curve])
    return curve.curve, time.perf_counter() - start


def run(seeds=(0, 1, 2), steps=150, teacher_epochs=20, student_epochs=30,
        learning_rate=2e-3, probe_every=10, log=print):
    """The whole comparison; returns a JSON-ready dict."""
    started = time.perf_counter()
    job = make_job(TrainConfig(task="arithmetic", seed=0))
    log(f"teacher: LSTM {TEACHER}, {teacher_epochs} epochs on correct sums ...")
    teacher = teacher_policy(job, 0, teacher_epochs)
    teacher_metrics, _ = evaluate_policy(teacher, job)
    log(f"  held-out exact match {teacher_metrics['exact_match']:.3f}")
    runs = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        log(f"seed {seed}: student LSTM {STUDENT}, {student_epochs} epochs on the flawed sums")
        student = pretrain(job.pretrain_texts, job.tokenizer, student_epochs, seed=seed,
                           **STUDENT)
        before, _ = evaluate_policy(student, job)
        row = {"seed": seed, "before": before["exact_match"],
               "before_dropped_carry": before["dropped_carry"]}
        for method in ("distill", "grpo"):
            copy = student.__class__.from_config(student.get_config())
            copy.build()
            copy.set_weights(student.get_weights())
            curve, seconds = fine_tune(method, copy, teacher, job, seed, steps, learning_rate,
                                       probe_every)
            after, _ = evaluate_policy(copy, job)
            row[method] = after["exact_match"]
            row[f"{method}_dropped_carry"] = after["dropped_carry"]
            row[f"{method}_reverse_kl"] = curve
            row[f"{method}_seconds"] = round(seconds, 1)
            log(f"  {method}: exact match {before['exact_match']:.3f} -> "
                f"{after['exact_match']:.3f}, reverse KL to the teacher "
                f"{curve[0][1]:.3f} -> {curve[-1][1]:.3f} ({seconds:.0f} s)")
        runs.append(row)
    summary = {key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])))
               for key in ("before", "distill", "grpo")}
    return {"task": "arithmetic", "steps": steps, "samples_per_step": SAMPLES,
            "grpo_group_size": GROUP, "learning_rate": learning_rate,
            "teacher": dict(TEACHER, pretrain_epochs=teacher_epochs,
                            exact_match=teacher_metrics["exact_match"],
                            weights=int(sum(np.prod(w.shape) for w in teacher.weights))),
            "student": dict(STUDENT, pretrain_epochs=student_epochs,
                            weights=int(sum(np.prod(w.shape) for w in student.weights))),
            "runs": runs, "mean_std": summary,
            "seconds": round(time.perf_counter() - started, 1)}


def format_table(result):
    lines = [f"held-out exact match (greedy), student before -> after {result['steps']} "
             f"steps of {result['samples_per_step']} samples; teacher "
             f"{result['teacher']['exact_match']:.3f}",
             f"{'seed':>6}{'before':>9}{'distill':>9}{'GRPO':>9}   reverse KL to teacher "
             "(distill / GRPO, end)"]
    for row in result["runs"]:
        lines.append(f"{row['seed']:>6}{row['before']:>9.3f}{row['distill']:>9.3f}"
                     f"{row['grpo']:>9.3f}   {row['distill_reverse_kl'][-1][1]:.3f} / "
                     f"{row['grpo_reverse_kl'][-1][1]:.3f}")
    mean = result["mean_std"]
    lines.append(f"{'mean':>6}" + "".join(f"{mean[k][0]:>9.3f}" for k in
                                          ("before", "distill", "grpo")))
    lines.append(f"{result['seconds']:.0f} s in all")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    print(format_table(run(seeds=args.seeds, steps=args.steps)))


if __name__ == "__main__":
    main()
