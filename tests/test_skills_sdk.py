"""The skill SDK without a node: manifests (and every bad one), schemas from type hints, argument checks, the safe
calculator, full-text search over notes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hero.errors import InvalidArguments, SkillFailed, SkillRefused
from hero.skills.manifest import parse_manifest
from hero.skills.tools import check_result, make_tool

ROOT = Path(__file__).resolve().parents[1]


def manifest(extra: str = "", permissions: str = "") -> str:
    return f'name = "notes"\nversion = "1.0.0"\n{extra}\n[permissions]\n{permissions}\n'


def test_a_manifest_grants_nothing_unless_it_says_so() -> None:
    m = parse_manifest(manifest())
    p = m.permissions
    assert (m.name, m.module, p.timers, p.llm, p.agents, p.hosts) == ("notes", "notes", False, False, (), ())
    assert not p.may_reach("example.org", 443) and not p.may_message("a" * 64)
    granted = parse_manifest(manifest(permissions='hosts = ["api.example.org", "*.svc.test:8443"]\nagents = ["*"]'))
    assert granted.permissions.may_reach("api.example.org", 443)
    assert granted.permissions.may_reach("x.svc.test", 8443) and not granted.permissions.may_reach("x.svc.test", 80)
    assert not granted.permissions.may_reach("evil.org", 443) and granted.permissions.may_message("b" * 64)


@pytest.mark.parametrize(("text", "says"), [
    ("name = 'notes'\nversion = '1.0.0'\n[permissions\n", "not valid TOML"),
    ("version = '1.0.0'", "missing 'name'"),
    ("name = 'Notes!'\nversion = '1.0.0'", "name 'Notes!'"),
    ("name = 'notes'\nversion = 'one'", "version 'one'"),
    ("name = 'notes'\nversion = '1.0.0'\nauthor = 'me'", "unknown key 'author'"),
    (manifest(permissions="network = true"), "unknown permission 'network'"),
    (manifest(permissions="timers = 'yes'"), "permission timers must be true or false"),
    (manifest(permissions="storage_kb = -1"), "storage_kb"),
    (manifest(permissions="time_limit_s = 0"), "time_limit_s"),
    (manifest(permissions="agents = ['bob']"), "'bob' is not an agent id"),
    (manifest(permissions="hosts = ['http://x.org/']"), "is not a host name"),
    (manifest(permissions="hosts = 'x.org'"), "hosts must be a list"),
])
def test_a_malformed_manifest_is_refused_naming_the_fault(text: str, says: str) -> None:
    with pytest.raises(SkillRefused, match=r"skill\.toml") as err:
        parse_manifest(text)
    assert says in err.value.message


async def search(ctx, query: str, limit: int = 5, tags: list[str] | None = None) -> list[str]:
    """Find notes with these words.

    Args:
        query: the words to look for
        limit: how many notes at most
    """
    return []


def test_a_tools_schema_comes_from_its_type_hints_and_docstring() -> None:
    tool = make_tool("notes", "search", search)
    assert tool.qualified == "notes.search" and tool.description == "Find notes with these words."
    props = tool.schema["properties"]
    assert props["query"] == {"type": "string", "description": "the words to look for"}
    assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 5
    assert tool.schema["required"] == ["query"] and tool.schema["additionalProperties"] is False


@pytest.mark.parametrize(("args", "field"), [
    ({"limit": 2}, "arguments.query"),
    ({"query": "x", "limit": "many"}, "arguments.limit"),
    ({"query": "x", "colour": "red"}, "arguments.colour"),
    (["x"], "arguments"),
])
def test_arguments_that_violate_the_schema_are_refused_naming_the_argument(args: object, field: str) -> None:
    tool = make_tool("notes", "search", search)
    with pytest.raises(InvalidArguments) as err:
        tool.validate(args)
    assert err.value.field == field and "notes.search" in err.value.message
    assert tool.validate({"query": "milk"}) == {"query": "milk", "limit": 5, "tags": None}


def test_a_tool_whose_hints_make_no_schema_is_refused_at_load() -> None:
    def untyped(ctx, query):  # type: ignore[no-untyped-def]
        return query

    def no_ctx(query: str) -> str:
        return query

    with pytest.raises(SkillRefused, match="needs a type hint"):
        make_tool("s", "untyped", untyped)
    with pytest.raises(SkillRefused, match="first parameter must be ctx"):
        make_tool("s", "no_ctx", no_ctx)


def test_a_result_that_is_not_json_is_a_clear_error() -> None:
    assert check_result("s.t", {"a": [1, "b"]}) == {"a": [1, "b"]}
    with pytest.raises(SkillFailed, match=r"s\.t returned a set, which is not JSON"):
        check_result("s.t", {1, 2})
    with pytest.raises(SkillFailed, match="not JSON"):
        check_result("s.t", float("nan"))


@pytest.fixture
def calc():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "agents" / "skills" / "calc"))
    try:
        import calc as module

        yield module
    finally:
        sys.path.remove(str(ROOT / "agents" / "skills" / "calc"))
        sys.modules.pop("calc", None)


def test_the_calculator_computes_and_converts(calc) -> None:  # type: ignore[no-untyped-def]
    assert calc.answer("12*7") == "12*7 = 84"
    assert calc.answer("2^10 + sqrt(16)") == "2^10 + sqrt(16) = 1028"
    assert calc.answer("5 km to miles") == "5 km = 3.106855961 miles"
    assert calc.answer("212 F in C") == "212 F = 100 C"


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "().__class__", "open('x')", "'a' * 3", "x", "9**9**9", "1/0", "[1] * 9",
    "lambda: 1", "2 ** 10000",
])
def test_the_calculator_never_runs_code(calc, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(calc.CalcError):
        calc.evaluate_expression(text)


def test_notes_full_text_search_ranks_with_bm25() -> None:
    sys.path.insert(0, str(ROOT / "agents" / "skills" / "notes"))
    try:
        import notes
    finally:
        sys.path.remove(str(ROOT / "agents" / "skills" / "notes"))
        sys.modules.pop("notes", None)
    kept = [{"id": i, "text": t} for i, t in enumerate(
        ["buy milk and eggs", "the cat likes milk", "call mum on Sunday", "eggs, eggs, eggs for the cake"], 1)]
    assert [n["id"] for n in notes.full_text_search(kept, "eggs", 5)] == [4, 1]
    assert [n["id"] for n in notes.full_text_search(kept, "Cats MILK", 5)] == [2, 1]
    assert notes.full_text_search(kept, "zebra", 5) == [] and notes.full_text_search([], "milk", 5) == []
