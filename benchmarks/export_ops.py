"""Derives `tfpg/guards/allowed_ops.json`: the op types tfpg's own exports contain.

`tfpg.load` and `RewardModel.load` refuse a `saved_model.pb` holding any other op
(tfpg/guards/trust.py). This script writes every kind of export tfpg makes, in a temporary
directory, and collects their ops:

* `export_saved_model` of a `PolicyNetwork` of each backbone (lstm, gru, transformer;
  word- and character-level tokenizers; greedy and top-p defaults; a transformer built
  under mixed_bfloat16);
* `export_saved_model` of a `KerasHubPolicy` of every family tests/keras_hub_models.py
  builds (gpt2, gemma, gemma3, llama3, mistral, qwen2, qwen3), with its byte-pair or
  SentencePiece tokenizer; GPT-2 also with LoRA adapters, Llama 3 also in bfloat16;
* `export_saved_model` of a `KerasHubPolicy` of each Hugging Face fixture checkpoint
  (tests/data/hf: gpt2, llama3, qwen2, gemma), with its `tokenizer.json` tokenizer;
* `RewardModel.save` of a preference model of each backbone, of a classifier
  (`train_reward_from_labels`) and of KerasHub-trunk preference models (GPT-2, Gemma).

Ops found anywhere but in the checkpoint saver's functions go to "ops"; those found
only there go to "saver_ops" (allowed only inside the saver). The script fails if
"ops" would hold an op that touches files, the network or Python (`DENIED`).

    python benchmarks/export_ops.py            # rewrites tfpg/guards/allowed_ops.json
    python benchmarks/export_ops.py --check    # fails if an export holds an unlisted op

About 4 minutes on 2 cores. Rerun it when an export gains an op (a new backbone,
family or tokenizer, a TensorFlow or KerasHub upgrade that traces other ops): the
`--check` mode says which.
"""

import argparse
import json
import os
import sys
import tempfile

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from tfpg.guards import trust  # noqa: E402

# Substrings of op types that read or write files, reach other processes or run
# Python: none may be allowed outside the saver.
DENIED = ("File", "PyFunc", "Save", "Restore", "Checkpoint", "Summary", "Dataset",
          "Reader", "Iterator", "Print", "Debug", "Remote", "Rpc", "Immutable", "Load",
          "Sharded", "Collective", "Send", "Recv", "Socket", "Http", "Execute")
TEXTS = ["one plus two is three", "ten minus nine is one", "the cat sat on the mat"]
PAIRS = (["the cat", "a dog", "1 + 2 =", "the end"] * 4, ["sat on the mat"] * 16,
         ["ran ! ?"] * 16)


def policy_exports(directory):
    """(name, path) of tfpg PolicyNetwork exports."""
    from tfpg import PolicyNetwork, Tokenizer, export_saved_model
    word = Tokenizer.from_texts(TEXTS, level="word")
    char = Tokenizer.from_texts(TEXTS, level="char")
    cases = [("lstm-word", "lstm", word, {}), ("gru-word", "gru", word, {}),
             ("transformer-word", "transformer", word, {}),
             ("lstm-char", "lstm", char, {"sampler": "top_p", "top_p": 0.9}),
             ("transformer-char-top-k", "transformer", char,
              {"sampler": "top_k", "top_k": 3, "eos_id": None})]
    for name, backbone, tokenizer, options in cases:
        keras.utils.set_random_seed(0)
        policy = PolicyNetwork(tokenizer.vocabulary_size, 16, 24, backbone=backbone,
                               num_heads=2, num_layers=2, max_length=64)
        policy.build()
        path = os.path.join(directory, name)
        export_saved_model(policy, tokenizer, path, max_new_tokens=4, **options)
        yield name, path
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        policy = PolicyNetwork(word.vocabulary_size, 16, 24, backbone="transformer",
                               num_heads=2, max_length=64)
        policy.build()
    finally:
        keras.config.set_dtype_policy(previous)
    path = os.path.join(directory, "transformer-mixed-bfloat16")
    export_saved_model(policy, word, path, max_new_tokens=4)
    yield "transformer-mixed-bfloat16", path


def keras_hub_exports(directory):
    """(name, path) of KerasHubPolicy exports, one per family (and LoRA, bfloat16)."""
    from keras_hub_models import FAMILIES, save_preset

    from tfpg import KerasHubPolicy, export_saved_model
    presets = os.path.join(directory, "presets")
    cases = [(family, family, {}) for family in FAMILIES]
    cases += [("gpt2-lora", "gpt2", {"lora_rank": 2}),
              ("llama3-bfloat16", "llama3", {"dtype": "bfloat16"})]
    for name, family, options in cases:
        preset = os.path.join(presets, family)
        if not os.path.exists(preset):
            save_preset(family, presets)
        policy = KerasHubPolicy.from_preset(preset, **options)
        path = os.path.join(directory, "hub-" + name)
        export_saved_model(policy, policy.tokenizer, path, max_new_tokens=4)
        yield "hub-" + name, path


