import numpy as np
import pytest
import tensorflow as tf

import tfpg
import tfpg.tasks
from tfpg.envs import InvalidActionError, TextGenerationEnv

TEXTS = ["one plus one is two", "two plus one is three", "one plus two is three"]
PROMPTS = ["one plus one is", "two plus one is", "one plus two is", "two plus two is"]


@pytest.fixture(scope="module")
def tok():
    return tfpg.Tokenizer.from_texts(TEXTS + ["four"], level="word")


class Recorder:
    """A reward that records its calls and scores completions that say "three"."""

    def __init__(self, tok):
        self.three = tok.token_to_id("three")
        self.calls = []

    def __call__(self, prompt_ids, completion_ids, completion_mask, batch):
        self.calls.append((prompt_ids.numpy(), completion_ids.numpy(),
                           completion_mask.numpy(), {k: v.numpy() for k, v in batch.items()}))
        hit = tf.cast(tf.equal(completion_ids, self.three), tf.float32) * completion_mask
        return tf.reduce_max(hit, axis=1)


def make_env(tok, **options):
    reward = options.pop("reward", None) or Recorder(tok)
    options.setdefault("max_new_tokens", 3)
    return TextGenerationEnv(None, options.pop("prompts", PROMPTS), tok, reward, **options)


def test_reset_gives_the_prompt_after_bos(tok):
    env = make_env(tok, shuffle=False)
    observation, info = env.reset(seed=0)
    assert observation.dtype == np.int32 and observation.ndim == 1
    assert observation[0] == tok.bos_id
    assert observation.tolist() == tok.encode(PROMPTS[0])
    assert info == {"prompt": PROMPTS[0], "index": 0}


def test_step_appends_and_rewards_only_at_the_end(tok):
    env = make_env(tok, shuffle=False)
    observation, _ = env.reset()
    three, eos = tok.token_to_id("three"), tok.eos_id
    after, reward, terminated, truncated, info = env.step(three)
    assert after.tolist() == observation.tolist() + [three]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert "episode" not in info
    after, reward, terminated, truncated, info = env.step(np.int64(eos))
    assert after.tolist() == observation.tolist() + [three, eos]
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["completion"] == "three"
    assert info["completion_ids"].tolist() == [three, eos]
    assert info["episode"] == {"r": 1.0, "l": 2}


def test_reward_sees_the_trainer_shapes(tok):
    reward = Recorder(tok)
    env = make_env(tok, reward=reward, shuffle=False, max_new_tokens=4,
                   references=["two", "three", "three", "four"], extras={"answer": [2, 3, 3, 4]})
    env.reset(options={"index": 1})
    env.step(tok.token_to_id("four"))
    env.step(tok.eos_id)
    (prompt, completion, mask, batch), = reward.calls
    assert prompt.shape == (1, max(len(tok.encode(p)) for p in PROMPTS))
    assert prompt[0, -len(tok.encode(PROMPTS[1])):].tolist() == tok.encode(PROMPTS[1])
    assert completion.tolist() == [[tok.token_to_id("four"), tok.eos_id, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0]]
    assert batch["reference"].tolist() == [[tok.token_to_id("three")]]
    assert batch["answer"].tolist() == [3]


def test_terminated_on_eos_and_truncated_at_max_new_tokens(tok):
    env = make_env(tok, max_new_tokens=3)
    env.reset()
    assert env.step(tok.eos_id)[2:4] == (True, False)
    env.reset()
    one = tok.token_to_id("one")
    results = [env.step(one) for _ in range(3)]
    assert [r[2:4] for r in results] == [(False, False), (False, False), (False, True)]
    assert results[-1][4]["episode"]["l"] == 3
    with pytest.raises(RuntimeError, match="episode is over.*reset"):
        env.step(one)


def test_eos_none_never_terminates(tok):
    env = make_env(tok, eos_id=None, max_new_tokens=2)
    env.reset()
    assert env.step(tok.eos_id)[2:4] == (False, False)
    assert env.step(tok.eos_id)[2:4] == (False, True)


@pytest.mark.parametrize("action", [-1, 10**6, 2.0, "3", True, np.array([1, 2]),
                                    np.array(1.5), None])
def test_invalid_action_is_a_clear_error(tok, action):
    env = make_env(tok)
    env.reset()
    with pytest.raises(InvalidActionError, match="token id"):
        env.step(action)
    assert not env.action_space.contains(action)


def test_tensor_and_array_actions(tok):
    env = make_env(tok)
    env.reset()
    env.step(tf.constant(5))
    only_five = tf.one_hot([5], tok.vocabulary_size, on_value=0.0, off_value=-1e9)
    env.step(tf.random.categorical(only_five, 1)[0, 0])               # int64 tensor
    observation = env.step(np.array([[4]]))[0]
    assert observation[-1] == 4
    assert env.action_space.contains(env.action_space.sample())


