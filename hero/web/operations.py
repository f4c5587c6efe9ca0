"""Every endpoint of the node, as a hand-kept table: one `Operation` per method and path.

Kept beside the routes it describes; tests hold the two together (every route
of the app has an entry and every entry a route; each operation's `auth` is
what the route enforces; schemathesis fuzzes the live node from the document
`openapi.py` renders from this table). Limits come from the node's config, so
the table states what this node accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hero.config import NodeConfig
from hero.seams.power import CHART_WINDOWS
from hero.web.events_api import MAX_STREAMS_PER_USER
from hero.web.node_api import MAX_PAGE, MAX_QUERY_CHARS, SEARCH_LIMIT

Auth = Literal["public", "token", "user", "operator"]
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header", "path"]
    schema: dict[str, Any]
    description: str
    required: bool = False
    example: Any = None


@dataclass(frozen=True)
class Operation:
    summary: str
    auth: Auth
    ok: dict[str, dict[str, Any]]  # content type -> schema of the success answer
    ok_status: int = 200
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None  # JSON schema of the request body
    errors: tuple[int, ...] = ()  # beyond 401/403 (from auth) and 400/413/422 (from a body)
    example: dict[str, Any] | None = None  # a request body that succeeds
    accepted: str | None = None  # when the operation may also answer 202: what that means
    accepted_body: bool = False  # that 202 carries the success answer's body (else none)


def fields(required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an object with these properties, `required` among them."""
    return {"type": "object", "required": list(required), "properties": properties}


STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
AGENT_ID: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def _events(*names: str) -> dict[str, Any]:
    """One Server-Sent Event (as clients parse them): its name, JSON text in `data`, and `id` where resumable."""
    name = {"type": "string", "enum": list(names)} if names else STRING
    return {"type": "object", "properties": {"event": name, "data": STRING, "id": STRING, "retry": INTEGER}}


TEXT_PART = fields(("type", "text"), type={"const": "text"}, text=STRING)
HISTORY_ENTRY = fields(
    ("seq", "role", "content"),
    seq=INTEGER, role=STRING, content=STRING, ts=NUMBER,
    kind={"type": "string",
          "description": "`chat`, `reminder`, `error`, `overlay`, or `stopped` (a reply cut short)."},
)
EXPORT = fields(
    ("format", "exported", "user", "skills", "history", "history_count"),
    format={"const": "hero-export/1"}, exported=NUMBER,
    user=fields(("name", "agent_id"), name=STRING, agent_id=AGENT_ID),
    skills={"type": "object", "description": "Each skill's state by skill name (`notes`: your notes)."},
    memory={"description": "Facts kept before skills existed, if any are left."},
    history={"type": "array", "items": HISTORY_ENTRY}, history_count=INTEGER,
)
COMPLETION = fields(
    ("id", "object", "created", "model", "choices", "usage"),
    id=STRING,
    object={"const": "chat.completion"},
    created=INTEGER,
    model=STRING,
    choices={
        "type": "array",
        "items": fields(
            ("index", "message", "finish_reason"),
            index=INTEGER,
            message=fields(("role", "content"), role={"const": "assistant"}, content=STRING),
            finish_reason=STRING,
        ),
    },
    usage=fields(
        ("prompt_tokens", "completion_tokens", "total_tokens"),
        prompt_tokens=INTEGER, completion_tokens=INTEGER, total_tokens=INTEGER,
    ),
)
MODELS = fields(
    ("object", "data"),
    object={"const": "list"},
    data={"type": "array", "items": fields(("id", "object"), id=STRING, object={"const": "model"},
                                            created=INTEGER, owned_by=STRING)},
)