def hf_exports(directory):
    """(name, path) of KerasHubPolicy exports of Hugging Face checkpoints (the fixtures
    of tests/data/hf: their in-graph tokenizers split, normalize and look up ids with
    other ops than KerasHub's)."""
    from hf_reference import checkpoint

    from tfpg import KerasHubPolicy, export_saved_model
    for name in ("gpt2", "llama3", "qwen2", "gemma"):
        policy = KerasHubPolicy.from_preset(checkpoint(name))
        path = os.path.join(directory, "hf-" + name)
        export_saved_model(policy, policy.tokenizer, path, max_new_tokens=4)
        yield "hf-" + name, path


def reward_model_exports(directory):
    """(name, path) of saved reward models."""
    from keras_hub_models import save_preset

    from tfpg import KerasHubPolicy, Tokenizer
    from tfpg.rewards import train_preference_model, train_reward_from_labels
    tokenizer = Tokenizer.from_texts(PAIRS[0] + PAIRS[1] + PAIRS[2])
    for backbone in ("lstm", "gru", "transformer"):
        model = train_preference_model(*PAIRS, tokenizer, backbone=backbone, embedding_dim=8,
                                       hidden_dim=8, num_heads=2, max_length=32, epochs=1,
                                       batch_size=8, validation_split=0.0)
        path = os.path.join(directory, f"reward-{backbone}")
        model.save(path)
        yield f"reward-{backbone}", path
    classifier = train_reward_from_labels(PAIRS[1] + PAIRS[2], [1] * 16 + [0] * 16, tokenizer,
                                    epochs=1)
    path = os.path.join(directory, "reward-classifier")
    classifier.save(path)
    yield "reward-classifier", path
    for family in ("gpt2", "gemma"):
        policy = KerasHubPolicy.from_preset(save_preset(family, os.path.join(directory,
                                                                             "reward-presets")))
        model = train_preference_model(*PAIRS, policy.tokenizer, init_from=policy, epochs=1,
                                       batch_size=8, validation_split=0.0)
        path = os.path.join(directory, f"reward-hub-{family}")
        model.save(path)
        yield f"reward-hub-{family}", path


def collect(path):
    """(ops outside the saver, ops inside it) of the export at `path`."""
    outside, inside = set(), set()
    for op, _, in_saver in trust.graph_ops(trust.read_saved_model(path)):
        if op != "<call>":
            (inside if in_saver else outside).add(op)
    return outside, inside


def derive(directory):
    """{"ops", "saver_ops", "sources"} over every export."""
    outside, inside, sources = set(), set(), []
    for exports in (policy_exports, keras_hub_exports, hf_exports, reward_model_exports):
        for name, path in exports(directory):
            ops, saver = collect(path)
            outside |= ops
            inside |= saver
            sources.append(name)
            print(f"{name}: {len(ops)} ops, {len(saver)} in the saver", flush=True)
    denied = sorted(op for op in outside if any(word in op for word in DENIED))
    if denied:
        raise SystemExit(f"an export holds ops that must not be allowed outside the saver: "
                         f"{denied}; find out why before allowing them")
    return {"ops": sorted(outside), "saver_ops": sorted(inside - outside), "sources": sources}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed list instead of rewriting it")
    args = parser.parse_args()
    import keras_hub
    import tensorflow as tf
    with tempfile.TemporaryDirectory() as directory:
        found = derive(directory)
    if args.check:
        ops, saver_ops = trust.allowed_ops()
        missing = sorted(set(found["ops"]) - ops) + sorted(
            set(found["saver_ops"]) - saver_ops - ops)
        print(f"{len(found['sources'])} exports; ops not in {trust.ALLOWED_OPS_FILE}: "
              f"{missing or 'none'}")
        return 1 if missing else 0
    payload = {
        "about": "Op types of tfpg's own exports (benchmarks/export_ops.py): tfpg.load and "
                 "RewardModel.load refuse any other. saver_ops are allowed only inside the "
                 "checkpoint saver's functions (tfpg/guards/trust.py).",
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "keras_hub": keras_hub.__version__, "sources": found["sources"],
        "ops": found["ops"], "saver_ops": found["saver_ops"]}
    os.makedirs(os.path.dirname(trust.ALLOWED_OPS_FILE), exist_ok=True)
    with open(trust.ALLOWED_OPS_FILE, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(f"{len(found['ops'])} ops and {len(found['saver_ops'])} saver ops from "
          f"{len(found['sources'])} exports written to {trust.ALLOWED_OPS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
