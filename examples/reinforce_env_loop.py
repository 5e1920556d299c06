"""REINFORCE written by hand over `tfpg.envs.TextGenerationEnv`, next to `REINFORCE.fit`.

The source documents train a text policy with an episode loop: `env.reset()`, sample
a token with `tf.random.categorical(policy(state))`, `env.step(action)` until done,
then an advantage-weighted log-likelihood loss under a `tf.GradientTape`. This
script runs exactly that loop on a bundled task, and then `tfpg.algorithms.REINFORCE`
(same algorithm: moving-average baseline, sequence-sum loss, Adam, clipping at
global norm 1) from the same pre-trained policy with the same number of sampled
episodes and updates. It prints the held-out reward before and after each, the
seconds each took, and how much slower the hand-written loop is.

    python examples/reinforce_env_loop.py [--task keywords] [--updates 30] [--episodes 32]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import tfpg
from tfpg import copy_policy, pretrain
from tfpg.envs import TextGenerationEnv
from tfpg.tasks import get_task


def heldout_reward(policy, task, tokenizer, reward_fn, samples=4):
    """Mean reward of sampled completions of the held-out prompts (fixed seeds)."""
    total, count = 0.0, 0
    for batch in task.prompt_dataset(tokenizer, "heldout", batch_size=len(task.heldout)):
        for seed in range(samples):
            out = tfpg.generate(policy, batch["prompt"], task.max_new_tokens,
                                eos_id=tokenizer.eos_id, seed=seed)
            scores = reward_fn(batch["prompt"], out.token_ids, out.mask, batch)
            total, count = total + float(tf.reduce_sum(scores)), count + int(scores.shape[0])
    return total / count


def hand_written_reinforce(policy, env, updates, episodes, learning_rate, decay=0.9):
    """The source documents' loop: play episodes token by token through the env,
    then an advantage-weighted log-likelihood step under a GradientTape."""
    optimizer = keras.optimizers.Adam(learning_rate)
    # Compiling the forward pass is the one change from the documents' code: an
    # eager Keras LSTM call costs ~100 ms, a compiled one a few ms.
    next_token_logits = tf.function(lambda ids: policy(ids)[:, -1],
                                    input_signature=[tf.TensorSpec([1, None], tf.int32)])
    average, count = 0.0, 0                  # moving-average baseline (bias-corrected)
    for update in range(updates):
        sequences, prompt_lengths, rewards = [], [], []
        for _ in range(episodes):
            state, _ = env.reset()
            prompt_lengths.append(len(state))
            done = False
            while not done:
                logits = next_token_logits(state[None])                      # [1, V]
                action = tf.random.categorical(logits, num_samples=1)[0, 0]
                state, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            sequences.append(state)               # prompt + completion (EOS included)
            rewards.append(reward)                # 0 on every step but the last
        # Right-pad the episodes into one batch; mark the positions of sampled tokens.
        width = max(len(s) for s in sequences)
        tokens = np.zeros([episodes, width], np.int32)                       # [E, T]
        sampled = np.zeros([episodes, width - 1], np.float32)                # [E, T-1]
        for i, (sequence, start) in enumerate(zip(sequences, prompt_lengths)):
            tokens[i, :len(sequence)] = sequence
            sampled[i, start - 1:len(sequence) - 1] = 1.0
        baseline = average if count else 0.0
        advantages = tf.constant(np.array(rewards) - baseline, tf.float32)  # [E]
        with tf.GradientTape() as tape:
            logits = policy(tokens, padding_mask=tokens != 0)               # [E, T, V]
            log_probs = tf.gather(tf.nn.log_softmax(logits[:, :-1]), tokens[:, 1:],
                                  batch_dims=2)                              # [E, T-1]
            episode_log_probs = tf.reduce_sum(log_probs * sampled, axis=1)   # [E]
            loss = -tf.reduce_mean(advantages * episode_log_probs)
        gradients = tape.gradient(loss, policy.trainable_variables)
        gradients, _ = tf.clip_by_global_norm(gradients, 1.0)
        optimizer.apply(gradients, policy.trainable_variables)
        count += 1
        average += (1 - decay) / (1 - decay ** count) * (np.mean(rewards) - average)
        if update % 10 == 0 or update == updates - 1:
            print(f"  update {update + 1:3d}/{updates}: mean episode reward "
                  f"{np.mean(rewards):.3f}  (last: {info['completion']!r})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="keywords",
                        choices=["keywords", "arithmetic", "translate"])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per update")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = get_task(args.task, seed=args.seed)
    tokenizer = task.tokenizer()
    reward_fn = task.reward(tokenizer)
    print(f"pre-training on {len(task.pretrain_texts)} {args.task} texts "
          f"({task.pretrain_epochs} epochs) ...", flush=True)
    pretrained = pretrain(task.pretrain_texts, tokenizer, task.pretrain_epochs,
                          seed=args.seed)
    before = heldout_reward(pretrained, task, tokenizer, reward_fn)
    budget = args.updates * args.episodes
    print(f"held-out reward of the pre-trained policy: {before:.3f}; budget: "
          f"{args.updates} updates x {args.episodes} episodes = {budget} samples")

    # 1. The hand-written loop over the env.
    print("hand-written episode loop (TextGenerationEnv):")
    keras.utils.set_random_seed(args.seed)
    policy = copy_policy(pretrained)
    env = TextGenerationEnv(policy, task.train, tokenizer, reward_fn,
                            max_new_tokens=task.max_new_tokens, seed=args.seed)
    start = time.perf_counter()
    hand_written_reinforce(policy, env, args.updates, args.episodes, args.learning_rate)
    loop_seconds = time.perf_counter() - start
    loop_after = heldout_reward(policy, task, tokenizer, reward_fn)

    # 2. The same algorithm and budget with tfpg: one compiled train step per batch.
    print("tfpg.algorithms.REINFORCE.fit:")
    keras.utils.set_random_seed(args.seed)
    policy = copy_policy(pretrained)
    agent = tfpg.algorithms.REINFORCE(policy, reward_fn, baseline="moving_average",
                                      max_new_tokens=task.max_new_tokens,
                                      eos_id=tokenizer.eos_id, seed=args.seed)
    agent.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    prompts = task.prompt_dataset(tokenizer, "train", batch_size=args.episodes, shuffle=True,
                                  seed=args.seed, drop_remainder=True)
    start = time.perf_counter()
    history = agent.fit(prompts.repeat().take(args.updates), epochs=1, verbose=0)
    fit_seconds = time.perf_counter() - start
    print(f"  mean episode reward over the {args.updates} updates: "
          f"{history.history['reward'][-1]:.3f}")
    fit_after = heldout_reward(policy, task, tokenizer, reward_fn)

    print()
    print(f"REINFORCE on {args.task} ({budget} sampled completions, {args.updates} updates; "
          f"held-out reward = mean {task.reward(tokenizer).name} of 4 samples per prompt)")
    print(f"{'':<26}{'reward before':>14}{'reward after':>14}{'gain':>8}{'seconds':>9}"
          f"{'episodes/s':>12}")
    for name, after, seconds in (("hand-written env loop", loop_after, loop_seconds),
                                 ("REINFORCE.fit", fit_after, fit_seconds)):
        print(f"{name:<26}{before:>14.3f}{after:>14.3f}{after - before:>+8.3f}"
              f"{seconds:>9.1f}{budget / seconds:>12.0f}")
    print(f"the hand-written loop is {loop_seconds / fit_seconds:.0f}x slower than fit "
          f"(fit's seconds include tracing the train step)")


if __name__ == "__main__":
    main()