def _chat_body(config: NodeConfig) -> dict[str, Any]:
    limit = config.max_message_chars
    tokens = {"type": ["integer", "null"], "minimum": 1, "maximum": config.n_ctx // 2}
    content = {
        "anyOf": [
            {"type": "string", "maxLength": limit},
            {"type": "array", "items": TEXT_PART},
            {"type": "null"},
        ],
        "description": f"Text, or text parts joined; at most {limit} characters either way.",
    }
    message = fields(
        ("role",), role={"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        content=content,
    )
    return fields(
        ("messages",),
        messages={
            "type": "array", "minItems": 1, "items": message,
            "description": "Only the last message is delivered; it must have role `user` and some text. "
                           "Earlier ones (full-history clients) are checked and ignored.",
        },
        model=STRING,
        stream=BOOLEAN,
        stream_options={"type": ["object", "null"], "properties": {"include_usage": BOOLEAN}},
        max_tokens=tokens,
        max_completion_tokens={**tokens, "description": "Wins over max_tokens when both are given."},
        temperature={"type": ["number", "null"], "minimum": 0, "maximum": 2},
    )


def operations(config: NodeConfig) -> dict[tuple[str, str], Operation]:
    """Every operation the app serves, keyed by (method, path)."""
    page = {"text/html": STRING}
    limit_q = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Messages per page.")
    before_q = Param("before", "query", {"type": "integer", "minimum": 1, "maximum": 2**62},
                     "Only messages with a smaller seq (page backwards with `next_before`).")
    search_q = Param("q", "query", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": r"\w"},
                     "Search instead of paging: the newest `limit` messages (default "
                     f"{SEARCH_LIMIT}) holding every word, case-insensitive, newest first; `has_more` says older "
                     "ones match too. Not with `before` (422). Without a word or over "
                     f"{MAX_QUERY_CHARS} characters: 422 naming `q`.")
    last_id = {"type": "integer", "minimum": 0}
    return {
        ("POST", "/v1/chat/completions"): Operation(
            "Chat with your own agent (OpenAI Chat Completions); `stream: true` gives SSE ending in `data: [DONE]`.",
            "user",
            {JSON: COMPLETION, SSE: _events()},
            params=(Param("X-Hero-Priority", "header", STRING, "`background` marks the call as deferrable work."),),
            body=_chat_body(config),
            errors=(429, 500, 503),
            example={"model": "hero", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("GET", "/v1/models"): Operation("`hero` and the loaded model.", "token", {JSON: MODELS}),
        ("GET", "/api/me"): Operation(
            "Your agent id and its status (active, hibernated or damaged).",
            "user",
            {JSON: fields(("name", "agent_id", "agent_status", "token_expires"), name=STRING, agent_id=AGENT_ID,
                           agent_status={"enum": ["active", "hibernated", "damaged"]}, token_expires=INTEGER)},
        ),
        ("GET", "/api/me/messages"): Operation(
            "Your agent's history, newest last; with `q`, a search of it, newest first (`next_before` null).",
            "user",
            {JSON: fields(("messages", "has_more", "next_before"), messages={"type": "array", "items": HISTORY_ENTRY},
                           has_more=BOOLEAN, next_before={"type": ["integer", "null"]})},
            params=(limit_q, before_q, search_q),
            errors=(400, 422, 503),
        ),
        ("GET", "/api/me/events"): Operation(
            f"Live messages as SSE (each event's id is the message's seq); at most {MAX_STREAMS_PER_USER} open "
            "streams per user.",
            "user",
            {SSE: _events("ready", "message", "auth")},
            params=(
                Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                      "Resume after this seq: missed messages come first."),
                Param("last_event_id", "query", last_id, "Same, for clients that cannot set the header."),
            ),
            errors=(400, 429, 503),
        ),
        ("GET", "/api/me/export"): Operation(
            "All your data as one JSON document, streamed: your history (oldest first), your skills' state "
            "(your notes among it) and any memory kept outside skills.",
            "user",
            {JSON: EXPORT},
            errors=(503,),
        ),
        ("DELETE", "/api/me"): Operation(
            "Delete yourself: your agent and every object of it on every backend (every version, every fragment), "
            "your user and every token of yours. Nothing of it can be read again; export first.",
            "user",
            {JSON: fields(("deleted", "agent_id", "store"), deleted=STRING, agent_id=AGENT_ID, store=ANY_OBJECT)},
            params=(Param("confirm", "query", STRING, "Your user name, exactly: the confirmation.", required=True),),
            errors=(400, 422, 503),
            accepted="Deleted, except on a backend that did not answer: what it holds is deleted there as soon as it "
                     "answers (`store.pending` is true, `store.left` says where).",
            accepted_body=True,
        ),
        ("GET", "/api/me/power"): Operation(
            "Your agent's watts, joules and Wh today, and the node's average agent.", "user", {JSON: ANY_OBJECT},
            errors=(503,),
        ),
        ("POST", "/api/auth/challenge"): Operation(
            "A node-signed challenge (valid 2 minutes) for signing in with your Ed25519 key.",
            "public",
            {JSON: fields(("challenge", "expires"), challenge=STRING, expires=INTEGER)},
            body=fields(("agent_id",), agent_id={**AGENT_ID, "description": "Your Ed25519 public key, hex."}),
            example={"agent_id": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"},
        ),
        ("POST", "/api/auth/login"): Operation(
            "Exchange a challenge signed with your key (hex or base64url) for a token; each challenge works once.",
            "public",
            {JSON: fields(("token", "name", "agent_id", "expires"), token=STRING, name=STRING, agent_id=AGENT_ID,
                           expires=INTEGER)},
            body=fields(("challenge", "signature"), challenge=STRING, signature=STRING),
            errors=(401,),
        ),
        ("POST", "/api/auth/logout"): Operation("Revoke the token this request carries.", "token", {}, ok_status=204),
        ("GET", "/api/node/agents"): Operation(
            "Every agent: id, user, active, hibernated or damaged (with the reason and since when), last event.",
            "operator",
            {JSON: fields(("agents", "active", "hibernated"), active=INTEGER, hibernated=INTEGER, damaged=INTEGER,
                           agents={"type": "array", "items": fields(
                               ("agent_id", "status"), agent_id=AGENT_ID,
                               status={"enum": ["active", "hibernated", "damaged"]},
                               reason=STRING, damaged_since=NUMBER)})},
        ),
        ("GET", "/api/node/status"): Operation(
            "Agents active, hibernated and damaged (each damaged one with its reason), activation rate, LLM queue "
            "and tokens/s.", "operator", {JSON: ANY_OBJECT}
        ),
        ("GET", "/api/node/status/stream"): Operation(
            "The node status as SSE, 1 Hz.", "operator", {SSE: _events("status", "auth")}
        ),
        ("GET", "/api/node/power"): Operation(
            "Node watts against the budget, their source, per-agent watts.", "operator", {JSON: ANY_OBJECT},
            errors=(503,),
        ),
        ("GET", "/api/node/power/stream"): Operation(
            "The node power report as SSE, 1 Hz.",
            "operator",
            {SSE: _events("power")},
            params=(Param("count", "query", {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                          "End the stream after this many events."),),
            errors=(400, 503),
        ),
        ("GET", "/api/node/power/history"): Operation(
            "Node watts and the top agents by energy over the last minutes.",
            "operator",
            {JSON: ANY_OBJECT},
            params=(Param("minutes", "query", {"type": "integer", "minimum": 1, "maximum": 90 * 24 * 60},
                          "How far back (default 60)."),),
            errors=(400, 503),
        ),
        ("GET", "/api/node/power/chart"): Operation(
            "Node watts and the top-10 agents by energy, bucketed for a chart.",
            "operator",
            {JSON: ANY_OBJECT},
            params=(Param("window", "query", {"type": "string", "enum": sorted(CHART_WINDOWS)}, "Span (default 1h)."),),
            errors=(422, 503),
        ),
        ("GET", "/api/node/storage"): Operation(
            "QSS backends, fragments, scrubs and repairs.", "operator", {JSON: ANY_OBJECT}, errors=(503,)
        ),
        ("GET", "/api/node/net"): Operation(
            "The overlay: address, peers, routes, per-link traffic, TUN, agent messages (404 when none runs).",
            "operator",
            {JSON: ANY_OBJECT},
            errors=(404,),
        ),
        ("GET", "/api/node/cluster"): Operation(
            "The cluster's live nodes: id, address, watts, headroom and agents of each (404 on a lone node).",
            "operator",
            {JSON: ANY_OBJECT},
            errors=(404,),
        ),
        ("POST", "/mcp"): Operation(
            "MCP (streamable HTTP, JSON answers) for your own agent: `tools/list` lists its skills' tools, "
            "`tools/call` calls one as your agent (its permissions, its ledger).",
            "user",
            {JSON: ANY_OBJECT},
            body=fields(
                ("jsonrpc", "id", "method"),
                jsonrpc={"const": "2.0"},
                id={"type": ["integer", "string"]},
                method={"type": "string", "enum": ["initialize", "ping", "tools/list", "tools/call"]},
                params=ANY_OBJECT,
            ),
            accepted="A JSON-RPC notification (no `id`) was taken; there is nothing to answer.",
            example={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        ),
        ("GET", "/metrics"): Operation(
            "Prometheus text (node and per-agent watts, ...).", "operator", {"text/plain": STRING}, errors=(503,)
        ),
        ("GET", "/healthz"): Operation(
            "Liveness.",
            "public",
            {JSON: fields(("status", "uptime", "model_loaded"), status={"const": "ok"}, uptime=NUMBER,
                           model_loaded=BOOLEAN)},
        ),
        ("GET", "/openapi.json"): Operation("This document.", "public", {JSON: ANY_OBJECT}),
        ("GET", "/"): Operation("The chat app (an installable PWA).", "public", page),
        ("GET", "/dashboard"): Operation("The operator's live dashboard.", "public", page),
        ("GET", "/manifest.webmanifest"): Operation(
            "The web app manifest.", "public", {"application/manifest+json": ANY_OBJECT}
        ),
        ("GET", "/sw.js"): Operation("The service worker.", "public", {"text/javascript": STRING}),
        ("GET", "/static/{path}"): Operation(
            "The pages' own scripts, styles and icons.",
            "public",
            {"*/*": {}},
            params=(Param("path", "path", STRING, "A file under static/.", required=True, example="app.css"),),
            errors=(404,),
        ),
    }
