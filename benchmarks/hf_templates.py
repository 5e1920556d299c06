"""Chat-template fixtures: conversations rendered by transformers' own
`apply_chat_template(..., tokenize=False)`, committed for tfpg's tests.

    /work/trlenv/bin/python benchmarks/hf_templates.py          # writes the fixtures
    /work/trlenv/bin/python benchmarks/hf_templates.py --check  # live: tfpg vs transformers

Needs transformers (and `tokenizers`); tfpg's side needs only jinja2. For each family
(a GPT-2 ChatML template, Llama 3.2, Qwen 2.5 with tools, Gemma, which has no system
role, Mistral, and a tokenizer_config.json with named templates) a tiny tokenizer
with the family's special tokens is saved by transformers (`save_pretrained`), and
the files it writes (`chat_template.jinja`, `tokenizer_config.json`, ...) are kept as
the family's `hf_files` in `tests/data/hf/templates/<family>.json`, with every
conversation (system / user / assistant / tool messages, tool calls, `tools=`
definitions, non-ASCII and HTML-like text), with and without
`add_generation_prompt`, and what transformers rendered (or the message of the
exception the template raised).

Llama 3.2's template reads today's date (`strftime_now`) unless `date_string` is
given: cases without it record `"today"`, the date they were rendered with, which the
test replaces by its own date.

`template_rows()` renders every committed case with transformers and with tfpg
(`tfpg.hf.chat_template`) and returns one row per family, `{"family",
"template_agreement": "k/n"}` (what `benchmarks/hf_compat.py` shows).
"""

import argparse
import datetime
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "hf", "templates")
sys.path.insert(0, os.path.join(HERE, ".."))

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt "
          "%}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Mistral-7B-Instruct-v0.2's template: the system message joins the first user turn;
# roles must alternate (raise_exception otherwise).
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""


def _trl_template(name):
    """A real model's template as TRL 1.16 ships it (trl/chat_templates/NAME.jinja)."""
    import trl
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", name + ".jinja"),
              encoding="utf-8") as f:
        return f.read()


# family -> (template source: str or dict of named templates, special tokens,
#            save_jinja_files)
def families():
    return {
        "gpt2": (CHATML, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                              unk_token="<|endoftext|>"), True),
        "llama3": (_trl_template("llama3_2"), dict(bos_token="<|begin_of_text|>",
                                                   eos_token="<|eot_id|>"), True),
        "qwen2": (_trl_template("qwen2_5"), dict(eos_token="<|im_end|>",
                                                 pad_token="<|endoftext|>"), True),
        "gemma": (_trl_template("gemma"), dict(bos_token="<bos>", eos_token="<eos>",
                                               pad_token="<pad>", unk_token="<unk>"), True),
        "mistral": (MISTRAL, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), True),
        # Older checkpoints: named templates as a list in tokenizer_config.json.
        "named": ({"default": CHATML, "tool_use": _trl_template("qwen2_5")},
                  dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), False),
    }


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Le temps qu'il fait à <ville> & ses environs",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "名前 of the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
CALC = {"type": "function", "function": {
    "name": "calc", "description": "Integer arithmetic",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}

SYSTEM = {"role": "system", "content": "You are terse.  Answer in one line."}
USER = {"role": "user", "content": "What is 3 + 4?"}
ASSISTANT = {"role": "assistant", "content": "7"}
USER2 = {"role": "user", "content": "  And <b>5 & 6</b>? Écris « vite » 🙂\n"}
TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather",
                                      "arguments": {"city": "Zürich", "unit": "celsius"}}}]}
TOOL_RESULT = {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21, \"sky\": \"☀\"}"}
WEATHER_Q = {"role": "user", "content": "Weather in Zürich?"}

CONVERSATIONS = {
    "user": [USER],
    "system_user": [SYSTEM, USER],
    "multi_turn": [SYSTEM, USER, ASSISTANT, USER2],
    "no_system_multi_turn": [USER, ASSISTANT, USER2],
    "tool_call": [WEATHER_Q, TOOL_CALL, TOOL_RESULT],
    "system_tool_call": [SYSTEM, WEATHER_Q, TOOL_CALL, TOOL_RESULT],
    "tool_message": [USER, {"role": "tool", "content": "42"}],
    "none_content": [{"role": "user", "content": "hi", "name": None}],
}
TOOLS = {None: None, "weather": [WEATHER], "weather_calc": [WEATHER, CALC]}


