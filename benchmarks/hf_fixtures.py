"""Writes the Hugging Face fixture checkpoints under `tests/data/hf/` (issue 21).

Run with the reference environment (torch + transformers 5):

    /work/trlenv/bin/python benchmarks/hf_fixtures.py [--only gpt2,llama3]

For each family: a tiny random checkpoint written by transformers (2 layers, width 64,
float32 safetensors; Qwen 3 and Mistral in bfloat16, and `qwen2_bf16` the Qwen 2
weights rounded to bfloat16), a byte-level
BPE tokenizer of a few hundred tokens trained with `tokenizers` using that family's
real pre-tokenizer (Gemma: a SentencePiece BPE model with byte fallback, converted by
transformers, as real Gemma checkpoints ship both), a typical chat template of the
family, and what transformers computes on them (`reference.npz`):

* `corpus_ids` / `corpus_offsets`: transformers' ids (`tokenizer(text)["input_ids"]`,
  the checkpoint's own special-token policy) of every string of the torture corpus
  (`tests/data/hf/corpus.json`, made by `torture_corpus()`), flattened;
* `batch_ids` / `batch_mask` / `logits`: four prompts left-padded, and the float32
  logits transformers gives for them (positions from the mask, as `generate` does);
* `greedy`: transformers' greedy `generate` of 8 new tokens from that batch (the ids
  tfpg never samples, pad and BOS, suppressed as tfpg does; after EOS the pad id).

`qwen3` and `mistral` are saved in bfloat16 (their reference: transformers' float32
forward on the rounded weights); `qwen3` shares Qwen 2's tokenizer (no corpus ids of
its own). Mistral's tokenizer is Llama 2 style SentencePiece (a dummy prefix space).

The tests (`tests/test_hf_checkpoints.py`, `tests/test_hf_tokenizer.py`) check tfpg
against these values without torch.
"""

import argparse
import io
import json
import os
import random
import shutil
import sys
import unicodedata

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "hf")
SEED = 21
MAX_NEW_TOKENS = 8
PROMPTS = ["Q: What is 3+4?\nA:", "I'M SURE it's fine", "The 12345 cats", "你好 café"]

# ------------------------------------------------------------------ corpus

SPECIAL_TEXTS = ["<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>",
                 "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<start_of_turn>",
                 "<end_of_turn>", "<s>", "</s>", "[INST]", "[/INST]",
                 "<|reserved_special_token_0|>", "<|im_start|>user\nhi<|im_end|>\n",
                 "<start_of_turn>model\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                 " <|endoftext|> ", "x<|eot_id|>y", "<|endoftext|><|endoftext|>"]

WORDS = ["the", "The", "THE", "cat", "sat", "on", "mat", "hello", "Hello", "world", "a", "I",
         "Answer", "question", "tokenizer", "policy", "gradient", "reward", "café", "naïve",
         "Ångström", "façade", "über", "résumé", "jalapeño", "São", "Zürich", "ÉCOLE"]

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]

