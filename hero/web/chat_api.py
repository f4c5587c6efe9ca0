"""OpenAI-compatible Chat Completions: the token selects the user's agent.

The agent keeps its own history and memory, so only the *last* message of the
request (which must be the user's) is delivered to it; earlier messages a
client sends (full-history clients such as the `openai` SDK examples) are
validated and then ignored — the agent answers from its own memory, and what
was said stays in one place (`GET /api/me/messages`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import HeroError, InvalidField, PayloadTooLarge
from hero.runtime.events import ChatMessage, Reply
from hero.web import shutdown
from hero.web.auth import authenticate, require_user
from hero.web.bodies import read_json
from hero.web.parts import parts

ROLES = {"system", "developer", "user", "assistant", "tool"}
MODEL_ID = "hero"


@dataclass(frozen=True)
class ChatRequest:
    text: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    model: str
    interactive: bool


def parse_chat_request(
    body: dict[str, Any], *, n_ctx: int, interactive: bool, max_message_chars: int
) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages must be a non-empty array", field="messages")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidField(f"messages[{i}] must be an object", field=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidField(
                f"messages[{i}].role must be one of {sorted(ROLES)}, got {_brief(role)}", field=f"messages[{i}].role"
            )
        text = _content_text(message.get("content"), f"messages[{i}].content")
        if len(text) > max_message_chars:
            raise PayloadTooLarge(
                f"messages[{i}].content is over {max_message_chars} characters", field=f"messages[{i}].content"
            )
        texts.append(text)
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        raise InvalidField("the last message must have role 'user'", field=f"messages[{last}].role")
    text = texts[last]
    if not text.strip():
        raise InvalidField("the last message is empty", field=f"messages[{last}].content")
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str):
        raise InvalidField("model must be a string", field="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidField("stream must be a boolean", field="stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise InvalidField("stream_options must be an object with a boolean include_usage", field="stream_options")
    # Both spellings are checked on their own: a null in one never lets a bad value through in the other.
    max_tokens = _token_limit(body, "max_tokens", n_ctx // 2)
    max_completion_tokens = _token_limit(body, "max_completion_tokens", n_ctx // 2)
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2
    ):
        raise InvalidField("temperature must be a number from 0 to 2", field="temperature")
    return ChatRequest(
        text,
        stream,
        bool(options.get("include_usage", False)),
        max_completion_tokens if max_completion_tokens is not None else max_tokens,
        None if temperature is None else float(temperature),
        model,
        interactive,
    )


def _token_limit(body: dict[str, Any], name: str, high: int) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high):
        raise InvalidField(f"{name} must be an integer from 1 to {high}", field=name)
    return value


def _brief(value: Any) -> str:
    """A value as an error message may quote it: short, and never a whole array or object."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return repr(value)


def _content_text(content: Any, field: str) -> str:
    """Content is a string or a list of text parts (the OpenAI multi-part form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidField(f"{field} parts must be text parts", field=field)
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        return ""
    raise InvalidField(f"{field} must be a string or an array of text parts", field=field)


async def chat_completions(request: Request) -> Response:
    claims = await require_user(request)
    config = parts(request).config
    body = await read_json(request, config.max_body_bytes)
    interactive = request.headers.get("x-hero-priority", "interactive").lower() != "background"
    chat = parse_chat_request(
        body, n_ctx=config.n_ctx, interactive=interactive, max_message_chars=config.max_message_chars
    )
    event = ChatMessage(chat.text, interactive, chat.max_tokens, chat.temperature)
    reply = await parts(request).node.deliver(claims.sub, event)
    await reply.wait_accepted()  # 2xx only once the message is durable in the agent's history
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if chat.stream:
        stop = anyio.Event()
        return EventSourceResponse(
            _sse(reply, completion_id, created, chat, stop),
            ping=15,
            send_timeout=30,
            headers={"Cache-Control": "no-cache"},
            shutdown_event=stop,
            shutdown_grace_period=shutdown.GRACE_S,
        )
    try:
        text = await reply.text()
    finally:
        reply.cancel()
    usage = _usage(reply, text)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": usage,
        }
    )


async def _sse(
    reply: Reply, completion_id: str, created: int, chat: ChatRequest, stop: anyio.Event
) -> AsyncIterator[dict[str, str]]:
    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, str]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if chat.include_usage:
            body["usage"] = None
        return {"data": json.dumps(body, separators=(",", ":"))}

    parts: list[str] = []
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            async with shutdown.on_shutdown(stop, lambda: reply.interrupt(shutdown.shutting_down())):
                async for delta in reply:
                    parts.append(delta)
                    yield chunk({"content": delta}, None)
        except HeroError as exc:  # the turn failed, or the node is shutting down: say so, then end
            yield {"data": json.dumps(exc.to_json())}
            yield {"data": "[DONE]"}
            return
        yield chunk({}, reply.finish_reason)
        if chat.include_usage:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "choices": [],
                "usage": _usage(reply, "".join(parts)),
            }
            yield {"data": json.dumps(final, separators=(",", ":"))}
        yield {"data": "[DONE]"}
    finally:
        reply.cancel()  # the client went away or the stream ended: stop generating


def _usage(reply: Reply, text: str) -> dict[str, Any]:
    """Token counts from the model; replies made by a skill (no model) count words.

    Prompt tokens reused from the agent's previous turn are OpenAI's `cached_tokens`; a `max_tokens`
    over the node's per-request cap was clamped, and both numbers are reported.
    """
    completion = int(reply.usage.get("completion_tokens") or len(text.split()))
    prompt = int(reply.usage.get("prompt_tokens", 0))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "prompt_tokens_reused" in reply.usage:
        usage["prompt_tokens_details"] = {"cached_tokens": int(reply.usage["prompt_tokens_reused"])}
    if "max_tokens_requested" in reply.usage:
        usage["max_tokens_requested"] = int(reply.usage["max_tokens_requested"])
        usage["max_tokens"] = int(reply.usage["max_tokens"])
    return usage


async def models(request: Request) -> Response:
    await authenticate(request)
    edge = parts(request)
    llm = edge.llm
    created = int(edge.started)
    data = [
        {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "hero"},
        {"id": llm.name, "object": "model", "created": created, "owned_by": "hero"},
    ]
    return JSONResponse({"object": "list", "data": data})


def routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