def cases():
    """(name, messages, tools key, add_generation_prompt, kwargs) of every case."""
    for name, messages in CONVERSATIONS.items():
        for generation in (True, False):
            for tools in ((None, "weather") if "tool" in name else (None,)):
                yield name, messages, tools, generation, {}
    yield "user", [USER, ASSISTANT, USER2], "weather_calc", True, {}
    yield "user", [SYSTEM, USER], None, True, {"date_string": "26 Jul 2024"}
    yield "user", [USER], "weather", True, {"date_string": "1 Jan 2025",
                                            "tools_in_user_message": False}


def _hf_tokenizer(template, special_tokens, directory, save_jinja_files):
    """A transformers tokenizer with these special tokens and template, saved to and
    loaded back from `directory` (so it is what a checkpoint on disk gives)."""
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    vocabulary = {"<unk>": 0, **{token: i + 1 for i, token in
                                 enumerate(sorted(set(special_tokens.values()) - {"<unk>"}))}}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template,
                                        **special_tokens)
    tokenizer.save_pretrained(directory, save_jinja_files=save_jinja_files)
    return AutoTokenizer.from_pretrained(directory)


def _saved_files(directory):
    """The files transformers wrote that a template reads ({relative name: text}),
    without tokenizer.json (the vocabulary is not part of a template)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), directory)
            if relative != "tokenizer.json":
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    files[relative.replace(os.sep, "/")] = f.read()
    return files


def _render_hf(tokenizer, messages, tools, generation, kwargs):
    """{"expected": text} or {"error": message} of transformers' rendering."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=TOOLS[tools], tokenize=False,
                                             add_generation_prompt=generation, **kwargs)
        return {"expected": text}
    except Exception as error:  # noqa: BLE001 - the template's raise_exception
        return {"error": str(getattr(error, "message", None) or error)}


def generate(out=OUT):
    """Writes `<family>.json` for every family; returns {family: number of cases}."""
    os.makedirs(out, exist_ok=True)
    counts = {}
    for family, (template, special, jinja_files) in families().items():
        with tempfile.TemporaryDirectory() as directory:
            tokenizer = _hf_tokenizer(template, special, directory, jinja_files)
            hf_files = _saved_files(directory)
        today = datetime.datetime.now().strftime("%d %b %Y")
        rows = []
        for name, messages, tools, generation, kwargs in cases():
            row = {"conversation": name, "messages": messages, "tools": tools,
                   "add_generation_prompt": generation, "kwargs": kwargs}
            row.update(_render_hf(tokenizer, messages, tools, generation, kwargs))
            if "expected" in row and today in row["expected"] and "date_string" not in kwargs:
                row["today"] = today
            rows.append(row)
        payload = {"family": family, "hf_files": hf_files, "tools": {k: v for k, v in
                                                                     TOOLS.items() if k},
                   "cases": rows}
        with open(os.path.join(out, family + ".json"), "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, ensure_ascii=False)
            f.write("\n")
        counts[family] = len(rows)
    return counts


def template_rows(out=OUT):
    """Live comparison: each committed case rendered by transformers (from the
    family's saved files) and by tfpg; one row per family with "k/n" agreeing."""
    from tfpg.hf.chat_template import ChatTemplate
    rows = []
    for name in sorted(os.listdir(out)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(out, name), encoding="utf-8") as f:
            fixture = json.load(f)
        with tempfile.TemporaryDirectory() as directory:
            for relative, text in fixture["hf_files"].items():
                path = os.path.join(directory, relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
            from transformers import AutoTokenizer
            from tokenizers import Tokenizer, models
            Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(
                os.path.join(directory, "tokenizer.json"))
            tokenizer = AutoTokenizer.from_pretrained(directory)
            template = ChatTemplate.from_hf_files(fixture["hf_files"])
            agree = 0
            for case in fixture["cases"]:
                hf = _render_hf(tokenizer, case["messages"], case["tools"],
                                case["add_generation_prompt"], case["kwargs"])
                try:
                    ours = {"expected": template.render(
                        case["messages"], case["add_generation_prompt"],
                        tools=TOOLS[case["tools"]], **case["kwargs"])}
                except ValueError as error:
                    ours = {"error": str(error)}
                agree += (ours == hf if "expected" in hf else
                          "error" in ours and hf["error"] in ours["error"])
        rows.append({"family": fixture["family"],
                     "template_agreement": f"{agree}/{len(fixture['cases'])}"})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare tfpg with transformers live instead of writing")
    args = parser.parse_args()
    if args.check:
        print(f"{'family':<10}{'templates':>12}")
        for row in template_rows():
            print(f"{row['family']:<10}{row['template_agreement']:>12}")
        return
    for family, count in generate().items():
        print(f"{family}: {count} cases -> {os.path.relpath(OUT)}/{family}.json")


if __name__ == "__main__":
    main()
