"""Chat templates and conversational data (issue 21, item 3).

Rendering is checked against what transformers 5.25 rendered for the committed
fixtures (`tests/data/hf/templates/`, written by `benchmarks/hf_templates.py`); no
torch or transformers here.
"""

import datetime
import glob
import json
import os

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
