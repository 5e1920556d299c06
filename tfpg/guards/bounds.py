"""The ranges tfpg's numeric options must lie in, and the size bounds of a run.

Every check raises `ValueError` with one line naming the option, the value it got
and the range it allows, e.g. "temperature must be > 0 and finite, got nan".
The command line passes its flag's name ("--temperature") so that the message names
what the user typed.

Imports no TensorFlow: `tfpg.run.cli` and `tfpg.run.config` refuse bad options with these
checks before TensorFlow starts; `tfpg.generate`, `GeneratorModel.generate`, the
trainers and `KerasHubPolicy` run the same ones.

Size bounds:

* `check_decode_memory`: a decode of B rows, P prompt and N new tokens holds its
  output buffers (ids, mask and log-probs, 4 bytes each, in the loop's [N, B]
  buffers and the [B, N] outputs transposed from them) and its cache (KV cache:
  `cache_bytes_per_token` per row and position) at once. Above
  `decode_memory_limit()` (half the machine's memory; `$TFPG_MAX_DECODE_MEMORY_GB`
  sets another) the decode is refused before anything is allocated.
* `prompt_char_limit`: the characters of one prompt that a file reader keeps before
  anything tokenizes it (a 10 MB line is cut or refused, never tokenized whole).
* `MAX_JSON_DEPTH`: the nesting a JSONL line may have.
"""

import math
import numbers
import os

DECODE_MEMORY_ENV = "TFPG_MAX_DECODE_MEMORY_GB"
# Without a way to read the machine's memory, the decode limit is this.
FALLBACK_DECODE_MEMORY_GB = 8.0
# Bytes per (row, new token) outside the cache: int32 ids, float32 mask and
# log-probs in the loop's [N, B] buffers, and again in the transposed [B, N] outputs.
OUTPUT_BYTES_PER_TOKEN = 24
# max_new_tokens and every length are int32 inside the decode graph.
INT32_MAX = 2**31 - 1
# Characters a prompt may have per token of --max-prompt-length before a reader cuts
# it: generous (a BPE token is ~4 characters, a word rarely 64), so a cut never takes
# a token that token-level truncation would keep.
MAX_CHARS_PER_TOKEN = 64
# Characters a prompt may have when no --max-prompt-length bounds it.
MAX_PROMPT_CHARS = 8192
# Nesting depth a JSONL line may have (objects and arrays); far below Python's
# recursion limit, far above any record a data file needs.
MAX_JSON_DEPTH = 100


def _is_real(value):
    """A real number that is not a bool (True is an int to Python, not a setting)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(name, value, allowed):
    if not _is_real(value):
        raise ValueError(f"{name} must be a number {allowed}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_positive(name, value):
    """A finite number > 0 (temperature, learning_rate); returns it."""
    allowed = "> 0 and finite"
    if _number(name, value, allowed) <= 0:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_non_negative(name, value):
    """A finite number >= 0 (kl_coef, clip_epsilon); returns it."""
    allowed = ">= 0 and finite"
    if _number(name, value, allowed) < 0:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_top_p(name, value):
    """A number in (0, 1]; returns it."""
    allowed = "in (0, 1]"
    if not 0 < _number(name, value, allowed) <= 1:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_count(name, value, minimum=1, maximum=INT32_MAX):
    """An integer in [minimum, maximum] (top_k, max_new_tokens, lora_rank); returns it
    as an int. A float with an integer value (50.0) is accepted."""
    allowed = f"an integer in [{minimum}, {maximum}]"
    if _is_real(value) and math.isfinite(value) and value == int(value):
        if minimum <= value <= maximum:
            return int(value)
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_timeout(name, value):
    """None (no limit) or a finite number of seconds > 0; returns it."""
    if value is None:
        return None
    if _is_real(value) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f"{name} must be a finite number of seconds > 0 or None (no "
                     f"limit), got {value!r}")


# ------------------------------------------------------------------ decode size


def decode_memory_limit():
    """(bytes, what it is): `$TFPG_MAX_DECODE_MEMORY_GB` GiB, or half the machine's
    physical memory (8 GiB where it cannot be read)."""
    text = os.environ.get(DECODE_MEMORY_ENV)
    if text:
        try:
            gigabytes = float(text)
        except ValueError:
            gigabytes = math.nan
        if not (math.isfinite(gigabytes) and gigabytes > 0):
            raise ValueError(f"${DECODE_MEMORY_ENV} must be a number of GiB > 0, "
                             f"got {text!r}")
        return int(gigabytes * 2**30), f"${DECODE_MEMORY_ENV}"
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 0
    if physical > 0:
        return physical // 2, f"half this machine's memory; set ${DECODE_MEMORY_ENV} " \
                              "to change it"
    return int(FALLBACK_DECODE_MEMORY_GB * 2**30), \
        f"the default; set ${DECODE_MEMORY_ENV} to change it"


def decode_memory_bytes(batch_size, prompt_length, max_new_tokens,
                        cache_bytes_per_token=0, vocab_size=0):
    """Bytes a decode holds at once: output buffers for B x N, the cache for
    B x (P + N) and two float32 rows of logits per sequence."""
    per_row = (OUTPUT_BYTES_PER_TOKEN * max_new_tokens
               + cache_bytes_per_token * (prompt_length + max_new_tokens)
               + 8 * vocab_size)
    return batch_size * per_row


def check_decode_memory(batch_size, prompt_length, max_new_tokens, cache_bytes_per_token=0,
                        vocab_size=0, name="max_new_tokens"):
    """Refuses (ValueError) a decode whose buffers and cache would exceed
    `decode_memory_limit()`, before anything is allocated."""
    needed = decode_memory_bytes(batch_size, prompt_length, max_new_tokens,
                                 cache_bytes_per_token, vocab_size)
    limit, source = decode_memory_limit()
    if needed > limit:
        raise ValueError(
            f"{name} {max_new_tokens} needs about {_gib(needed)} for the decode's buffers "
            f"and cache ({batch_size} x ({prompt_length} + {max_new_tokens}) tokens), more "
            f"than the limit of {_gib(limit)} ({source})")


def _gib(size):
    return f"{size / 2**30:.3g} GiB"


# ------------------------------------------------------------------ data files


def prompt_char_limit(max_prompt_length):
    """Characters of one prompt a reader keeps: `MAX_CHARS_PER_TOKEN` per token of
    `max_prompt_length`, or `MAX_PROMPT_CHARS` without one."""
    if max_prompt_length is None:
        return MAX_PROMPT_CHARS
    return max(1, int(max_prompt_length)) * MAX_CHARS_PER_TOKEN


def json_depth(value):
    """Nesting depth of a parsed JSON value (a scalar is 0, `[]` and `{}` are 1),
    iteratively: no recursion on deep values."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        depth = max(depth, level + 1)
        stack.extend((child, level + 1) for child in item
                     if isinstance(child, (dict, list)))
    return depth
