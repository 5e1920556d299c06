"""tfpg's GRPO and RLOO losses and gradients against TRL 1.16's trainer code, one
fixed batch per configuration.

Optional: without torch, transformers or trl importable it prints a skip line and
exits 0 (`pip install torch trl`; CPU wheels are enough).

Both sides get the same tiny random GPT-2 (1 layer x 2 heads, width 8, a character
vocabulary of 49 ids with EOS = pad = BOS last; float32, CPU): the Hugging Face
model's weights are converted to KerasHub's GPT-2 with KerasHub's own converter,
and so are TRL's gradients (the conversion is linear: reshapes and slices). The
batch is fixed: 4 prompts of 6 characters (equal lengths: TRL scores a left-padded
GPT-2 prompt with positions 0..T-1 while its `generate` counts real tokens; tfpg
counts real tokens in both, so only equal-length prompts compare the two), 4
completions each of 1-8 tokens, most ending in EOS, some truncated at
`max_completion_length` 8, and fixed rewards (two objectives for the
`multi_objective_aggregation` rows, one group with equal rewards). The policy is
the reference moved by Gaussian noise (std 0.1 on every weight), so that the KL term
has a gradient.

TRL side: `GRPOTrainer` / `RLOOTrainer` built with the row's options; only
`_generate` is replaced (it returns the fixed completions), then TRL's own
`_generate_and_score_completions` (rewards, advantages, behaviour and reference
log-probs) and `_compute_loss`, `loss.backward()`. `num_iterations=2` rows take one
SGD step (learning rate 3, no gradient clipping, on both sides) and a second loss
and backward on the same rollout. tfpg side: the trainer with the same options and
`tfpg.testing.replay_fixed_rollout`.

Printed per row: max |loss difference| over the steps, the max per-parameter
gradient difference, the gradient global-norm difference. `--write-fixtures` saves
the batch, the weights, TRL's losses and gradients to tests/data/trl_parity/ for
tests/test_trl_parity.py, which checks tfpg against them without torch.

    /work/trlenv/bin/python benchmarks/trl_parity.py [--write-fixtures]   # ~1 min
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import types

try:
    import torch
    import transformers
    import trl
    import datasets
    import tokenizers  # noqa: F401  (vs_trl's tokenizer)
except ImportError as error:
    print(f"trl_parity: skipped ({error.name} is not importable; pip install torch trl)")
    sys.exit(0)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import vs_trl  # noqa: E402  (its character tokenizer and GPT-2; one thread each)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                "tests"))
import trl_parity_case  # noqa: E402  (tfpg's side, shared with tests/test_trl_parity.py)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests",
                        "data", "trl_parity")
MODEL = types.SimpleNamespace(width=8, layers=1, heads=2, context=24)
PROMPTS, GROUP, PROMPT_LENGTH, NEW_TOKENS = 4, 4, 6, 8
LEARNING_RATE = 3.0          # the SGD step between the two passes of num_iterations=2
WEIGHTS = (1.0, 0.5)         # the two objectives of the multi-objective rows


def row(name, trainer="grpo", steps=1, objectives=1, note="", **options):
    """One configuration: TRL's option names; tfpg's are derived by `tfpg_options`."""
    return {"name": name, "trainer": trainer, "steps": steps, "objectives": objectives,
            "options": options, "note": note}


RLOO_NOTE = ("the loss value, by construction: one step of tfpg's RLOO is "
             "-A log pi(y|x), TRL's -A rho (rho = 1); same gradient")
CONFIGS = [
    row("grpo", loss_type="grpo"),
    row("bnpo", loss_type="bnpo"),
    row("dr_grpo", loss_type="dr_grpo"),
    row("dapo", loss_type="dapo"),
    row("cispo", loss_type="cispo", epsilon_high=5.0),
    row("sapo", loss_type="sapo"),
    row("luspo (sequence)", loss_type="luspo", importance_sampling_level="sequence"),
    row("vespo", loss_type="vespo"),
    row("grpo sequence (GSPO)", loss_type="grpo", importance_sampling_level="sequence"),
    row("grpo beta 0.04 bias-corrected KL", loss_type="grpo", beta=0.04),
    row("grpo beta 0.04 plain k3", loss_type="grpo", beta=0.04, use_bias_correction_kl=False),
    row("dapo beta 0.04 bias-corrected KL", loss_type="dapo", beta=0.04),
    row("dapo beta 0.04 plain k3", loss_type="dapo", beta=0.04, use_bias_correction_kl=False),
    row("grpo sequence beta 0.04 bias-corrected", loss_type="grpo", beta=0.04,
        importance_sampling_level="sequence"),
    row("scale_rewards batch", loss_type="grpo", scale_rewards="batch"),
    row("scale_rewards none", loss_type="dr_grpo", scale_rewards="none"),
    row("mask_truncated_completions", loss_type="dapo", mask_truncated_completions=True),
    row("top_entropy_quantile 0.2", loss_type="grpo", top_entropy_quantile=0.2),
    row("entropy_coef 0.01", loss_type="dapo", entropy_coef=0.01),
    row("normalize_then_sum (GDPO)", objectives=2, loss_type="grpo",
        multi_objective_aggregation="normalize_then_sum"),
    row("sum_then_normalize, 2 objectives", objectives=2, loss_type="grpo"),
    row("grpo num_iterations 2", steps=2, loss_type="grpo", beta=0.04),
    row("dapo num_iterations 2, clip-higher", steps=2, loss_type="dapo", beta=0.04,
        epsilon_high=0.28),
    row("GSPO num_iterations 2", steps=2, loss_type="grpo",
        importance_sampling_level="sequence", epsilon=3e-2, epsilon_high=4e-2),
    row("cispo num_iterations 2", steps=2, loss_type="cispo", epsilon_high=1.1),
    row("sapo num_iterations 2", steps=2, loss_type="sapo", beta=0.04),
    row("luspo num_iterations 2", steps=2, loss_type="luspo",
        importance_sampling_level="sequence"),
    row("vespo num_iterations 2", steps=2, loss_type="vespo"),
    row("delta 1.05 num_iterations 2", steps=2, loss_type="grpo", beta=0.04, delta=1.05),
    row("off_policy_mask_threshold 0.01 num_iterations 2", steps=2, loss_type="dapo",
        beta=0.04, epsilon_high=0.28, off_policy_mask_threshold=0.01),
    row("adaptive entropy num_iterations 2", steps=2, loss_type="dapo",
        use_adaptive_entropy=True, entropy_coef=0.05, entropy_target=10.0,
        entropy_coef_delta=0.02),
    row("rloo", trainer="rloo", note=RLOO_NOTE),
    row("rloo normalize_advantages", trainer="rloo", normalize_advantages=True,
        note=RLOO_NOTE),
    row("rloo beta 0.05 (k1 in reward)", trainer="rloo", beta=0.05, note=RLOO_NOTE),
    row("rloo num_iterations 2", trainer="rloo", steps=2),
]

# TRL option -> tfpg argument, where the names differ.
RENAMED = {"beta": "kl_coef", "epsilon": "clip_epsilon", "epsilon_high": "clip_epsilon_high"}


def tfpg_options(config):
    """tfpg constructor arguments of a configuration (TRL's defaults made explicit)."""
    options = {RENAMED.get(key, key): value for key, value in config["options"].items()}
    options.setdefault("kl_coef", 0.0)
    if config["trainer"] == "grpo":
        options.setdefault("scale_rewards", "group")
    if config["steps"] > 1:
        options["num_epochs"] = config["steps"]
    return options


def make_batch():
    """Prompts (ids [P, L] and strings), completions [B, N] with their mask, and
    rewards [B, 2]."""
    tokenizer = vs_trl.char_tokenizer()
    rng = np.random.default_rng(7)
    letters = list(vs_trl.CHARS[:36])
    prompts = ["".join(rng.choice(letters, PROMPT_LENGTH)) for _ in range(PROMPTS)]
    eos = tokenizer.eos_token_id
    rows = PROMPTS * GROUP
    lengths = rng.integers(1, NEW_TOKENS + 1, rows)
    lengths[[1, 6, 11]] = NEW_TOKENS                           # some reach the limit
    ids = np.full([rows, NEW_TOKENS], eos, np.int32)
    mask = np.zeros([rows, NEW_TOKENS], np.float32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(0, eos, length)
        mask[i, :length] = 1
        if length < NEW_TOKENS or i == 6:                      # row 6: EOS as 8th token
            ids[i, length - 1] = eos
    rewards = rng.normal(size=[rows, 2]).astype(np.float32)
    rewards[8:12, 0] = 0.5                                     # a group with equal rewards
    prompt_ids = np.array([tokenizer(p)["input_ids"] for p in prompts], np.int32)
    return {"prompts": prompts, "prompt_ids": prompt_ids, "completion_ids": ids,
            "completion_mask": mask, "rewards": rewards}, tokenizer


def torch_to_keras_hub(model, tensors, directory):
    """KerasHub GPT-2 weights (a list in `backbone.weights` order) of a Hugging Face
    GPT-2 whose parameters are `tensors` (name -> tensor), by KerasHub's converter."""
    import keras_hub
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in clone.named_parameters():
            parameter.copy_(tensors[name])
    clone.save_pretrained(directory)
    backbone = keras_hub.models.GPT2Backbone.from_preset(directory)
    return [np.asarray(w) for w in backbone.get_weights()]


def trl_steps(config, model_dir, policy_parameters, batch, tokenizer):
    """TRL's [(loss, {name: gradient})] per step for one configuration (the model, and
    TRL's reference, loaded from `model_dir`)."""
    rows = PROMPTS * GROUP
    ids = batch["completion_ids"]
    lengths = batch["completion_mask"].sum(1).astype(int)
    completion_lists = [ids[i, :lengths[i]].tolist() for i in range(rows)]
    prompt_lists = [batch["prompt_ids"][i // GROUP].tolist() for i in range(rows)]
    rewards = batch["rewards"]

    def reward_function(column):
        def reward(prompts, completions, completion_ids, **kwargs):
            return [float(rewards[i, column]) for i in range(len(completion_ids))]
        reward.__name__ = f"objective_{column}"
        return reward

    funcs = [reward_function(c) for c in range(config["objectives"])]
    options = dict(config["options"])
    trainer_name = config["trainer"]
    with tempfile.TemporaryDirectory() as output_dir:
        common_options = dict(
            output_dir=output_dir, per_device_train_batch_size=rows,
            gradient_accumulation_steps=1, num_generations=GROUP,
            max_completion_length=NEW_TOKENS, steps_per_generation=1,
            num_iterations=config["steps"], learning_rate=LEARNING_RATE,
            temperature=1.0, use_cpu=True, bf16=False, fp16=False, report_to=[],
            save_strategy="no", seed=0, max_grad_norm=None, disable_tqdm=True)
        if trainer_name == "grpo":
            options.setdefault("beta", 0.0)
            if config["objectives"] > 1:
                options["reward_weights"] = list(WEIGHTS)
            args = trl.GRPOConfig(**common_options, **options)
            cls = trl.GRPOTrainer
        else:
            options.setdefault("beta", 0.0)
            args = trl.RLOOConfig(**common_options, **options)
            cls = trl.RLOOTrainer
        dataset = datasets.Dataset.from_dict({"prompt": batch["prompts"]})
        # The policy: the reference's weights moved a little (a KL of 0 would give the
        # KL term no gradient); TRL loads its reference from `model_dir`.
        policy = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                parameter.copy_(policy_parameters[name])
        trainer = cls(model=policy, reward_funcs=funcs if len(funcs) > 1 else
                      funcs[0], args=args, train_dataset=dataset, processing_class=tokenizer)

        def generate(prompts):
            texts = tokenizer.batch_decode(completion_lists, skip_special_tokens=True)
            if trainer_name == "rloo":
                return prompt_lists, completion_lists, texts
            return (prompt_lists, completion_lists, None, texts, None, {}, None, [])

        trainer._generate = generate
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        inputs = trainer._generate_and_score_completions(
            [{"prompt": batch["prompts"][i // GROUP]} for i in range(rows)])
        results = []
        parameters = dict(trainer.model.named_parameters())
        for step in range(config["steps"]):
            if step:
                with torch.no_grad():
                    for parameter in parameters.values():
                        parameter -= LEARNING_RATE * parameter.grad
            for parameter in parameters.values():
                parameter.grad = None
            loss = trainer._compute_loss(trainer.model, inputs)
            loss.backward()
            results.append((float(loss.detach()), {name: p.grad.detach().clone()
                                          for name, p in parameters.items()}))
        return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-fixtures", action="store_true",
                        help="save the batch, weights, TRL's losses and gradients to "
                             "tests/data/trl_parity/")
    parser.add_argument("--only", help="run the configurations whose name contains this")
    parser.add_argument("--output", default="benchmarks/results/trl_parity.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch, tokenizer = make_batch()
    model = vs_trl.hf_model(MODEL, tokenizer)
    model_dir = tempfile.mkdtemp()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        policy_parameters = {name: p + 0.1 * torch.randn(p.shape, generator=generator)
                             for name, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as directory:
        weights = torch_to_keras_hub(model, policy_parameters, directory)
    reference_weights = torch_to_keras_hub(model, dict(model.named_parameters()), model_dir)
    tokenizer.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "config.json")) as file:
        hf_config = json.load(file)
    import keras_hub.src.utils.transformers.convert_gpt2 as convert_gpt2
    backbone_config = convert_gpt2.convert_backbone_config(hf_config)
    configs = [dict(c, tfpg=tfpg_options(c)) for c in CONFIGS
               if not args.only or args.only in c["name"]]
    setup = {"backbone": backbone_config, "group_size": GROUP, "max_new_tokens": NEW_TOKENS,
             "learning_rate": LEARNING_RATE, "weights": list(WEIGHTS), "trl": trl.__version__}
    rows, fixtures = [], {}
    for index, config in enumerate(configs):
        trl_results = []
        with tempfile.TemporaryDirectory() as directory:
            for loss, grads in trl_steps(config, model_dir, policy_parameters, batch,
                                         tokenizer):
                converted = torch_to_keras_hub(model, grads, directory)
                trl_results.append((loss, np.concatenate([g.ravel() for g in converted])))
        mine = trl_parity_case.run_row(config, setup, batch, weights, reference_weights)
        loss, gradient, norm = trl_parity_case.compare(trl_results, mine)
        scale = max(float(np.max(np.abs(g))) for _, g in trl_results)
        rows.append({"name": config["name"], "loss": loss, "gradient": gradient,
                     "norm": norm, "max_gradient": scale,
                     "note": config["note"] if loss > 1e-6 else ""})
        print(f"{config['name']}: |dloss| {loss:.1e}  max |dgrad| {gradient:.1e}  "
              f"|dnorm| {norm:.1e}", flush=True)
        for step, (value, flat) in enumerate(trl_results):
            fixtures[f"c{index}_s{step}_loss"] = np.float64(value)
            fixtures[f"c{index}_s{step}_grad"] = flat.astype(np.float32)
    print()
    common.print_table([("configuration", "name", None), ("max |dloss|", "loss", "{:.1e}"),
                        ("max |dgrad|", "gradient", "{:.1e}"),
                        ("|dnorm|", "norm", "{:.1e}"),
                        ("max |grad|", "max_gradient", "{:.2f}"),
                        ("difference", "note", None)], rows)
    common.write_json(args.output, {
        "environment": dict(common.environment(), torch=torch.__version__,
                            transformers=transformers.__version__, trl=trl.__version__),
        "rows": rows})
    if args.write_fixtures:
        if args.only:
            raise SystemExit("--write-fixtures needs every configuration (no --only)")
        os.makedirs(FIXTURES, exist_ok=True)
        np.savez_compressed(
            os.path.join(FIXTURES, "batch.npz"),
            **{k: batch[k] for k in ("prompt_ids", "completion_ids", "completion_mask",
                                     "rewards")},
            **{f"w{i}": w for i, w in enumerate(weights)},
            **{f"r{i}": w for i, w in enumerate(reference_weights)})
        np.savez_compressed(os.path.join(FIXTURES, "trl.npz"), **fixtures)
        with open(os.path.join(FIXTURES, "configs.json"), "w") as file:
            json.dump(dict(setup, configs=configs), file, indent=1)
        print(f"fixtures written to {os.path.normpath(FIXTURES)}")


if __name__ == "__main__":
    main()
