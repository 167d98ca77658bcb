"""Integer values as TracingPolicies write them."""

from __future__ import annotations


def parse_int(text: object) -> int:
    """A Tetragon integer value: decimal, 0x hex, 0 octal, optional sign."""
    if isinstance(text, bool):
        raise ValueError(f"not an integer: {text!r}")
    if isinstance(text, int):
        return text
    s = str(text).strip()
    sign = -1 if s.startswith("-") else 1
    body = s.lstrip("+-")
    if body.lower().startswith("0x"):
        value = int(body[2:], 16)
    elif len(body) > 1 and body.startswith("0"):
        value = int(body[1:], 8)
    else:
        value = int(body, 10)
    return sign * value