def test_step_before_reset(tok):
    with pytest.raises(RuntimeError, match="reset"):
        make_env(tok).step(4)


def test_seeded_prompt_order(tok):
    def order(env, count, seed=None):
        first = env.reset(seed=seed)[1]["index"]
        return [first] + [env.reset()[1]["index"] for _ in range(count - 1)]

    a = order(make_env(tok, seed=3), 12)
    b = order(make_env(tok, seed=3), 12)
    assert a == b
    for start in (0, 4, 8):  # each pass visits every prompt once
        assert sorted(a[start:start + 4]) == [0, 1, 2, 3]
    env = make_env(tok, seed=3)
    assert order(env, 12, seed=7) == order(make_env(tok, seed=7), 12)
    assert order(env, 8, seed=3) == a[:8]
    orders = {tuple(order(make_env(tok, seed=s), 4)) for s in range(6)}
    assert len(orders) > 1
    assert order(make_env(tok, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]


def test_dataset_and_split_prompt_sets(tok):
    task = tfpg.tasks.get_task("arithmetic", seed=0, num_train=6, num_heldout=2,
                               num_pretrain=4)
    task_tok = task.tokenizer()
    env = TextGenerationEnv.from_task(task, task_tok, seed=0)
    assert env.max_new_tokens == task.max_new_tokens and env.num_prompts == 6
    observation, info = env.reset(options={"index": 0})
    assert task_tok.decode(observation) == task.train.prompts[0] == info["prompt"]
    for char in task.train.references[0]:
        env.step(task_tok.token_to_id(char))
    assert env.step(task_tok.eos_id)[1] == 1.0       # exact match with the reference
    env.reset(options={"index": 0})
    env.step(task_tok.eos_id)
    assert env.render() == f"{task.train.prompts[0]} || "

    dataset = task.prompt_dataset(task_tok, batch_size=4)     # batched, last batch of 2
    from_dataset = TextGenerationEnv(None, dataset, task_tok, task.reward(task_tok),
                                     max_new_tokens=4, shuffle=False)
    assert from_dataset.num_prompts == 6
    assert [task_tok.decode(from_dataset.reset()[0]) for _ in range(6)] == task.train.prompts
    with pytest.raises(ValueError, match="infinite"):
        TextGenerationEnv(None, dataset.repeat(), task_tok, task.reward(task_tok))


def test_bad_construction(tok):
    reward = Recorder(tok)
    with pytest.raises(ValueError, match="empty"):
        TextGenerationEnv(None, [], tok, reward)
    with pytest.raises(TypeError, match="single string"):
        TextGenerationEnv(None, "one plus", tok, reward)
    with pytest.raises(ValueError, match="max_new_tokens"):
        TextGenerationEnv(None, PROMPTS, tok, reward, max_new_tokens=0)
    with pytest.raises(ValueError, match="eos_id"):
        TextGenerationEnv(None, PROMPTS, tok, reward, eos_id=10**6)
    with pytest.raises(TypeError, match="callable"):
        TextGenerationEnv(None, PROMPTS, tok, "bleu")
    policy = tfpg.PolicyNetwork(tok.vocabulary_size + 1, embedding_dim=4, hidden_dim=4)
    with pytest.raises(ValueError, match="do not belong together"):
        TextGenerationEnv(policy, PROMPTS, tok, reward)
    with pytest.raises(ValueError, match="index"):
        make_env(tok).reset(options={"index": 99})


def test_invalid_reward_raises_or_zeroes(tok):
    def nan_reward(prompt_ids, completion_ids, completion_mask, batch):
        return tf.fill([tf.shape(completion_ids)[0]], float("nan"))

    env = TextGenerationEnv(None, PROMPTS, tok, nan_reward, max_new_tokens=1)
    env.reset()
    with pytest.raises(ValueError, match="nan"):
        env.step(4)
    env = TextGenerationEnv(None, PROMPTS, tok, nan_reward, max_new_tokens=1,
                            on_invalid_reward="zero")
    env.reset()
    assert env.step(4)[1] == 0.0


def test_hand_written_episode_loop_with_a_policy(tok):
    """The source documents' loop: sample from policy(state), step until done."""
    policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=8, hidden_dim=8)
    env = TextGenerationEnv(policy, PROMPTS, tok, Recorder(tok), max_new_tokens=4)
    for episode in range(3):
        state, _ = env.reset(seed=episode if episode == 0 else None)
        done, steps = False, 0
        while not done:
            logits = policy(state[None])[:, -1]                           # [1, V]
            action = tf.random.categorical(logits, num_samples=1)[0, 0]
            state, reward, terminated, truncated, info = env.step(action)
            done, steps = terminated or truncated, steps + 1
        assert info["episode"]["l"] == steps <= 4
        assert reward in (0.0, 1.0)
