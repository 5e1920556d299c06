"""Chat templates and conversational data (issue 21, item 3).

Rendering is checked against what transformers 5.25 rendered for the committed
fixtures (`tests/data/hf/templates/`, written by `benchmarks/hf_templates.py`); no
torch or transformers here.
"""

import contextlib
import datetime
import glob
import io
import json
import os
import types

import pytest

from tfpg.hf.chat_template import ChatTemplate, NoChatTemplateError, TemplateError

TEMPLATES = os.path.join(os.path.dirname(__file__), "data", "hf", "templates")
FIXTURES = sorted(glob.glob(os.path.join(TEMPLATES, "*.json")))


def _fixture(family):
    with open(os.path.join(TEMPLATES, family + ".json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: os.path.basename(p)[:-5])
def test_every_committed_conversation_renders_as_transformers(path):
    with open(path, encoding="utf-8") as f:
        fixture = json.load(f)
    template = ChatTemplate.from_hf_files(fixture["hf_files"])
    today = datetime.datetime.now().strftime("%d %b %Y")
    rendered = errors = 0
    for case in fixture["cases"]:
        tools = fixture["tools"].get(case["tools"]) if case["tools"] else None
        call = (lambda: template.render(case["messages"], case["add_generation_prompt"],
                                        tools=tools, **case["kwargs"]))
        if "error" in case:
            with pytest.raises(ValueError) as raised:
                call()
            # One line, naming what the template's raise_exception said.
            assert case["error"] in str(raised.value) and "\n" not in str(raised.value)
            errors += 1
            continue
        expected = case["expected"]
        if "today" in case:         # rendered with strftime_now on another day
            expected = expected.replace(case["today"], today)
        assert call() == expected, (fixture["family"], case["conversation"])
        rendered += 1
    assert rendered + errors == len(fixture["cases"]) >= 20
    assert rendered >= 10


def test_fixtures_cover_the_families_and_message_kinds():
    families = {os.path.basename(p)[:-5] for p in FIXTURES}
    assert {"gpt2", "llama3", "qwen2", "gemma", "mistral", "named"} <= families
    qwen = _fixture("qwen2")
    texts = [c["expected"] for c in qwen["cases"] if "expected" in c]
    assert any("<tool_call>" in t and "<tool_response>" in t and "# Tools" in t
               for t in texts)                               # tools=, calls, results
    llama = _fixture("llama3")
    assert any("today" in c for c in llama["cases"])          # strftime_now was used
    assert any('"description": "Le temps qu\'il fait à <ville> & ses environs"'
               in c["expected"] for c in llama["cases"])      # tojson: no \u, no &amp;
    gemma = _fixture("gemma")
    assert "System role not supported" in {c.get("error") for c in gemma["cases"]}


def test_raise_exception_is_one_line_value_error():
    template = ChatTemplate.from_hf_files(_fixture("gemma")["hf_files"])
    with pytest.raises(TemplateError, match=r"^chat template \(chat_template.jinja\): "
                                            r"System role not supported$"):
        template.render([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])


def test_sources_named_templates_and_bad_templates(tmp_path):
    named = ChatTemplate.from_hf_files(_fixture("named")["hf_files"])
    assert sorted(named.source) == ["default", "tool_use"]
    messages = [{"role": "user", "content": "hi"}]
    assert named.render(messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "# Tools" in named.render(messages, tools=[{"name": "f"}])     # tool_use
    # transformers 5's layout of named templates: chat_templates/NAME.jinja.
    files = {"chat_template.jinja": "A{{ messages[0].content }}",
             "chat_templates/tool_use.jinja": "T{{ tools | length }}"}
    split = ChatTemplate.from_hf_files(files)
    assert (split.render(messages), split.render(messages, tools=[{}])) == ("Ahi", "T1")
    assert ChatTemplate.from_hf_files({"tokenizer_config.json": "{}"}) is None
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %")
    with pytest.raises(TemplateError, match=r"t.jinja: not a valid Jinja template \(line 1"):
        ChatTemplate.from_file(path)
    with pytest.raises(FileNotFoundError, match="missing.jinja: chat template file not found"):
        ChatTemplate.from_file(tmp_path / "missing.jinja")
    # The sandbox: no attribute access into Python internals.
    escape = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        escape.render(messages)
    for bad, match in (([], "empty"), ([{"content": "x"}], "message 1 has no string 'role'"),
                       ([{"role": "user"}], "message 1 \\(user\\) has no 'content'"),
                       ("hi", "must be a list of messages")):
        with pytest.raises(ValueError, match=match):
            split.render(bad)


def test_reply_text_continues_a_conversation():
    qwen = ChatTemplate.from_hf_files(_fixture("qwen2")["hf_files"])
    # The policy's turn ended with <|im_end|>; the rest of the template follows.
    assert qwen.reply_text("42", role="tool", end_token="<|im_end|>") == (
        "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    first = [{"role": "user", "content": "q"}]
    whole = first + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "r"}]
    assert qwen.render(first) + "a<|im_end|>" + qwen.reply_text("r", end_token="<|im_end|>") \
        == qwen.render(whole)
    gemma = ChatTemplate.from_hf_files(_fixture("gemma")["hf_files"])
    # Without its end token the policy's turn still gets the template's end of turn.
    assert gemma.reply_text("r") == ("<end_of_turn>\n<start_of_turn>user\nr<end_of_turn>\n"
                                     "<start_of_turn>model\n")


# ---------------------------------------------------------------- tokenizers and data

CHATML = _fixture("gpt2")["hf_files"]["chat_template.jinja"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 2 ="}]


@pytest.fixture(scope="module")
def hub_tokenizer():
    """A tiny KerasHub GPT-2 tokenizer, as a Hugging Face GPT-2 checkpoint would give
    it (its files carry the ChatML template)."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import keras_hub
    from keras_hub_models import bpe_vocabulary
    import tfpg
    vocabulary, merges = bpe_vocabulary(["<|endoftext|>"])
    tok = tfpg.KerasHubTokenizer(keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary,
                                                                merges=merges))
    tok.hf_files = {"chat_template.jinja": CHATML, "tokenizer_config.json": json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})}
    return tok


def test_apply_chat_template_on_tfpg_tokenizers(hub_tokenizer, tmp_path):
    import tfpg
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1 + 2 =<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert hub_tokenizer.apply_chat_template(CHAT) == expected
    assert hub_tokenizer.apply_chat_template(CHAT, add_generation_prompt=False) == \
        expected[:-len("<|im_start|>assistant\n")]
    word = tfpg.Tokenizer.from_texts(["a b"])
    with pytest.raises(NoChatTemplateError, match=r"^Tokenizer has no chat template; give one "
                                                  r"with --chat-template F.jinja"):
        word.apply_chat_template(CHAT)
    path = tmp_path / "t.jinja"
    path.write_text("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n"
                    "{% endfor %}")
    # A template set on a tokenizer gets its special tokens and survives save / load.
    hub_copy = tfpg.KerasHubTokenizer(hub_tokenizer.hub_tokenizer)
    hub_copy.chat_template = str(path)
    assert hub_copy.apply_chat_template(CHAT[1:]) == "<|endoftext|>[user] 1 + 2 =\n"
    hub_copy.save(tmp_path / "hub.json")
    assert tfpg.KerasHubTokenizer.load(tmp_path / "hub.json").apply_chat_template(
        CHAT[1:]) == "<|endoftext|>[user] 1 + 2 =\n"
    word.chat_template = path                          # no special tokens: no BOS text
    assert word.apply_chat_template(CHAT[1:]) == "[user] 1 + 2 =\n"
    word.save(tmp_path / "word.json")
    assert tfpg.Tokenizer.load(tmp_path / "word.json").chat_template.source == \
        path.read_text()


def test_prompt_dataset_renders_message_lists(hub_tokenizer):
    import tfpg
    chats = [CHAT, [{"role": "user", "content": "hello world!"}]]
    batch = next(iter(tfpg.data.prompt_dataset(chats, hub_tokenizer, batch_size=2)))
    texts = [hub_tokenizer.apply_chat_template(c) for c in chats]
    # Encoded as transformers does (add_special_tokens=False): no BOS added.
    rows = hub_tokenizer.encode(texts, add_bos=False)
    width = max(map(len, rows))
    assert batch["prompt"].numpy().tolist() == [
        [hub_tokenizer.pad_id] * (width - len(r)) + r for r in rows]
    assert batch["prompt_mask"].numpy().sum(axis=1).tolist() == [len(r) for r in rows]
    assert [json.loads(m) for m in batch["prompt_messages"].numpy()] == chats
    word = tfpg.Tokenizer.from_texts(["<|im_start|>user hello", "world!<|im_end|>"])
    with pytest.raises(ValueError, match=r"^prompt 0: Tokenizer has no chat template; "
                                         r"give one with --chat-template"):
        tfpg.data.prompt_dataset(chats, word)
    with pytest.raises(TypeError, match="chat_template must be a ChatTemplate, the path"):
        word.chat_template = 3
    with pytest.raises(ValueError, match="prompt 1 is a string but prompt 0 is a list"):
        tfpg.data.prompt_dataset([CHAT, "hi"], hub_tokenizer)
    with pytest.raises(ValueError, match="prompt 1: message 1 has no string 'role'"):
        tfpg.data.prompt_dataset([CHAT, [{"content": "x"}]], hub_tokenizer)


def test_jsonl_reads_trl_conversational_prompts(tmp_path):
    from tfpg.data import DataError, read_file
    path = tmp_path / "chat.jsonl"
    lines = [{"prompt": CHAT, "reference": "3", "id": 1},
             {"prompt": [{"role": "user", "content": "2 + 2 ="}], "reference": "4", "id": 2}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert read_file(path) == {"prompt": [CHAT, lines[1]["prompt"]], "reference": ["3", "4"],
                               "id": [1, 2]}
    bad = {
        '{"prompt": [{"role": "user", "content": "x"}, "hi"]}':
            "'prompt' is not a conversation (message 2 must be an object",
        '{"prompt": [{"role": "user"}]}':
            "'prompt' is not a conversation (message 1 (user) has no 'content')",
        '{"prompt": [{"role": 3, "content": "x"}]}':
            "'prompt' is not a conversation (message 1 has no string 'role')",
        '{"prompt": []}': "'prompt' is not a conversation (the conversation is empty",
        '{"prompt": {"role": "user"}}': "'prompt' must be a string or a list of",
        '{"prompt": "plain"}': "'prompt' is a string but line 1's is a list of messages",
    }
    for line, message in bad.items():
        path.write_text(json.dumps({"prompt": CHAT}) + "\n" + line + "\n")
        with pytest.raises(DataError) as raised:
            read_file(path)
        assert str(raised.value).startswith(f"{path}:2: {message}"), str(raised.value)
        assert "\n" not in str(raised.value)
    path.write_text(json.dumps({"prompt": CHAT}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: prompt messages have \d+ characters, "
                                        r"more than 20 .*conversations are never cut"):
        read_file(path, max_prompt_chars=20, truncate="left")


def test_python_reward_gets_trl_shaped_conversations(hub_tokenizer):
    import tensorflow as tf
    import tfpg
    seen = {}

    def reward(prompts, completions, reference, **kwargs):
        seen.update(prompts=prompts, completions=completions, reference=reference,
                    keys=sorted(kwargs))
        return [float(len(c[0]["content"])) for c in completions]

    chats = [CHAT, [{"role": "user", "content": "hello"}]]
    batch = next(iter(tfpg.data.prompt_dataset(chats, hub_tokenizer, references=["3", "x"],
                                               extras={"id": [1, 2]}, batch_size=2)))
    ids = [hub_tokenizer.encode(t, add_bos=False) for t in ("the cat", "a dog ran")]
    width = max(map(len, ids)) + 1
    rows = [r + [hub_tokenizer.eos_id] * (width - len(r)) for r in ids]
    mask = [[1.0] * (len(r) + 1) + [0.0] * (width - len(r) - 1) for r in ids]
    values = tfpg.rewards.PythonReward(reward, tokenizer=hub_tokenizer)(
        batch["prompt"], tf.constant(rows), tf.constant(mask), batch)
    assert values.numpy().tolist() == [7.0, 9.0]
    assert seen["prompts"] == chats
    assert seen["completions"] == [[{"role": "assistant", "content": "the cat"}],
                                   [{"role": "assistant", "content": "a dog ran"}]]
    # The messages are the prompt, not a column of their own.
    assert seen["keys"] == ["id", "prompt_mask", "reference_mask"]


# ------------------------------------------------------------- the command line, exports

CHATS = [[{"role": "user", "content": f"{a} + {b} ="}] for a, b in
         ((1, 2), (3, 4), (2, 2), (4, 1), (1, 1), (3, 3))]


HF_GPT2 = os.path.join(os.path.dirname(__file__), "data", "hf", "gpt2")


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """`tfpg train --model tests/data/hf/gpt2 --train-file chat.jsonl --chat-template
    chatml.jinja` (conversational; 1 epoch of 1 step), `tfpg generate` on its export
    and the bad-input cases, in this process: (directory, [(status, stdout, stderr)])."""
    import shutil
    from tfpg.run import cli
    root = tmp_path_factory.mktemp("chat")
    (root / "chatml.jinja").write_text(CHATML)
    with open(root / "chat.jsonl", "w") as f:
        for chat in CHATS:
            a, b = chat[0]["content"][:-2].split(" + ")
            f.write(json.dumps({"prompt": chat, "reference": str(int(a) + int(b))}) + "\n")
    (root / "plain.jsonl").write_text('{"prompt": "1 + 2 =", "reference": "3"}\n' * 4)
    bare = root / "no_template"          # the checkpoint without its template
    shutil.copytree(HF_GPT2, bare)
    os.remove(bare / "chat_template.jinja")
    train = ["train", "--train-file", str(root / "chat.jsonl"), "--algorithm", "reinforce",
             "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
             "--max-new-tokens", "3", "--logdir", str(root / "logs")]
    # The transformers GPT-2 checkpoint, its template given again by --chat-template
    # (the flag's path; the checkpoint's own is the same ChatML).
    cases = [train + ["--model", HF_GPT2, "--chat-template", str(root / "chatml.jinja"),
                      "--output", str(root / "out/model")],
             ["generate", str(root / "out/model"), "3 + 4 =", "--format", "jsonl"],
             train + ["--model", str(bare), "--output", str(root / "out/none")],
             train + ["--model", HF_GPT2, "--chat-template", str(root / "missing.jinja"),
                      "--output", str(root / "out/m")],
             ["train", "--train-file", str(root / "plain.jsonl"), "--model", str(bare),
              "--chat-template", str(root / "chatml.jinja"), "--output",
              str(root / "out/plain")]]
    results = []
    for args in cases:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(args)
        results.append(types.SimpleNamespace(returncode=status, stdout=out.getvalue(),
                                             stderr=err.getvalue()))
    return root, results


def test_cli_trains_on_conversational_jsonl_and_exports_the_template(chat_run):
    import tfpg
    root, (trained, generated, *_) = chat_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(root / "out" / "model" / "metrics.json") as f:
        metrics = json.load(f)
    info = tfpg.export.read_export_info(root / "out" / "model")
    assert info["chat_template"]["template"] == CHATML
    assert info["chat_template"]["special_tokens"]["eos_token"] == "<|endoftext|>"
    gen = tfpg.load(root / "out" / "model")
    samples = metrics["samples"]
    assert samples and all(s["prompt"] in CHATS for s in samples)
    # The export renders and encodes conversations as training did: its greedy
    # completions are the run's own held-out ones.
    assert gen.generate([s["prompt"] for s in samples]) == [s["completion"] for s in samples]
    rendered = [gen.chat_template.render(s["prompt"]) for s in samples]
    assert gen.generate(rendered, apply_chat_template=False) == \
        [s["completion"] for s in samples]
    # A string is one user message: `tfpg generate` renders it too.
    assert generated.returncode == 0, generated.stderr[-2000:]
    expected = gen.generate([[{"role": "user", "content": "3 + 4 ="}]])
    assert [json.loads(line)["completion"] for line in generated.stdout.splitlines()] == \
        expected


def test_cli_chat_bad_input_is_one_line(chat_run):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from cli_batch import assert_usage_error
    root, (_, _, no_template, missing, plain) = chat_run
    assert_usage_error(no_template, "chat.jsonl: conversational prompts need a chat template",
                       "--chat-template F.jinja")
    assert_usage_error(missing, "--chat-template", "missing.jinja: chat template file not found")
    assert_usage_error(plain, "--chat-template renders conversational prompts")
    for name in ("none", "m", "plain"):
        assert not (root / "out" / name).exists()


def test_text_episodes_render_tool_turns_with_the_template():
    """A multi-turn episode of a conversational prompt: the env's reply (a tool's
    output) is the template's tool turn, and every context the generator sees is
    the whole conversation so far, rendered."""
    import tfpg
    from tfpg.envs.multi_turn import play_text_episodes
    from tfpg.envs.tool_env import ToolEnv, calculator
    qwen = ChatTemplate.from_hf_files(_fixture("qwen2")["hf_files"])
    chat = [{"role": "user", "content": "What is 6*7?"}]
    tok = tfpg.Tokenizer.from_texts([qwen.render(chat) + "<calc>6*7</calc> 42 error:"],
                                    level="char")
    tok.chat_template = qwen
    turns = iter(["<calc>6*7</calc>", "It is 42."])
    seen = []

    def generate(contexts):
        seen.append(list(contexts))
        return [next(turns) for _ in contexts]

    env = ToolEnv({"calc": calculator}, tok)
    episodes = play_text_episodes(generate, env, [chat], max_turns=3)
    assert episodes[0]["turns"] == [("policy", "<calc>6*7</calc>"), ("env", "42"),
                                    ("policy", "It is 42.")]
    assert seen == [[qwen.render(chat)], [qwen.render(chat + [
        {"role": "assistant", "content": "<calc>6*7</calc>"},
        {"role": "tool", "content": "42"}])]]
