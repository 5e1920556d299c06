"""Live round trip of `tfpg.export_transformers` through transformers and PEFT (issue 21,
item 4). Needs torch + transformers + peft (the reference environment):

    /work/trlenv/bin/python benchmarks/hf_export_check.py [--families gpt2,llama3]

For each fixture checkpoint under `tests/data/hf/<family>/` (written by transformers,
`benchmarks/hf_fixtures.py`): tfpg loads it with LoRA (`KerasHubPolicy.from_preset(DIR,
lora_rank=4)`), the adapters are moved off zero (random A and B, or `--grpo-steps N`
GRPO steps on a length reward), and

* `--format transformers` (LoRA merged) is read back by
  `AutoModelForCausalLM.from_pretrained`: `export_max_abs_logit_diff` is the largest
  |logit difference| with tfpg's LoRA policy on the fixture's left-padded batch (real
  positions; transformers gets the mask and positions counted over real tokens, as
  `generate` does);
* `--format peft` adapters are applied by `PeftModel.from_pretrained(base, DIR)` on the
  fixture checkpoint itself: `peft_max_abs_logit_diff`, the same comparison.

`export_rows()` returns one dict per family (`family`, `export_max_abs_logit_diff`,
`peft_max_abs_logit_diff`, `error` where a family could not run) for
`benchmarks/hf_compat.py`'s table; `__main__` prints them.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "hf")
FAMILIES = ("gpt2", "llama3", "qwen2", "gemma")
LORA_RANK = 4


def _move_adapters(policy, seed):
    """Random non-zero adapters (Keras starts B at zero: LoRA would be a no-op)."""
    rng = np.random.default_rng(seed)
    for layer in policy.lora_layers():
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.assign(0.1 * rng.standard_normal(variable.shape).astype("float32"))


def _train_adapters(policy, steps, seed):
    """A few GRPO steps on a length reward: the adapters move as in a real run."""
    import keras
    import tensorflow as tf

    import tfpg
    tokenizer = policy.tokenizer

    def longer(prompt_ids, completion_ids, completion_mask, batch):
        return tf.reduce_sum(tf.cast(completion_mask, tf.float32), axis=1)

    agent = tfpg.algorithms.GRPO(policy, reward_fn=longer, group_size=4, max_new_tokens=6,
                                 eos_id=tokenizer.eos_id, seed=seed)
    agent.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tfpg.data.prompt_dataset(["Q: 1+1?", "The cat", "hello", "I'M SURE"], tokenizer,
                                    batch_size=2)
    agent.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)


def _torch_logits(model, ids, mask):
    import torch
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t,
                     position_ids=positions).logits.float().numpy()


def _max_diff(a, b, mask):
    real = mask.astype(bool)                                     # [B, T]
    return float(np.max(np.abs(a[real] - b[real])))


def check_family(family, grpo_steps=0, seed=0):
    """{"family", "export_max_abs_logit_diff", "peft_max_abs_logit_diff"} of one fixture."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import tfpg
    source = os.path.join(FIXTURES, family)
    reference = np.load(os.path.join(source, "reference.npz"))
    ids, mask = reference["batch_ids"], reference["batch_mask"]           # [B, T] left-padded
    policy = tfpg.KerasHubPolicy.from_preset(source, lora_rank=LORA_RANK)
    if grpo_steps:
        _train_adapters(policy, grpo_steps, seed)
    else:
        _move_adapters(policy, seed)
    moved = max(float(np.max(np.abs(layer.lora_kernel_b.numpy())))
                for layer in policy.lora_layers())
    ours = np.asarray(policy(ids, padding_mask=mask))                      # [B, T, V]
    with tempfile.TemporaryDirectory() as tmp:
        merged, adapters = os.path.join(tmp, "merged"), os.path.join(tmp, "peft")
        tfpg.export_transformers(policy, merged)
        tfpg.export_transformers(policy, adapters, merge_lora=False, format="peft",
                                 base_model_name_or_path=source)
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        exported = _torch_logits(model, ids, mask)
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, adapters).eval()
        peft = _torch_logits(peft_model, ids, mask)
    return {"family": family, "export_max_abs_logit_diff": _max_diff(exported, ours, mask),
            "peft_max_abs_logit_diff": _max_diff(peft, ours, mask),
            "lora_b_max_abs": moved}


def export_rows(families=FAMILIES, grpo_steps=0):
    """One row per family; a family that cannot run has an "error" (one line) instead."""
    rows = []
    for family in families:
        try:
            rows.append(check_family(family, grpo_steps=grpo_steps))
        except Exception as error:  # noqa: BLE001 - report every family, go on
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            rows.append({"family": family, "export_max_abs_logit_diff": None,
                         "peft_max_abs_logit_diff": None,
                         "error": f"{type(error).__name__}: {first[:200]}"})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--grpo-steps", type=int, default=0,
                        help="train the adapters with N GRPO steps instead of random values")
    args = parser.parse_args(argv)
    rows = export_rows(args.families.split(","), grpo_steps=args.grpo_steps)
    keys = ("export_max_abs_logit_diff", "peft_max_abs_logit_diff", "lora_b_max_abs")
    print(f"{'family':<8} {'export max |dlogit|':>20} {'peft max |dlogit|':>18} "
          f"{'max |lora_B|':>13}  note")
    for row in rows:
        cells = [f"{row[k]:.2e}" if row.get(k) is not None else "-" for k in keys]
        print(f"{row['family']:<8} {cells[0]:>20} {cells[1]:>18} {cells[2]:>13}  "
              f"{row.get('error', '')}")
    return 0 if all(row.get("error") is None and max(
        row["export_max_abs_logit_diff"], row["peft_max_abs_logit_diff"]) <= 1e-4
        for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
