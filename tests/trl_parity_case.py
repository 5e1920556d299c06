"""tfpg's side of the TRL parity rows (benchmarks/trl_parity.py writes the fixtures of
tests/data/trl_parity/, tests/test_trl_parity.py reads them): the tiny KerasHub
GPT-2 policy, the trainer of one row, its losses and gradients on the fixed batch.
No torch here."""

import keras
import numpy as np
import tensorflow as tf

import tfpg
from tfpg.testing import replay_fixed_rollout

TRAINERS = {"grpo": tfpg.algorithms.GRPO, "rloo": tfpg.algorithms.RLOO}


def gpt2_policy(backbone_config, weights):
    """A `KerasHubPolicy` of a KerasHub GPT-2 with these weights (`backbone.weights`
    order); EOS = pad = BOS is the last id (GPT-2's convention)."""
    import keras_hub
    backbone = keras_hub.models.GPT2Backbone(**backbone_config)
    backbone.set_weights(weights)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    eos = backbone_config["vocabulary_size"] - 1
    return tfpg.KerasHubPolicy(causal_lm, pad_id=eos, bos_id=eos, eos_id=eos), backbone


def build_models(setup):
    """(policy, its backbone, reference, its backbone): the two GPT-2s the rows run
    on (weights set by `run_row`), built once for many rows."""
    import keras_hub
    shapes = keras_hub.models.GPT2Backbone(**setup["backbone"]).get_weights()
    policy, backbone = gpt2_policy(setup["backbone"], shapes)
    reference, reference_backbone = gpt2_policy(setup["backbone"], shapes)
    reference.trainable = False
    return policy, backbone, reference, reference_backbone


def run_row(config, setup, batch, weights, reference_weights, models=None, **overrides):
    """tfpg's [(loss, flat gradient float32 [parameters])] per step of one row.

    Args:
        config: the row (its "trainer", "steps", "objectives" and tfpg options "tfpg").
        setup: "backbone" config, "group_size", "max_new_tokens", "learning_rate",
            "weights" (of the objectives).
        batch: "prompt_ids" [P, L], "completion_ids" / "completion_mask" [B, N],
            "rewards" [B, 2].
        weights, reference_weights: the policy's and the KL reference's weights.
        models: `build_models(setup)` to reuse (None: built here).
        overrides: trainer options replacing the row's.
    """
    keras.utils.set_random_seed(0)
    policy, backbone, reference, reference_backbone = models or build_models(setup)
    backbone.set_weights(weights)
    options = dict(config["tfpg"], **overrides)
    if options.get("kl_coef"):
        reference_backbone.set_weights(reference_weights)
        options["reference_model"] = reference
    rewards = batch["rewards"]
    if config["objectives"] > 1:
        reward_fn = tfpg.rewards.WeightedSum([
            (f"objective_{c}", lambda *a, c=c: tf.constant(rewards[:, c]), weight)
            for c, weight in enumerate(setup["weights"])])
    else:
        def reward_fn(*args):
            return tf.constant(rewards[:, 0])
    eos = setup["backbone"]["vocabulary_size"] - 1
    agent = TRAINERS[config["trainer"]](
        policy, reward_fn, group_size=setup["group_size"],
        max_new_tokens=setup["max_new_tokens"], eos_id=eos, max_grad_norm=None, **options)
    agent.compile(optimizer=keras.optimizers.SGD(setup["learning_rate"]), jit_compile=False)
    results = replay_fixed_rollout(agent, {"prompt": batch["prompt_ids"]},
                                   batch["completion_ids"], batch["completion_mask"],
                                   config["steps"])
    position = {id(v): i for i, v in enumerate(agent.trainable_variables)}
    return [(loss, np.concatenate([gradients[position[id(v)]].numpy().ravel()
                                   for v in backbone.weights]))
            for loss, gradients in results]


def compare(reference, mine):
    """(max |loss difference|, max per-parameter gradient difference, |global norm
    difference|) over the steps of [(loss, flat gradient)] pairs."""
    loss = max(abs(a - b) for (a, _), (b, _) in zip(reference, mine))
    gradient = max(float(np.max(np.abs(x - y))) for (_, x), (_, y) in zip(reference, mine))
    norm = max(abs(np.linalg.norm(x.astype(np.float64)) - np.linalg.norm(y.astype(np.float64)))
               for (_, x), (_, y) in zip(reference, mine))
    return loss, gradient, norm
