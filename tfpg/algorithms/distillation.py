"""On-policy distillation (Agarwal et al., 2024, GKD; Thinking Machines, 2025; Qwen 3):
the student samples, a frozen teacher scores every sampled token, and the per-token
reward is the negative reverse KL, a policy gradient."""

import keras
import tensorflow as tf

from tfpg import advantages as adv
from tfpg.algorithms.base import PolicyGradientTrainer, check_reference
from tfpg.algorithms.token_scores import SamplingFilter
from tfpg.guards import bounds
from tfpg.models.keras_hub_policy import AdaptersOff
from tfpg.models.policy import check_policy


def no_task_reward(prompt_ids, completion_ids, completion_mask, batch):
    """The reward of a distillation without a task reward: 0 for every row [B]."""
    return tf.zeros([tf.shape(completion_ids)[0]], tf.float32)


def check_teacher(policy, teacher):
    """Refuses (ValueError, one line) a teacher distillation cannot use: none, the
    student itself or its weights (a LoRA student's adapters-off base model), or
    another vocabulary (the reward compares the two models' log-probs id by id);
    TypeError for what is not a `Policy` (or a LoRA policy's adapters-off view)."""
    check_policy(policy)
    if teacher is None:
        raise ValueError("OnPolicyDistillation needs a teacher (a PolicyNetwork or "
                         "KerasHubPolicy with the student's tokenizer)")
    if teacher is policy:
        raise ValueError("the teacher is the student itself: its reverse KL to itself "
                         "is 0 on every token; give another model as teacher")
    check_reference(teacher, "teacher")
    # A LoRA policy's `lora_reference()` is a view of its weights (no `weights`).
    owner = teacher.policy if isinstance(teacher, AdaptersOff) else teacher
    student_weights = {id(v) for v in policy.weights}
    if owner is policy or any(id(v) in student_weights for v in owner.weights):
        raise ValueError(
            "the teacher shares the student's weights (a LoRA student's own adapters-off "
            "base model): distilling from it is only a KL penalty to the reference "
            "(kl_coef), not a teacher; load the teacher as a model of its own")
    student_vocab, teacher_vocab = policy.vocab_size, owner.vocab_size
    if int(student_vocab) != int(teacher_vocab):
        raise ValueError(
            f"the teacher's vocabulary ({teacher_vocab} ids) is not the student's "
            f"({student_vocab}): distillation compares their log-probs id by id, so "
            "they need the same tokenizer")
    student_ids, teacher_ids = policy.structural_ids, owner.structural_ids
    if tuple(sorted(student_ids)) != tuple(sorted(teacher_ids)):
        raise ValueError(
            f"the teacher's pad / BOS ids {tuple(teacher_ids)} are not the student's "
            f"{tuple(student_ids)}: they come from different tokenizers, and distillation "
            "needs the same one")


