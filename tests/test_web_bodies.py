"""The JSON body decoder (`hero.web.bodies`) under hypothesis: any bytes give a usable object or a 4xx naming
the field; nothing it returns can fail later (encoding, re-serialising, recursion)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hero.errors import HeroError
from hero.web.bodies import MAX_DEPTH, parse_json_object

# Text that may hold lone surrogates (JSON can spell them; UTF-8 cannot), and every other code point.
TEXT = st.text(alphabet=st.characters(exclude_categories=()) | st.integers(0xD800, 0xDFFF).map(chr), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.integers(-(10**80), 10**80)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=25
)


def usable(value: Any) -> None:
    """What every later part does with a body: encode it as UTF-8 JSON, strictly."""
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode(raw: bytes) -> dict[str, Any] | HeroError:
    try:
        return parse_json_object(raw)
    except HeroError as exc:
        assert exc.status in (400, 422), exc
        usable(exc.to_json())  # the error itself can always be sent
        return exc


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(TEXT, VALUES, max_size=5))
def test_any_json_object_is_returned_intact_or_refused_naming_the_field(value):
    raw = json.dumps(value)  # ensure_ascii: surrogates and NaN travel as JSON spells them
    meant = json.loads(raw)  # what that text says (a surrogate *pair* is one character)
    result = decode(raw.encode())
    if isinstance(result, HeroError):
        assert result.field is None or isinstance(result.field, str)
        try:
            usable(meant)
        except (UnicodeEncodeError, ValueError):
            return  # refused for a reason
        assert any(len(str(n)) > 64 for n in _numbers(meant)), result.to_json()  # only huge integers remain
        return
    usable(result)
    assert result == meant


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_usable_object_or_a_4xx(raw):
    result = decode(raw)
    if isinstance(result, HeroError):  # refused as the client's fault, saying why
        assert 400 <= result.status < 500 and result.to_json()["error"]["message"], result.to_json()
    else:
        usable(result)


@given(st.integers(1, 3 * MAX_DEPTH), st.sampled_from(["[", '{"k":']))
def test_nesting_is_allowed_to_the_limit_and_refused_past_it_naming_the_member(depth, opener):
    closer = "]" if opener == "[" else "}"
    raw = ('{"deep":' + opener * depth + "1" + closer * depth + "}").encode()
    result = decode(raw)
    if depth < MAX_DEPTH:  # the body itself is the first level
        assert not isinstance(result, HeroError), result
    else:
        assert isinstance(result, HeroError) and result.field == "deep"


def _numbers(value: Any) -> list[int | float]:
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []
