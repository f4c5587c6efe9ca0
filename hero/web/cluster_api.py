"""`GET /api/node/cluster`: the cluster's live nodes as the operator's dashboard shows them (operator only; a
404 on a node that is no cluster's member)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hero.errors import NotFound
from hero.seams.cluster import ClusterRouting
from hero.web.auth import require_operator
from hero.web.gateway import routing_view


async def cluster_nodes(request: Request) -> JSONResponse:
    await require_operator(request)
    cluster: ClusterRouting | None = getattr(request.app.state, "cluster", None)
    if cluster is None:
        raise NotFound("this node is no cluster's member (started without --ray)")
    return JSONResponse({"node_id": cluster.node_id, "nodes": routing_view(cluster.nodes())})


def routes() -> list[Route]:
    return [Route("/api/node/cluster", cluster_nodes, methods=["GET"])]