ATOMS = (
    # digit runs, numbers with separators
    [str(10 ** n + 23 * n)[: n + 1] for n in range(20)]
    + ["1234567890", "12345678901234567890", "3.14159", "1,000,000", "-42", "+7", "0x1F",
       "1e-5", "2026-12-05", "12:30:45", "v1.2.3", "x=1234567890", "a1b22c333d4444",
       "٣٤٥", "１２３", "½", "²"]
    # contractions, both cases
    + [w + c for w in ("I", "you", "we", "they", "it", "he", "don", "can", "she")
       for c in CONTRACTIONS]
    + [w.upper() + c.upper() for w in ("I", "you", "we", "they", "it") for c in CONTRACTIONS]
    + ["I'M SURE", "YOU'RE", "DON'T", "l'amour", "rock 'n' roll", "'tis", "o'clock",
       "''", "'", "' s", "it 's", "I'm", "ma'am", "Y'ALL'D'VE"]
    # whitespace around newlines, tabs, carriage returns
    + ["a \n b", "a  \n\n  b", "\n", "\n\n\n", "   ", " ", "\t", "a\t\tb", "\r\n", " \r\n ",
       "x \t\n\ty", "end.   ", "   start", "line1\nline2\n", "  \n", "\n  ", " \n \n ",
       "\t\n", "a\u00a0b", "a\u3000b", "\u2003em"]
    # CJK, emoji and other multi-byte text
    + ["你好世界", "日本語のテキスト", "한국어 문장", "中文，标点。", "Ελληνικά", "русский текст",
       "עברית", "العربية", "हिन्दी", "ไทย", "👍", "👨‍👩‍👧", "🇫🇷", "😀😀😀", "🤖 robot",
       "∑∫∂", "→←↑", "€100", "£5", "¥", "©®™"]
    # accents, composed and not (NFC normalizers)
    + ["e\u0301", "cafe\u0301", "A\u030a", "ﬁne", "Ⅻ", "ﬀ", "ǅ", "ß", "İstanbul", "ŉ"]
    # control characters and invisible ones
    + ["\x00", "\x07", "\x1b[31mred\x1b[0m", "\u200b", "\ufeff", "\u2028", "\x7f", "a\x0cb",
       "\x0b", "\u0085", "zero\u200dwidth"]
    # code and markup
    + ["def f(x):\n    return x**2\n", "if (a && b) { c++; }", "{\"key\": [1, 2, 3]}",
       "https://example.com/a?b=c&d=e", "<div class=\"x\">", "$ ls -la ~/", "x += 1  # add",
       "    indented", "\tTabbed", "Q: What is 3+4?\nA: 46", "2+2=4", "5 * 6 = 30"]
    + SPECIAL_TEXTS + WORDS)

SEPARATORS = ["", " ", "  ", "\n", " \n", "\n ", "\t", "\n\n", "   \n  ", ", ", ". ", "'",
              "\r\n", " \t "]


def torture_corpus(size=2200):
    """The torture corpus: every atom alone, then `size - len(ATOMS)` deterministic
    joins of 1-4 atoms with separators (whitespace runs, newlines, tabs, punctuation)."""
    rng = random.Random(SEED)
    corpus = list(ATOMS)
    while len(corpus) < size:
        parts = [rng.choice(ATOMS) for _ in range(rng.randint(1, 4))]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(SEPARATORS) + part
        if rng.random() < 0.2:
            text = rng.choice(SEPARATORS) + text
        if rng.random() < 0.2:
            text += rng.choice(SEPARATORS)
        corpus.append(text)
    return corpus


def training_text():
    """Text the tiny vocabularies are trained on (deterministic)."""
    rng = random.Random(SEED + 1)
    lines = []
    for _ in range(3000):
        words = [rng.choice(WORDS + ["is", "and", "of", "to", "in", "it", "that", "what",
                                     "answer", "return", "def", "print", "number"])
                 for _ in range(rng.randint(3, 10))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 100000)))
        if rng.random() < 0.2:
            words.insert(0, rng.choice(["I'm", "it's", "don't", "you're", "we'll", "Q:", "A:"]))
        lines.append(" ".join(words) + rng.choice([".", "?", "!", "", ":"]))
    lines += ["你好世界 中文 日本語", "def f(x):\n    return x", "    indented code\n"] * 20
    return lines


# ------------------------------------------------------------------ tokenizers

def byte_level_bpe(pre_tokenizer, specials, vocab_size, normalizer=None):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `training_text()`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(training_text(), trainer)
    tokenizer.add_special_tokens(specials)
    return tokenizer


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_then_bytes(pattern):
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def gpt2_tokenizer():
    from tokenizers import pre_tokenizers, processors
    tok = byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"],
                         380)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def llama3_tokenizer(eot):
    from tokenizers import processors
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>"] + (["<|eot_id|>"] if eot else [])
    tok = byte_level_bpe(split_then_bytes(LLAMA3_PATTERN), specials, 380)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", bos)])])
    return tok


def qwen2_tokenizer():
    from tokenizers import normalizers
    return byte_level_bpe(split_then_bytes(QWEN2_PATTERN),
                          ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 380,
                          normalizer=normalizers.NFC())


def gemma_sentencepiece(directory):
    """Trains a Gemma-style SentencePiece BPE model (byte fallback, digits split, no
    dummy prefix, pad 0 / eos 1 / bos 2 / unk 3) into `directory/tokenizer.model`."""
    _sentencepiece(directory, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
                   split_by_whitespace=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                   pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                   unk_piece="<unk>",
                   user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])


