"""`/openapi.json` on a real server: it describes every route, and schemathesis fuzzing it finds no 5xx."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from hero.web.openapi import routed
from tests.conftest import add_user, auth, make_config, serving
from tests.doubles import Echo

EXAMPLES_PER_MODE = 20  # per operation, positive and negative: about 500 requests in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


async def test_openapi_json_describes_every_route_its_auth_and_errors(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == routed(node.app.routes)  # no route undocumented, no entry without a route
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] and op["x-hero-auth"] in ("public", "token", "user", "operator"), where
            needs_token = op["x-hero-auth"] != "public"
            assert bool(op["security"]) == needs_token, where
            codes = set(op["responses"])
            assert "401" in codes or not needs_token, where
            assert ("403" in codes) == (op["x-hero-auth"] in ("user", "operator")), where
            if "requestBody" in op:
                assert {"400", "413", "422"} <= codes, where
            for code, answer in op["responses"].items():
                if int(code) >= 400:
                    assert answer["content"]["application/json"]["schema"] == error_ref, (where, code)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["max_tokens"]["maximum"] == node.config.n_ctx // 2
    assert node.config.max_message_chars in [s.get("maxLength") for s in
                                             body["properties"]["messages"]["items"]["properties"]["content"]["anyOf"]]
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    params = {p["name"] for p in doc["paths"]["/api/me/messages"]["get"]["parameters"]}
    assert params == {"limit", "before", "q"}


def fuzz(base_url: str, doc: dict[str, Any], token_for: dict[str, Callable[[], str]]) -> tuple[int, list[str]]:
    """Every operation, positive and negative cases, each call with a fresh token of the role it needs."""
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.max_stream_events = 1  # event streams never end: one event is enough to check
    calls: list[str] = []
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}

    def call(case: schemathesis.Case) -> None:
        calls.append(case.operation.label)
        role = case.operation.definition.raw["x-hero-auth"]
        headers = auth(token_for[role]()) if role in token_for else {}
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        for check in CHECKS:
            try:
                case.validate_response(response, checks=[check], headers=headers)
            except (Exception, BaseExceptionGroup) as exc:
                key = f"{case.operation.label} {check.__name__} [{response.status_code}]"
                failures[key] += 1
                examples.setdefault(key, str(exc)[:1500])

    for result in schema.get_all_operations():
        operation = result.ok()
        definition = operation.definition.raw
        can_be_wrong = "requestBody" in definition or any(p["in"] != "path" for p in definition.get("parameters", []))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if can_be_wrong else (GenerationMode.POSITIVE,):
            run = settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )(given(case=operation.as_strategy(generation_mode=mode))(call))
            run()
    return len(calls), [f"{key} ×{n}\n{examples[key]}" for key, n in failures.items()]


async def test_schemathesis_finds_no_server_error_and_every_answer_matches_the_document(tmp_path):
    config = make_config(tmp_path)
    async with serving(config, agent_factory=Echo) as parts:
        base_url = f"http://127.0.0.1:{config.port}"
        add_user(config.data_dir, "alice")
        alice = parts.users.get("alice")
        token_for = {
            "user": lambda: parts.users.issue(alice)[0],
            "token": lambda: parts.users.issue(alice)[0],  # fresh each call: the fuzzer also signs out
            "operator": lambda: parts.users.issue_operator()[0],
        }
        async with httpx.AsyncClient(base_url=base_url) as http:
            doc = (await http.get("/openapi.json")).json()
        started = time.monotonic()
        calls, failures = await asyncio.to_thread(fuzz, base_url, doc, token_for)
        elapsed = time.monotonic() - started
    assert failures == [], "\n\n".join(failures)
    assert 300 <= calls and elapsed < 120, (calls, elapsed)
