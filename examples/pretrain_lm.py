"""Maximum-likelihood pre-training of a small PolicyNetwork on generated text.

Generates a corpus of short arithmetic sentences (no downloads), trains an LSTM
language model with plain Keras `fit` and prints held-out perplexity falling epoch
by epoch, then a few sampled completions.

    python examples/pretrain_lm.py [--epochs 4] [--backbone lstm|gru|transformer]
"""

import argparse
import math
import random

import keras

import tfpg

NUMBER_WORDS = "zero one two three four five six seven eight nine".split()


def make_corpus(count, seed):
    """Sentences like 'three plus four is seven': a language with real structure."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(count):
        a, b = rng.randrange(5), rng.randrange(5)
        corpus.append(f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}")
    return corpus


class PerplexityPrinter(keras.callbacks.Callback):
    def __init__(self, heldout):
        super().__init__()
        self.heldout = heldout

    def on_epoch_end(self, epoch, logs=None):
        loss = self.model.evaluate(self.heldout, verbose=0)
        print(f"epoch {epoch + 1}: train loss {logs['loss']:.3f}  "
              f"held-out perplexity {math.exp(loss):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backbone", default="lstm", choices=["lstm", "gru", "transformer"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    train_texts, heldout_texts = make_corpus(2000, args.seed), make_corpus(200, args.seed + 1)
    tokenizer = tfpg.Tokenizer.from_texts(train_texts + heldout_texts, level="word")
    train = tfpg.data.language_model_dataset(train_texts, tokenizer, sequence_length=8,
                                             batch_size=32, seed=args.seed)
    heldout = tfpg.data.language_model_dataset(heldout_texts, tokenizer, sequence_length=8,
                                               batch_size=64, shuffle=False)

    policy = tfpg.PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=32, hidden_dim=64,
                                backbone=args.backbone, num_heads=2, max_length=32)
    policy.compile(optimizer=keras.optimizers.Adam(1e-2),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                   ignore_class=0))
    start = math.exp(policy.evaluate(heldout, verbose=0))
    print(f"before training: held-out perplexity {start:.2f} "
          f"(vocabulary {tokenizer.vocabulary_size})")
    policy.fit(train, epochs=args.epochs, verbose=0, callbacks=[PerplexityPrinter(heldout)])

    prompts = ["two plus two is", "four plus one is", "zero plus three is"]
    prompt_ids = tfpg.data.prompt_dataset(prompts, tokenizer, batch_size=len(prompts))
    completions = tfpg.generate(policy, next(iter(prompt_ids))["prompt"], max_new_tokens=3,
                                sampler="greedy", eos_id=tokenizer.eos_id)
    for prompt, completion in zip(prompts, tokenizer.decode(completions.token_ids)):
        print(f"  {prompt} -> {completion}")


if __name__ == "__main__":
    main()