def mistral_sentencepiece(directory):
    """Trains a Llama 2 / Mistral-style SentencePiece BPE model (byte fallback, digits
    split, a dummy prefix space, unk 0 / <s> 1 / </s> 2, no pad)."""
    _sentencepiece(directory, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2,
                   pad_id=-1)


def _sentencepiece(directory, **options):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=model, vocab_size=420,
        model_type="bpe", byte_fallback=True, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        character_coverage=1.0, minloglevel=2, **options)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())


# ------------------------------------------------------------------ templates

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")

# meta-llama/Llama-3.2-*-Instruct (renders tools).
LLAMA32_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen/Qwen2.5-*-Instruct (renders tools).
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# mistralai/Mistral-7B-Instruct-v0.2 (no system role).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}")

# google/gemma-*-it (Gemma 1 and 2: no system role).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
    "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\\n'}}{% endif %}")


# ------------------------------------------------------------------ checkpoints

def randomize(model, torch):
    """Weights of a size that makes logits (and greedy choices) far from ties: the
    transformers initialisation (std 0.02, norms at 1) gives near-uniform logits."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=generator) * 0.15)


BFLOAT16 = ("qwen3", "mistral")
SHARED_TOKENIZER = ("qwen3", "gemma2", "gemma3_text")
EXTRA = ("gemma2", "gemma3_text")


def family_specs():
    """name -> (model class name, config kwargs, tokenizer builder, tokenizer kwargs,
    chat template or None)."""
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    return {
        "gpt2": ("GPT2", dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=128,
                              layer_norm_epsilon=1e-5),
                 gpt2_tokenizer, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      tokenizer_class="GPT2Tokenizer"), CHATML_TEMPLATE),
        "llama3": ("Llama", dict(common, rms_norm_eps=1e-5, max_position_embeddings=131072,
                                 tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                  "factor": 32.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 8192}),
                   lambda: llama3_tokenizer(eot=True),
                   dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                        tokenizer_class="PreTrainedTokenizerFast"), LLAMA32_TEMPLATE),
        "llama3_noeot": ("Llama", dict(common, rms_norm_eps=1e-5, max_position_embeddings=8192,
                                       tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default",
                                                        "rope_theta": 500000.0}),
                         lambda: llama3_tokenizer(eot=False),
                         dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                              tokenizer_class="PreTrainedTokenizerFast"), None),
        "qwen2": ("Qwen2", dict(common, rms_norm_eps=1e-6, max_position_embeddings=32768,
                                tie_word_embeddings=True, use_sliding_window=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
                  qwen2_tokenizer, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        tokenizer_class="Qwen2Tokenizer"), QWEN25_TEMPLATE),
        # Saved in bfloat16 (their reference logits: transformers' on the rounded
        # weights, in float32). Qwen 3 shares Qwen 2's tokenizer and template.
        "qwen3": ("Qwen3", dict(common, head_dim=16, rms_norm_eps=1e-6,
                                max_position_embeddings=40960, tie_word_embeddings=True,
                                use_sliding_window=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
                  qwen2_tokenizer, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        tokenizer_class="Qwen2Tokenizer"), QWEN25_TEMPLATE),
        "mistral": ("Mistral", dict(common, head_dim=16, rms_norm_eps=1e-5,
                                    max_position_embeddings=32768, sliding_window=None,
                                    tie_word_embeddings=False,
                                    rope_parameters={"rope_type": "default",
                                                     "rope_theta": 1e6}),
                    None, dict(tokenizer_class="LlamaTokenizer"), MISTRAL_TEMPLATE),
        # Not committed (the fixtures' size): written where --root says, e.g. by
        # benchmarks/hf_compat.py --extra. Gemma's tokenizer; Gemma 2 with a sliding
        # window shorter than the prompts and soft-capping, Gemma 3 text with its
        # default layer types (both local below 6 layers).
        "gemma2": ("Gemma2", dict(common, head_dim=16, rms_norm_eps=1e-6,
                                  max_position_embeddings=8192, query_pre_attn_scalar=16,
                                  hidden_activation="gelu_pytorch_tanh", sliding_window=4,
                                  final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
                   None, dict(tokenizer_class="GemmaTokenizer"), GEMMA_TEMPLATE),
        "gemma3_text": ("Gemma3Text", dict(common, head_dim=16, rms_norm_eps=1e-6,
                                           max_position_embeddings=8192, sliding_window=4,
                                           query_pre_attn_scalar=16,
                                           hidden_activation="gelu_pytorch_tanh"),
                        None, dict(tokenizer_class="GemmaTokenizer"), GEMMA_TEMPLATE),
        "gemma": ("Gemma", dict(common, head_dim=16, num_key_value_heads=1, rms_norm_eps=1e-6,
                                max_position_embeddings=8192,
                                hidden_activation="gelu_pytorch_tanh"),
                  None, dict(tokenizer_class="GemmaTokenizer"), GEMMA_TEMPLATE),
    }


def save_tokenizer(name, directory, builder, tok_kwargs, template):
    """Writes the tokenizer files with transformers (5: tokenizer.json + config)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if builder is None:      # SentencePiece model, converted by transformers
        (mistral_sentencepiece if name == "mistral" else gemma_sentencepiece)(directory)
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": tok_kwargs["tokenizer_class"],
                       "add_bos_token": True}, f)
        hf = AutoTokenizer.from_pretrained(directory)
    else:
        tok_kwargs = dict(tok_kwargs)
        tok_kwargs.pop("tokenizer_class")
        hf = PreTrainedTokenizerFast(tokenizer_object=builder(), **tok_kwargs)
    if template is not None:
        hf.chat_template = template
    hf.save_pretrained(directory)
    # Where the tokenizer was read from is no part of a checkpoint (an absolute path).
    _set_json(os.path.join(directory, "tokenizer_config.json"), drop=("vocab_file", "is_local",
                                                                       "local_files_only"))
    if builder is not None and tok_kwargs.get("bos_token") == "<|endoftext|>":
        _set_json(os.path.join(directory, "tokenizer_config.json"),
                  tokenizer_class="GPT2Tokenizer", add_bos_token=False)
    elif builder is not None:
        _set_json(os.path.join(directory, "tokenizer_config.json"),
                  tokenizer_class={"llama3": "PreTrainedTokenizerFast",
                                   "llama3_noeot": "PreTrainedTokenizerFast",
                                   "qwen2": "Qwen2Tokenizer",
                                   "qwen3": "Qwen2Tokenizer"}[name])
    return AutoTokenizer.from_pretrained(directory)


