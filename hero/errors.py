"""Typed errors. Raised where a fault is detected, mapped to HTTP or CLI once, at the edge.

Each error carries the HTTP status the web edge answers with; the CLI maps
user errors to exit code 2 and prints the message on one line.
"""

from __future__ import annotations


class HeroError(Exception):
    """Base of every error Hero raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict:
        body: dict = {"error": {"message": self.message, "type": self.code}}
        if self.field is not None:
            body["error"]["param"] = self.field
        return body


class BadRequest(HeroError):
    status = 400
    code = "invalid_request_error"


class InvalidField(BadRequest):
    """A request field has the wrong type or value; `field` names it."""

    status = 422


class Unauthorized(HeroError):
    status = 401
    code = "unauthorized"


class Forbidden(HeroError):
    status = 403
    code = "forbidden"


class NotFound(HeroError):
    status = 404
    code = "not_found"


class Conflict(HeroError):
    status = 409
    code = "conflict"


class PayloadTooLarge(HeroError):
    status = 413
    code = "payload_too_large"


class Overloaded(HeroError):
    """The node is over its power budget or queue limit; retry later."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(Overloaded):
    """The caller already holds as many open event streams as one user may; close one or retry later."""

    code = "too_many_streams"


class Unavailable(HeroError):
    status = 503
    code = "unavailable"


class StaleEpoch(Conflict):
    """A write carried a lease epoch older than the object's head: another owner fenced us out."""

    code = "stale_epoch"


class LeaseHeld(Conflict):
    """Another owner holds a live lease on this agent; `owner` names that node when known (to route to it)."""

    code = "lease_held"

    def __init__(self, message: str, *, owner: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner


class AgentDamaged(Unavailable):
    """The agent's stored objects cannot be read, so it is not run; its user is told, the operator sees why."""

    code = "agent_damaged"


class AgentRefused(Unavailable):
    """The node does not activate the agent: its spec does not verify (the message says why); others run."""

    code = "agent_refused"


class StorageError(Unavailable):
    """The store could not complete an operation (backend down, quorum not reached, disk full)."""

    code = "storage_error"


class IntegrityError(StorageError):
    """Stored data failed a hash, signature or authentication check; it is never returned as data."""

    code = "integrity_error"


class ModelError(Unavailable):
    code = "model_error"


class AgentError(HeroError):
    """An agent's turn raised; the agent keeps running and the user is told."""

    status = 500
    code = "agent_error"


class UsageError(HeroError):
    """Bad command-line use: the CLI prints the message and exits with code 2."""

    status = 400
    code = "usage_error"


class SkillRefused(Forbidden):
    """A skill bundle is not loaded: unsigned, tampered, signed by an untrusted key, or a bad manifest."""

    code = "skill_refused"


class PermissionDenied(Forbidden):
    """A skill asked for something outside the permissions its manifest declares."""

    code = "permission_denied"


class InvalidArguments(InvalidField):
    """A tool was called with arguments its schema does not allow; `field` names the argument."""

    code = "invalid_arguments"


class SkillFailed(AgentError):
    """A skill raised, ran past its time limit or returned what is not JSON; the agent goes on."""

    code = "skill_failed"


class SpecRefused(Forbidden):
    """An agent's spec is not signed as the node's policy requires (or names skills the node does not have)."""

    code = "spec_refused"
