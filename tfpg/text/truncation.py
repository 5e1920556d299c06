"""The one rule of every `truncate` option: cutting an over-long sequence to a length.

"right" keeps the first items (the start of a prompt carries its meaning), "left" the
last; "error", where a caller offers it, refuses instead. The tokenizers' `encode`,
their in-graph layers and the file readers of `tfpg.data` (which cut characters) all
cut here. Imports no TensorFlow: the readers run before it starts.
"""

TRUNCATE_SIDES = ("right", "left")


def check_truncate(truncate, choices=TRUNCATE_SIDES):
    """Raises ValueError unless `truncate` is one of `choices`."""
    if truncate not in choices:
        names = ", ".join(repr(choice) for choice in choices[:-1])
        raise ValueError(f"truncate must be {names} or {choices[-1]!r}, got {truncate!r}")


def cut(items, keep, truncate):
    """The at most `keep` items that `truncate` leaves: the first ("right") or the
    last ("left").

    Args:
        items: list, tuple, str or tf.RaggedTensor. One sequence, or a tensor
            [B, (n)] (ragged or dense) whose rows are each cut.
        keep: int. How many items to keep, >= 0.
        truncate: str. "right" or "left".

    Example:
    >>> cut([1, 5, 6, 7], 2, "right"), cut([1, 5, 6, 7], 2, "left"), cut("abc", 0, "left")
    ([1, 5], [6, 7], '')
    """
    if isinstance(items, (list, tuple, str)):
        return items[:keep] if truncate == "right" else items[max(len(items) - keep, 0):]
    # A tensor's rows: [:, -0:] would keep every item, so keep == 0 cuts with [:, :0].
    return items[:, :keep] if truncate == "right" or keep == 0 else items[:, -keep:]
