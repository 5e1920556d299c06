"""Chat templates, rendered with jinja2 exactly as transformers 5 renders them.

A chat template is a Jinja program that turns a conversation (a list of
`{"role", "content"}` messages, optionally with `tool_calls`, tool definitions and
documents) into the one string the model was trained on. `ChatTemplate.render`
runs it the way `PreTrainedTokenizerBase.apply_chat_template(..., tokenize=False)`
does (transformers 5.25, `utils/chat_template_utils.py`):

* a jinja2 `ImmutableSandboxedEnvironment` (templates come from the Hub: they are
  untrusted code) with `trim_blocks=True`, `lstrip_blocks=True` and the
  `loopcontrols` extension (`{% break %}`, `{% continue %}`); the
  `{% generation %}` tag (assistant masks) renders its body unchanged;
* globals `raise_exception(message)` (an error: here a one-line `ValueError`),
  `strftime_now(format)` (the local time now), `dict` and a `namespace` that refuses
  underscore names; the `tojson` filter is `json.dumps` with `ensure_ascii=False`
  and the `indent` / `separators` / `sort_keys` options (Jinja's own escapes HTML);
* the variables `messages`, `tools`, `documents`, `add_generation_prompt`, the
  tokenizer's named special tokens (`bos_token`, `eos_token`, `unk_token`,
  `pad_token`, ... and any other `*_token` of `tokenizer_config.json`), then the
  caller's keyword arguments (which win, e.g. `date_string=`);
* messages are copied to plain JSON data, keys whose value is None are dropped, and
  `reasoning_content` / `thinking` / `reasoning` are aliased as transformers does.

Where templates come from (`from_hf_files`): `chat_template.jinja` (transformers 5),
else the `"chat_template"` of `tokenizer_config.json` (older checkpoints): a string,
or a list of `{"name", "template"}` (the "default" one is used, "tool_use" when tools
are given). `from_file` reads a template the user passes (`--chat-template F.jinja`).

Rendered chats are encoded without adding special tokens (transformers encodes with
`add_special_tokens=False`): the template writes `bos_token` itself where the model
wants one (`encode_chat`).
"""

import datetime
import functools
import json
import os
from collections.abc import Mapping

__all__ = ["ChatTemplate", "TemplateError", "NoChatTemplateError", "apply_chat_template",
           "encode_chat", "is_conversation", "check_conversation"]

# The attributes transformers' `special_tokens_map` always knows (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
# Names a message's reasoning may come under; the first is what templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "chat_templates"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
HOW_TO_GIVE = "give one with --chat-template F.jinja (or tokenizer.chat_template = " \
              "tfpg.hf.chat_template.ChatTemplate.from_file('F.jinja'))"


class TemplateError(ValueError):
    """A template that does not compile, or that refuses a conversation (its
    `raise_exception`): one line."""


class NoChatTemplateError(ValueError):
    """A tokenizer without a chat template was asked to render a conversation."""


def _one_line(text):
    return " ".join(str(text).split())