@keras.saving.register_keras_serializable(package="tfpg")
class OnPolicyDistillation(PolicyGradientTrainer):
    """The student samples; a frozen teacher scores the sampled tokens; the student
    is trained by the policy gradient of the per-token reward

        r_t = -(log pi(a_t | s_t) - log pi_teacher(a_t | s_t))

    (the k1 estimate of the reverse KL KL(pi || pi_teacher) at token t, a constant
    of the update: stop-gradient). `log pi` is the log-prob of the distribution the
    student sampled from (temperature, top-k / top-p, suppressed ids: the rollout's
    `old_log_probs`), `log pi_teacher` the teacher's softmax(logits / temperature),
    unfiltered; the teacher is scored after the student's rollout pass, in chunks of
    positions (`head_chunk_size`), exactly as the KL reference of the other trainers.

    Advantages, per real token of a completion:

        A_t = sum_{t' >= t} discount^(t' - t) (r_t' - kl_coef kl_t') + reward_weight R

    `discount=0` (default) makes each token its own return, as Thinking Machines'
    on-policy distillation: A_t = r_t. `discount=1` gives the reward-to-go, whose
    policy gradient is an unbiased estimate of the gradient of the sequence-level
    reverse KL KL(pi(y | x) || pi_teacher(y | x)). R is an optional task reward
    (`reward_fn`, a sequence score credited to every token of its completion);
    `kl_t` the KL penalty to a `reference_model` where `kl_coef > 0`.
    Loss: -A_t log pi(a_t | s_t), aggregated by `loss_aggregation` (default
    "token_mean": the sum over the batch's real tokens divided by their count, as
    GKD's "batchmean" over non-masked labels). One gradient step per rollout.

    What is equal to TRL's GKD (`lmbda=1, beta=1`: on-policy, reverse KL): GKD
    minimises the full-distribution reverse KL at every sampled position,
    mean_t sum_v pi(v | s_t) (log pi(v | s_t) - log pi_teacher(v | s_t)), by
    backpropagating through that sum over the vocabulary. This trainer with
    `discount=0` is its single-sample score-function estimator: for a fixed prefix,
    E_{a ~ pi}[(log pi(a) - log pi_teacher(a)) grad log pi(a)] = grad KL(pi || pi_teacher),
    so the expected gradient equals GKD's (exactly, when the sampled token is
    enumerated with weights pi(v | s_t): `tests/test_distillation.py`,
    `benchmarks/distill_parity.py`), and `teacher_kl` is an unbiased estimate of
    GKD's loss value. Per sample they differ: GKD's gradient of one sequence uses the
    whole vocabulary, this one the sampled token. Neither differentiates through the
    prefix (the states s_t): GKD not at all, this trainer only with `discount > 0`.

    Logs, besides the usual ones: `teacher_kl`, the mean over real tokens of the k1
    estimate log pi(a_t) - log pi_teacher(a_t) (nats per token).

    Args:
        policy: `tfpg.models.Policy`. The student (`PolicyNetwork` or
            `KerasHubPolicy`).
        teacher: `tfpg.models.Policy`. A `PolicyNetwork` or `KerasHubPolicy` with the
            student's tokenizer (same vocabulary); set non-trainable here, never
            updated.
        reward_fn: callable, `tfpg.rewards.Reward` or None. An optional task reward
            (the `tfpg.rewards` signature); None: pure distillation (no `reward`
            logs).
        reward_weight: float. Weight of the task reward R in the advantages (>= 0).
        discount: float. In [0, 1]; 0 each token its own return, 1 the reward-to-go.

    Other arguments: see `PolicyGradientTrainer` (no `env`, `target_kl` or
    `kl_in_reward=False`).

    Example:
    >>> tok = tfpg.Tokenizer.from_texts(["one two three four"], level="word")
    >>> student = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=16)
    >>> teacher = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=16, hidden_dim=32)
    >>> prompts = ["one two", "three"]
    >>> agent = tfpg.algorithms.OnPolicyDistillation(student, teacher, max_new_tokens=4,
    ...                                               eos_id=tok.eos_id)
    >>> agent.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> history = agent.fit(tfpg.data.prompt_dataset(prompts, tok, batch_size=2), epochs=2,
    ...                     verbose=0)
    """

    supports_env = False        # the teacher scores one completion, not turns
    serialized_arguments = PolicyGradientTrainer.serialized_arguments + ("teacher",)

    def __init__(self, policy, teacher, reward_fn=None, reward_weight=1.0, discount=0.0,
                 **options):
        check_teacher(policy, teacher)
        bounds.check_non_negative("reward_weight", reward_weight)
        if not bounds.check_non_negative("discount", discount) <= 1:
            raise ValueError(f"discount must be in [0, 1], got {discount}")
        if options.get("target_kl") is not None:
            raise ValueError("target_kl adapts a KL penalty to a reference; distillation "
                             "takes its signal from the teacher (kl_coef is fixed here)")
        if not options.pop("kl_in_reward", True):
            raise ValueError("kl_in_reward=False: a KL penalty to a reference is a "
                             "per-token reward here, beside the teacher's")
        if options.get("env") is not None:
            raise ValueError("OnPolicyDistillation does not run multi-turn episodes "
                             "(env=): the teacher scores single completions")
        self.has_task_reward = reward_fn is not None
        super().__init__(policy, reward_fn if self.has_task_reward else no_task_reward,
                         **options)
        if not teacher.built:
            teacher.build()
        # Frozen: none of its weights is a trainable variable of this trainer.
        teacher.trainable = False
        self.teacher = teacher
        self.reward_weight = float(reward_weight)
        self.discount = float(discount)

    def metric_names(self):
        names = super().metric_names()
        if not self.has_task_reward:
            names = [name for name in names if name not in ("reward", "reward_std")]
        return names + ["teacher_kl"]

    def unlogged_metrics(self):
        # Without a task reward every row's reward is 0: not logged.
        extra = () if self.has_task_reward else ("reward", "reward_std")
        return super().unlogged_metrics() | set(extra)

    @property
    def scores_rollout(self):
        """Always: the rewards need the student's log-probs before the update."""
        return True

    def score_rollout(self, rollout, mask):
        """The base's scores ("old_log_probs", a reference's "kl"), then the teacher's
        log-probs "teacher_log_probs" and the k1 estimate "teacher_kl" [B, N]."""
        scored = super().score_rollout(rollout, mask)
        # After the student's (and a reference's) pass: one trunk's activations at a time.
        with tf.control_dependencies([scored[key] for key in ("old_log_probs", "ref_log_probs")
                                      if key in scored]):
            teacher = self.score_completions(self.teacher, rollout, mask,
                                             SamplingFilter(self.temperature))
        scored["teacher_log_probs"] = teacher.log_probs                      # [B, N]
        scored["teacher_kl"] = (scored["old_log_probs"] - teacher.log_probs) * mask
        return scored

    def compute_advantages(self, rollout, batch):
        mask = rollout.completion_mask
        token_rewards = -tf.stop_gradient(rollout.teacher_kl)              # [B, N]
        if rollout.kl is not None:
            token_rewards -= self.kl_coef * rollout.kl
        advantages = adv.discounted_returns(token_rewards, mask, self.discount)
        if self.has_task_reward and self.reward_weight:
            advantages += self.reward_weight * rollout.scores[:, None]
        return {"advantages": advantages * mask}

    def loss_terms(self, minibatch, scores, values):
        terms = {"policy_loss": self.policy_gradient_term(minibatch, scores.log_probs)}
        return terms, {"teacher_kl": minibatch.teacher_kl}

    def config_reward(self):
        return self.reward_fn if self.has_task_reward else None

    def get_config(self):
        config = super().get_config()
        config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                      reward_weight=self.reward_weight, discount=self.discount)
        config.pop("kl_in_reward")
        return config