def _set_json(path, drop=(), **values):
    with open(path) as f:
        data = json.load(f)
    data.update(values)
    for key in drop:
        data.pop(key, None)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def special_ids(hf):
    """(pad, bos, eos) as tfpg takes them: pad falls back to EOS; bos only where the
    checkpoint prepends it."""
    probe = hf("a")["input_ids"]
    plain = hf("a", add_special_tokens=False)["input_ids"]
    bos = probe[0] if len(probe) > len(plain) and probe[0] != plain[0] else None
    eos = hf.eos_token_id
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos
    return pad, bos, eos


def reference_values(model, hf, corpus, torch):
    pad, bos, eos = special_ids(hf)
    ids = [hf(text)["input_ids"] for text in corpus]
    encoded = [hf(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, encoded))
    batch = np.full([len(encoded), width], pad, np.int64)
    mask = np.zeros([len(encoded), width], np.int64)
    for row, e in enumerate(encoded):
        batch[row, width - len(e):] = e
        mask[row, width - len(e):] = 1
    batch_t, mask_t = torch.tensor(batch), torch.tensor(mask)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=batch_t, attention_mask=mask_t,
                       position_ids=positions).logits.float().numpy()
        suppress = sorted({i for i in (pad, bos) if i is not None and i != eos})
        out = model.generate(input_ids=batch_t, attention_mask=mask_t, do_sample=False,
                             max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0,
                             pad_token_id=pad, eos_token_id=eos,
                             suppress_tokens=suppress or None)
    greedy = out[:, width:].numpy()
    greedy = np.pad(greedy, [(0, 0), (0, MAX_NEW_TOKENS - greedy.shape[1])],
                    constant_values=pad)
    # The smallest gap between the two best logits of a greedy step: how far from a tie.
    top2 = np.sort(logits[mask.astype(bool)], axis=-1)[:, -2:]
    return dict(corpus_ids=np.concatenate([np.asarray(i, np.int32) for i in ids]),
                corpus_offsets=np.cumsum([0] + [len(i) for i in ids]).astype(np.int32),
                batch_ids=batch.astype(np.int32), batch_mask=mask.astype(np.int32),
                logits=logits.astype(np.float32), greedy=greedy.astype(np.int32),
                special_ids=np.asarray([-1 if i is None else i for i in (pad, bos, eos)],
                                       np.int32)), float(np.min(top2[:, 1] - top2[:, 0]))