@functools.lru_cache(maxsize=32)
def _compile(source):
    """The compiled jinja2 template of `source` (cached: a run renders one template
    thousands of times)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: marks assistant text for
        transformers' assistant masks; rendered as its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [],
                                          body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # json.dumps, not Jinja's filter (which escapes HTML characters).
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    class TemplateDict:
        # dict() without the type's attributes (no way out of the sandbox through it).
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # A namespace that refuses dunder / underscore attributes (CPython internals).
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a "
                    f"namespace, got {name!r}")

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    try:
        return environment.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise TemplateError(f"not a valid Jinja template (line {error.lineno}: "
                            f"{_one_line(error.message)})") from None


def _plain(value):
    """`value` rebuilt from plain JSON types (transformers' `_plain_template_data`):
    the sandbox sees no object with methods it does not know; anything else becomes
    the placeholder "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    item = getattr(value, "item", None)         # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    return f"<{type(value).__name__}>"


def is_conversation(prompt):
    """True for a prompt that is a list of messages (TRL's conversational format),
    False for a string."""
    return isinstance(prompt, (list, tuple)) and not isinstance(prompt, (str, bytes))


def check_conversation(messages):
    """Raises ValueError (one line) unless `messages` is a non-empty list of message
    dicts, each with a string "role" and a "content" (a string or a list of content
    blocks; None or missing only beside "tool_calls")."""
    if not is_conversation(messages):
        raise ValueError(f"a conversation must be a list of messages, got "
                         f"{type(messages).__name__}")
    if not messages:
        raise ValueError("the conversation is empty (give at least one message)")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {number} must be an object with 'role' and "
                             f"'content', got {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise ValueError(f"message {number} has no string 'role'")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise ValueError(f"message {number} ({message['role']}) has no 'content'")
        if content is not None and not isinstance(content, (str, list)):
            raise ValueError(f"message {number} ({message['role']}): 'content' must be a "
                             f"string or a list of content blocks, got "
                             f"{type(content).__name__}")


def _prepared(messages):
    """A fresh plain copy of one conversation as transformers hands it to the
    template: None-valued keys dropped, reasoning fields aliased."""
    check_conversation(messages)
    chat = []
    for message in _plain(list(messages)):
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS
                          if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    return chat


def _token_text(value):
    """A special token of tokenizer_config.json: a string, or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens_of_config(config):
    """The named special tokens transformers passes to a template, from a
    tokenizer_config.json (and special_tokens_map.json) dict: the standard names and
    any other `*_token` key, and the named `extra_special_tokens`."""
    tokens = {}
    for key, value in config.items():
        text = _token_text(value)
        if key.endswith("_token") and text is not None:
            tokens[key] = text
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            text = _token_text(value)
            if text is not None:
                tokens[key] = text
    return tokens


def special_tokens_of_files(hf_files, origin=None):
    """The template's special tokens of a Hugging Face tokenizer's files:
    tokenizer_config.json's, then special_tokens_map.json's (older checkpoints)."""
    return {**special_tokens_of_config(_json_file(hf_files, TOKENIZER_CONFIG_FILE, origin)),
            **special_tokens_of_config(_json_file(hf_files, SPECIAL_TOKENS_MAP_FILE, origin))}


class ChatTemplate:
    """A chat template and the special tokens it is rendered with.

    Args:
        source: str or dict. The Jinja source, or a dict name -> source of named
            templates (the list form of older tokenizer_config.json files, turned
            into a dict).
        special_tokens: dict. Name -> token text (`bos_token`, `eos_token`, ...): the
            template variables transformers takes from the tokenizer.
        origin: str. Where the template came from, for messages (a path or file
            name).

    Example:
    >>> template = ChatTemplate("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    ...                         "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}"
    ...                         "<|assistant|>{% endif %}", {"eos_token": "</s>"})
    >>> template.render([{"role": "user", "content": "hi"}])
    '<|user|>hi</s><|assistant|>'
    """

    def __init__(self, source, special_tokens=None, origin=None):
        if isinstance(source, (list, tuple)):
            source = _named_templates(source, origin)
        if isinstance(source, Mapping):
            if not source or not all(isinstance(k, str) and isinstance(v, str)
                                     for k, v in source.items()):
                raise TemplateError(f"{origin or 'chat template'}: named templates must map "
                                    "names to template strings")
            source = dict(source)
        elif not isinstance(source, str):
            raise TypeError(f"a chat template is a string (or named strings), got "
                            f"{type(source).__name__}")
        if isinstance(source, str) and not source.strip():
            raise TemplateError(f"{origin or 'chat template'}: the template is empty")
        self.source = source
        self.special_tokens = {str(k): str(v) for k, v in (special_tokens or {}).items()}
        self.origin = origin
        for text in (source.values() if isinstance(source, dict) else [source]):
            try:
                _compile(text)
            except TemplateError as error:
                raise TemplateError(f"{origin or 'chat template'}: {error}") from None

    # ------------------------------------------------------------- sources

    @classmethod
    def from_file(cls, path, special_tokens=None):
        """The template in file `path` (a .jinja file; a tokenizer_config.json is read
        for its "chat_template" and special tokens)."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: chat template file not found") from None
        except IsADirectoryError:
            raise TemplateError(f"{path}: is a directory, not a chat template file") from None
        except UnicodeDecodeError:
            raise TemplateError(f"{path}: not a UTF-8 text file") from None
        if os.path.basename(path) == TOKENIZER_CONFIG_FILE:
            template = cls.from_hf_files({TOKENIZER_CONFIG_FILE: text}, origin=path)
            if template is None:
                raise TemplateError(f"{path}: has no \"chat_template\"")
            if special_tokens is not None:
                template.special_tokens = dict(special_tokens)
            return template
        return cls(text, special_tokens, origin=path)

    @classmethod
    def from_hf_files(cls, hf_files, origin=None):
        """The template of a Hugging Face tokenizer's files ({file name: contents},
        `tokenizer.hf_files`), with the special tokens of its tokenizer_config.json;
        None when it has none. `chat_template.jinja` wins over the config's key, as
        in transformers 5."""
        if not hf_files:
            return None
        config = _json_file(hf_files, TOKENIZER_CONFIG_FILE, origin)
        special = special_tokens_of_files(hf_files, origin)
        # transformers 5: the default in chat_template.jinja, named ones in
        # chat_templates/NAME.jinja; these win over the config's "chat_template".
        named = {name[len(TEMPLATE_DIR) + 1:-len(".jinja")]: text
                 for name, text in hf_files.items()
                 if name.startswith(TEMPLATE_DIR + "/") and name.endswith(".jinja")}
        if hf_files.get(TEMPLATE_FILE):
            named["default"] = hf_files[TEMPLATE_FILE]
        if named:
            source = named["default"] if list(named) == ["default"] else named
            return cls(source, special, origin=origin or TEMPLATE_FILE)
        source = config.get("chat_template")
        if source is None:
            return None
        return cls(source, special, origin=origin or TOKENIZER_CONFIG_FILE)

    @classmethod
    def from_directory(cls, directory):
        """The template of a transformers checkpoint directory; None without one."""
        files = {}
        named = os.path.join(directory, TEMPLATE_DIR)
        names = [TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE] + (
            [f"{TEMPLATE_DIR}/{name}" for name in sorted(os.listdir(named))]
            if os.path.isdir(named) else [])
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    files[name] = f.read()
        return cls.from_hf_files(files, origin=directory)

    def get_config(self):
        """JSON-serialisable: what `from_config` (and `tfpg_export.json`) keeps."""
        return {"template": self.source, "special_tokens": dict(self.special_tokens),
                "origin": self.origin}

    @classmethod
    def from_config(cls, config):
        return cls(config["template"], config.get("special_tokens"), config.get("origin"))

    # ----------------------------------------------------------- rendering

    def select(self, tools=None):
        """The template source used for a call (transformers' `get_chat_template`):
        of named templates, "tool_use" when tools are given and it exists, else
        "default"."""
        if isinstance(self.source, str):
            return self.source
        if tools is not None and "tool_use" in self.source:
            return self.source["tool_use"]
        if "default" in self.source:
            return self.source["default"]
        raise TemplateError(f"{self.origin or 'chat template'}: has several named templates "
                            f"and no 'default' ({', '.join(sorted(self.source))})")

    def render(self, messages, add_generation_prompt=True, tools=None, documents=None,
               **kwargs):
        """One conversation -> the string the model reads (as transformers'
        `apply_chat_template(messages, tokenize=False, ...)`).

        Args:
            messages: list of dict. The messages, each with "role", "content", ...
            add_generation_prompt: bool. End with the header of an assistant turn
                (what a prompt to complete needs).
            tools: list of dict or None. JSON-schema dicts (function definitions).
            documents: list of dict or None. Dicts with "title" and "text".
            **kwargs: more template variables (they override the special tokens),
                e.g. `date_string="26 Jul 2024"`.

        Raises:
            ValueError: a malformed conversation, or the template's own
                `raise_exception` (one line, naming the template).
        """
        import jinja2
        if tools is not None:
            tools = list(tools)
            for tool in tools:
                if not isinstance(tool, Mapping):
                    raise ValueError(f"tools must be JSON-schema dicts (function "
                                     f"definitions), got {type(tool).__name__}")
        if documents is not None:
            for document in documents:
                if not isinstance(document, Mapping):
                    raise ValueError("documents must be dicts with 'title' and 'text'")
        compiled = _compile(self.select(tools))
        variables = _plain({**self.special_tokens, **kwargs})
        try:
            return compiled.render(messages=_prepared(messages), tools=_plain(tools),
                                   documents=_plain(documents),
                                   add_generation_prompt=bool(add_generation_prompt),
                                   **variables)
        except jinja2.exceptions.TemplateError as error:
            raise TemplateError(f"chat template ({self.origin or 'given'}): "
                                f"{_one_line(error.message or type(error).__name__)}") \
                from None

    def reply_text(self, text, role="user", end_token=None):
        """The text that follows a policy turn when the environment replies `text` as
        a `role` message: the rest of the assistant turn (after `end_token`, which
        the policy wrote, e.g. "<|im_end|>"), the reply's own turn and the next
        assistant header (how multi-turn episodes keep one template, as TRL's
        `_get_tool_suffix_ids` does).

        Raises TemplateError when the template renders earlier turns differently
        once a message is appended (it is not prefix-preserving)."""
        marker = "\u2063tfpg-turn\u2063"    # text no real turn contains
        base = [{"role": "user", "content": "\u2063"},
                {"role": "assistant", "content": marker}]
        prefix = self.render(base, add_generation_prompt=False)
        full = self.render(base + [{"role": role, "content": text}],
                           add_generation_prompt=True)
        if not full.startswith(prefix) or marker not in prefix:
            raise TemplateError(f"chat template ({self.origin or 'given'}): appending a "
                                f"{role} message re-renders the earlier turns, so "
                                "multi-turn episodes cannot keep it")
        tail = prefix[prefix.rindex(marker) + len(marker):]
        if end_token and tail.startswith(end_token):
            tail = tail[len(end_token):]       # the policy's turn ended with it
        return tail + full[len(prefix):]

    def __repr__(self):
        names = "" if isinstance(self.source, str) else f", names={sorted(self.source)}"
        return f"ChatTemplate(origin={self.origin!r}{names})"


