"""Live comparison of tfpg with transformers on the Hugging Face fixture checkpoints.

Needs torch + transformers besides tfpg (the reference environment):

    /work/trlenv/bin/python benchmarks/hf_compat.py [--families gpt2,llama3] [--tokens 16]

For each checkpoint of tests/data/hf (written by benchmarks/hf_fixtures.py), loaded by
transformers (`AutoModelForCausalLM`, `AutoTokenizer`, float32) and by tfpg
(`KerasHubPolicy.from_preset(DIR)`):

* `max_logit_diff`: max |logit difference| over the real positions of a left-padded
  batch of 6 prompts (tfpg's padding mask, transformers' attention mask with positions
  counted from the first real token, as its `generate` does);
* `ids_python` / `ids_graph`: strings of the torture corpus (tests/data/hf/corpus.json)
  whose ids equal transformers' `tokenizer(text)["input_ids"]`, for tfpg's training-side
  encoder (`HFTokenizer.encode`) and its in-graph encoder (what an export runs);
* `greedy`: prompts whose greedy `tfpg.generate` completion of `--tokens` tokens equals
  transformers' `generate(do_sample=False)` (pad and BOS suppressed on both sides, as
  tfpg never samples them).

Columns of `benchmarks/hf_templates.py:template_rows()` (chat templates) and
`benchmarks/hf_export_check.py:export_rows()` (export round trip, PEFT) are merged in
by family where those files exist. `--extra` also writes and compares the families
`benchmarks/hf_fixtures.py` does not commit (Gemma 2, Gemma 3 text). Writes benchmarks/results/hf_compat.json and prints
the table.
"""

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
RESULTS = os.path.join(HERE, "results", "hf_compat.json")
FAMILIES = ["gpt2", "llama3", "llama3_noeot", "qwen2", "qwen2_bf16", "qwen3", "mistral", "gemma"]
PROMPTS = ["Q: What is 3+4?\nA:", "I'M SURE it's fine", "The 12345 cats", "你好 café",
           "def f(x):\n    return", "  indented\n\n"]


def left_padded(hf_tokenizer, pad_id):
    encoded = [hf_tokenizer(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, encoded))
    ids = np.full([len(encoded), width], pad_id, np.int64)
    mask = np.zeros([len(encoded), width], np.int64)
    for row, e in enumerate(encoded):
        ids[row, width - len(e):] = e
        mask[row, width - len(e):] = 1
    return ids, mask


def compare(name, tokens, corpus, directory=None):
    import tensorflow as tf
    import torch
    import transformers

    import tfpg
    from hf_reference import checkpoint

    directory = directory or checkpoint(name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    policy = tfpg.KerasHubPolicy.from_preset(directory)
    tokenizer = policy.tokenizer
    row = {"family": name}

    ids, mask = left_padded(hf_tokenizer, policy.pad_id)
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        theirs = model(input_ids=ids_t, attention_mask=mask_t,
                       position_ids=(mask_t.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
        suppress = sorted(set(policy.structural_ids)) or None
        out = model.generate(input_ids=ids_t, attention_mask=mask_t, do_sample=False,
                             max_new_tokens=tokens, pad_token_id=policy.pad_id,
                             eos_token_id=policy.eos_id, suppress_tokens=suppress)
    ours = policy(ids, padding_mask=mask).numpy()
    row["max_logit_diff"] = float(np.abs(ours - theirs)[mask > 0].max())

    want = [hf_tokenizer(text)["input_ids"] for text in corpus]
    python = tokenizer.encode(list(corpus))
    layer = tokenizer.string_to_ids_layer(return_mask=True)
    graph_ids, graph_mask = layer(tf.constant(corpus))
    graph = [r[m > 0].tolist() for r, m in zip(graph_ids.numpy(), graph_mask.numpy())]
    row["ids_python"] = f"{sum(a == b for a, b in zip(python, want))}/{len(corpus)}"
    row["ids_graph"] = f"{sum(a == b for a, b in zip(graph, want))}/{len(corpus)}"

    hf_greedy = out[:, ids.shape[1]:].numpy()
    ours_greedy = tfpg.generate(policy, ids, prompt_mask=mask, max_new_tokens=tokens,
                                sampler="greedy").token_ids.numpy()
    equal = 0
    for a, b in zip(ours_greedy, hf_greedy):
        b = np.pad(b, (0, tokens - len(b)), constant_values=policy.pad_id)
        equal += int((a == b).all())
    row["greedy"] = f"{equal}/{len(PROMPTS)}"
    return row


def merged_rows(rows):
    """Adds the columns of hf_templates.template_rows() / hf_export_check.export_rows()."""
    by_family = {row["family"]: row for row in rows}
    for module_name, function in (("hf_templates", "template_rows"),
                                  ("hf_export_check", "export_rows")):
        if not os.path.exists(os.path.join(HERE, module_name + ".py")):
            continue
        try:
            extra = getattr(importlib.import_module(module_name), function)()
        except Exception as error:  # noqa: BLE001 - report, keep the rest of the table
            print(f"{module_name}.{function}() failed: {type(error).__name__}: {error}")
            continue
        for row in extra:
            target = by_family.setdefault(row["family"], {"family": row["family"]})
            target.update({k: v for k, v in row.items() if k != "family"})
    return list(by_family.values())


def print_table(rows):
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[_cell(row.get(key, "")) for key in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _cell(value):
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--extra", action="store_true",
                        help="also write the uncommitted fixtures (hf_fixtures.EXTRA: Gemma 2, "
                             "Gemma 3 text) to a temporary directory and compare them")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        print(f"hf_compat needs torch and transformers ({error}); run it with the "
              "reference environment")
        return 2
    from hf_reference import corpus
    rows = []
    for name in args.families.split(","):
        start = time.perf_counter()
        rows.append(compare(name, args.tokens, corpus()))
        print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    if args.extra:
        import tempfile

        import hf_fixtures
        with tempfile.TemporaryDirectory() as root:
            hf_fixtures.write(root, list(hf_fixtures.EXTRA))
            for name in hf_fixtures.EXTRA:
                rows.append(compare(name, args.tokens, corpus(), os.path.join(root, name)))
    rows = merged_rows(rows)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(rows, f, indent=1)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
