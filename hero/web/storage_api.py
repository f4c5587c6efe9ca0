"""`GET /api/node/storage`: the storage health the operator dashboard shows (operator only).

Backends with location and up/down/full, fragment counts, last scrub and
repairs come from the store's own `status()`; a store without one (another
StateStore) is reported as such rather than failing the dashboard.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hero.seams.store import StoreStatus
from hero.web.auth import require_operator
from hero.web.parts import parts


async def storage_status(request: Request) -> JSONResponse:
    await require_operator(request)
    store = parts(request).store
    if not isinstance(store, StoreStatus):
        return JSONResponse({"store": type(store).__name__, "backends": [], "detail": "this store reports no status"})
    return JSONResponse(await store.status())


def routes() -> list[Route]:
    return [Route("/api/node/storage", storage_status, methods=["GET"])]
