"""Text that is valid Unicode: a `str` may hold lone UTF-16 surrogates ("\\ud800"), which cannot be encoded.

Such text breaks every JSON response and the model's tokenizer for whoever's data holds it. The web
edge refuses it (`is_valid`); text kept from before it did is repaired where it is read (`repair`).
"""

from __future__ import annotations


def is_valid(text: str) -> bool:
    """True if `text` encodes as UTF-8 (no lone surrogates); cheap for ASCII."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repair(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (valid text comes back unchanged, cheaply)."""
    if is_valid(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