def _named_templates(items, origin):
    """[{"name", "template"}, ...] (tokenizer_config.json) -> {name: template}."""
    named = {}
    for item in items:
        if not (isinstance(item, Mapping) and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)):
            raise TemplateError(f"{origin or 'chat template'}: a list of chat templates must "
                                "hold {\"name\", \"template\"} objects")
        named[item["name"]] = item["template"]
    return named


def _json_file(files, name, origin):
    text = files.get(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise TemplateError(f"{os.path.join(origin or '', name)}: invalid JSON "
                            f"({error.msg})") from None
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------- tokenizer helpers

def apply_chat_template(tokenizer, messages, add_generation_prompt=True, tools=None,
                        **kwargs):
    """`tokenizer.chat_template.render(...)`, or a one-line `NoChatTemplateError`
    saying how to give one (the `apply_chat_template` of tfpg's tokenizers)."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise NoChatTemplateError(f"{type(tokenizer).__name__} has no chat template; "
                                  f"{HOW_TO_GIVE}")
    return template.render(messages, add_generation_prompt=add_generation_prompt,
                           tools=tools, **kwargs)


def encode_chat(tokenizer, messages, add_generation_prompt=True, tools=None, **options):
    """Token ids of a rendered conversation, as transformers encodes it: the template
    writes BOS itself, so none is added (`add_special_tokens=False`), except by
    tokenizers whose BOS has no text form (tfpg's `Tokenizer`: `chat_adds_bos`).
    `options` go to `tokenizer.encode` (max_length, truncate)."""
    text = apply_chat_template(tokenizer, messages, add_generation_prompt, tools)
    return tokenizer.encode(text, add_bos=getattr(tokenizer, "chat_adds_bos", False),
                            **options)


class ChatTemplateMixin:
    """`chat_template` and `apply_chat_template` of tfpg's tokenizers.

    `tokenizer.chat_template` is the template set on it (a `ChatTemplate`, or the path
    of a .jinja file, read with the tokenizer's special tokens; None removes it),
    else that of the Hugging Face files the tokenizer was loaded from
    (`tokenizer.hf_files`), else None. A tokenizer's `save` keeps a template set on
    it (`chat_template_config`).
    """

    # Whether a rendered chat is encoded with BOS prepended (`encode_chat`): False
    # where the template writes BOS as text (Hugging Face and KerasHub vocabularies).
    chat_adds_bos = False
    _chat_template_given = None

    def template_special_tokens(self):
        """The named special tokens (`bos_token`, ...) a template set on this
        tokenizer is rendered with: those of its Hugging Face files, if any."""
        files = getattr(self, "hf_files", None)
        return special_tokens_of_files(files) if files else {}

    @property
    def chat_template(self):
        if self._chat_template_given is not None:
            return self._chat_template_given
        files = getattr(self, "hf_files", None)
        if not files:
            return None
        cached = self.__dict__.get("_chat_template_of_files")
        if cached is None or cached[0] is not files:      # read once per hf_files
            cached = (files, ChatTemplate.from_hf_files(files))
            self.__dict__["_chat_template_of_files"] = cached
        return cached[1]

    @chat_template.setter
    def chat_template(self, template):
        if template is not None and not isinstance(template, ChatTemplate):
            if isinstance(template, Mapping):
                template = ChatTemplate.from_config(template)
            elif isinstance(template, (str, os.PathLike)):
                template = ChatTemplate.from_file(template, self.template_special_tokens())
            else:
                raise TypeError(f"chat_template must be a ChatTemplate, the path of a .jinja "
                                f"file or None, got {type(template).__name__}")
        self._chat_template_given = template

    def chat_template_config(self):
        """The config of a template set on the tokenizer (what `save` keeps), or None
        (none set, or the one of its `hf_files`, which are saved anyway)."""
        given = self._chat_template_given
        return None if given is None else given.get_config()

    def save_chat_template(self, payload):
        """Adds the template set on the tokenizer (`chat_template_config`), if any, to
        the JSON `payload` its `save` writes; returns the payload."""
        config = self.chat_template_config()
        if config is not None:
            payload["chat_template"] = config
        return payload

    def restore_chat_template(self, payload):
        """Sets the template a `save` payload keeps, if any; returns the tokenizer."""
        if payload.get("chat_template") is not None:
            self.chat_template = payload["chat_template"]
        return self

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None,
                            **kwargs):
        """Renders one conversation with the tokenizer's chat template, as
        transformers' `apply_chat_template(..., tokenize=False)` does.

        Args:
            messages: list of {"role", "content", ...} dicts.
            add_generation_prompt: end with the header of an assistant turn.
            tools: None or a list of JSON-schema function definitions.
            **kwargs: more template variables (e.g. `date_string=`).

        Returns:
            str.

        Raises:
            ValueError: no template (one line saying how to give one), a malformed
                conversation, or the template's `raise_exception`.
        """
        return apply_chat_template(self, messages, add_generation_prompt, tools, **kwargs)