def write_family(name, spec, corpus, torch, transformers):
    model_class, config_kwargs, builder, tok_kwargs, template = spec
    directory = os.path.join(ROOT, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    hf = save_tokenizer(name, directory, builder, tok_kwargs, template)
    pad, bos, eos = special_ids(hf)
    config = getattr(transformers, model_class + "Config")(
        vocab_size=len(hf), bos_token_id=hf.bos_token_id, eos_token_id=eos,
        pad_token_id=hf.pad_token_id, **config_kwargs)
    torch.manual_seed(SEED)
    model_cls = {"GPT2": "GPT2LMHeadModel", "Gemma3Text": "Gemma3ForCausalLM"}.get(
        model_class, model_class + "ForCausalLM")
    model = getattr(transformers, model_cls)(config).eval()
    randomize(model, torch)
    if name in BFLOAT16:
        model.to(torch.bfloat16).save_pretrained(directory)
        # The reference is transformers' float32 forward on the weights as stored,
        # read back (model.to() would also round the rope frequencies it holds).
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32).eval()
    else:
        model.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    values, gap = reference_values(model, hf, corpus, torch)
    if name in SHARED_TOKENIZER:    # its corpus ids are those of the family it shares
        del values["corpus_ids"], values["corpus_offsets"]
    np.savez_compressed(os.path.join(directory, "reference.npz"), **values)
    if name == "qwen2":     # qwen2_bf16: the same weights rounded, tests/test_hf_export.py
        write_bf16(directory, model, hf, corpus, torch, transformers)
    print(f"{name:14s} vocab {len(hf):4d}  pad/bos/eos {pad}/{bos}/{eos}  "
          f"min top-2 gap {gap:.3f}  files {sorted(os.listdir(directory))}")


def write_bf16(source, model, hf, corpus, torch, transformers):
    """`qwen2_bf16`: the Qwen 2 weights rounded to bfloat16 and saved so; the reference
    logits are transformers' on those weights computed in float32."""
    directory = os.path.join(ROOT, "qwen2_bf16")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    model.to(torch.bfloat16).save_pretrained(directory)
    for name in os.listdir(source):
        if name.startswith("tokenizer") or name.endswith(".jinja") or name.startswith("gen"):
            shutil.copy(os.path.join(source, name), directory)
    upcast = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32).eval()
    values, _ = reference_values(upcast, hf, PROMPTS, torch)
    del values["corpus_ids"], values["corpus_offsets"]
    np.savez_compressed(os.path.join(directory, "reference.npz"), **values)
    model.to(torch.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated family names (default: all but "
                        f"{', '.join(EXTRA)})")
    parser.add_argument("--root", default=ROOT, help="where to write (default tests/data/hf)")
    args = parser.parse_args(argv)
    write(args.root, args.only.split(",") if args.only else None)
    return 0


def write(root, names=None):
    """Writes the fixtures `names` (default: all but EXTRA) under `root`."""
    global ROOT
    ROOT = root
    import torch
    import transformers
    torch.set_num_threads(1)
    os.makedirs(ROOT, exist_ok=True)
    corpus = torture_corpus()
    with open(os.path.join(ROOT, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=0)
        f.write("\n")
    specs = family_specs()
    for name in names or [n for n in specs if n not in EXTRA]:
        write_family(name, specs[name], corpus, torch, transformers)


if __name__ == "__main__":
    sys.exit(main())
