"""The fragment server behind `hero storage serve`: a DirBackend over signed HTTP.

It stores what trusted nodes send and sees only ciphertext fragments, their
hashes and opaque manifest names. Every fragment is re-hashed on arrival, so
a corrupted upload is refused rather than stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import HeroError, IntegrityError, PayloadTooLarge
from hero.store import reqsign
from hero.store.backends.directory import DirBackend
from hero.store.backends.protocol import BackendFull
from hero.store.backends.wire import decode_digests, decode_fragments, encode_found

MAX_BODY = 256 << 20


def create_app(backend: DirBackend, trusted: Iterable[str], *, max_body: int = MAX_BODY) -> Starlette:
    verifier = reqsign.Verifier(trusted)

    async def body_of(request: Request) -> bytes:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_body:
            raise PayloadTooLarge(f"request body over {max_body} bytes")
        body = await request.body()
        if len(body) > max_body:
            raise PayloadTooLarge(f"request body over {max_body} bytes")
        raw = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = (raw + (b"?" + query if query else b"")).decode("latin-1")  # exactly what the client signed
        verifier.verify(request.headers, request.method, target, body)
        return body

    def flag(request: Request, name: str) -> bool:
        return request.query_params.get(name, "0") == "1"

    async def put_fragments(request: Request) -> Response:
        items = decode_fragments(await body_of(request))
        await backend.put_fragments(items, replace=flag(request, "replace"))
        return Response(status_code=204)

    async def get_fragments(request: Request) -> Response:
        found = await backend.get_fragments(decode_digests(await body_of(request)))
        return Response(encode_found(found), media_type="application/octet-stream")

    async def delete_fragments(request: Request) -> Response:
        removed = await backend.delete_fragments(decode_digests(await body_of(request)))
        return JSONResponse({"removed": removed})

    async def list_fragments(request: Request) -> Response:
        await body_of(request)
        found = await backend.list_fragments()
        return JSONResponse({"fragments": [[f.digest, f.size, f.mtime] for f in found]})

    async def put_meta(request: Request) -> Response:
        body = await body_of(request)
        created = await backend.put_meta(request.path_params["name"], body, replace=flag(request, "replace"))
        return Response(status_code=201 if created else 200)

    async def get_meta(request: Request) -> Response:
        await body_of(request)
        data = await backend.get_meta(request.path_params["name"])
        if data is None:
            return JSONResponse({"error": {"message": "no such meta file", "type": "not_found"}}, status_code=404)
        return Response(data, media_type="application/octet-stream")

    async def list_meta(request: Request) -> Response:
        await body_of(request)
        return JSONResponse({"names": await backend.list_meta(request.path_params["name"])})

    async def delete_meta(request: Request) -> Response:
        try:
            names = json.loads(await body_of(request))
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return JSONResponse({"error": {"message": "body must be a JSON list of names", "type": "invalid"}}, 400)
        return JSONResponse({"removed": await backend.delete_meta(names)})

    async def status(request: Request) -> Response:
        await body_of(request)
        stat = await backend.stat()
        return JSONResponse({**stat.to_json(), "name": backend.name, "location": backend.location})

    async def hero_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HeroError)
        code = 507 if isinstance(exc, BackendFull) else 400 if isinstance(exc, IntegrityError) else exc.status
        return JSONResponse(exc.to_json(), status_code=code)

    routes = [
        Route("/v1/fragments/put", put_fragments, methods=["POST"]),
        Route("/v1/fragments/get", get_fragments, methods=["POST"]),
        Route("/v1/fragments/delete", delete_fragments, methods=["POST"]),
        Route("/v1/fragments", list_fragments, methods=["GET"]),
        Route("/v1/meta/{name:path}", put_meta, methods=["PUT"]),
        Route("/v1/meta/{name:path}", get_meta, methods=["GET"]),
        Route("/v1/meta-list/{name:path}", list_meta, methods=["GET"]),
        Route("/v1/meta-delete", delete_meta, methods=["POST"]),
        Route("/v1/status", status, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HeroError: hero_error})
