"""Every path and method of Qdrant's reference OpenAPI is routed by Shoal.

Walks `paths` of the reference description and sends each operation with its path parameters
filled in for a real collection; the answer must come from a handler, never from the router's
"no such endpoint" (404) or "method not allowed" (405) fallbacks. A handler's own 4xx (a body
this walk does not fill, a point that does not exist) is fine: the operation is served.

"""

from __future__ import annotations

import json

import pytest

from conftest import REPO

SCHEMA = REPO.parent / "shared" / "reference" / "qdrant-openapi-v1.18.3.json"

# Operations that would end the walk's own fixtures or the node's cluster membership are sent
# for a name that does not exist: their handler answers 404 (not the router).
HARMLESS_TARGETS = {
    ("/collections/{collection_name}", "delete"): {"collection_name": "walk-missing"},
    ("/cluster/peer/{peer_id}", "delete"): {"peer_id": "987654321"},
}

METHODS = ("get", "put", "post", "patch", "delete")


def operations():
    if not SCHEMA.exists():
        return []
    spec = json.loads(SCHEMA.read_text())
    return [(path, method) for path, item in sorted(spec["paths"].items()) for method in METHODS if method in item]


def routed_by_router_fallback(response) -> bool:
    """Whether the answer is the router's fallback rather than a handler's."""
    if response.status_code == 405:
        return True
    if response.status_code == 404:
        try:
            message = response.json()["status"]["error"]
        except Exception:
            return True
        return "no such endpoint" in message
    return False


@pytest.fixture(scope="module")
def walk_collection(client, http):
    from qdrant_client import models as m

    name = "walk"
    client.create_collection(name, vectors_config=m.VectorParams(size=2, distance=m.Distance.DOT))
    client.upsert(name, points=[m.PointStruct(id=1, vector=[1.0, 0.0], payload={"f": "a"})], wait=True)
    yield name
    client.delete_collection(name)


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"reference schema not found at {SCHEMA}")
@pytest.mark.parametrize("path,method", operations())
def test_every_reference_operation_is_routed(http, walk_collection, path, method):
    params = {
        "collection_name": walk_collection,
        "shard_id": "0",
        "snapshot_name": "missing.snapshot",
        "field_name": "f",
        "vector_name": "walk_vector",
        "id": "1",
        "peer_id": "1",
    }
    params.update(HARMLESS_TARGETS.get((path, method), {}))
    url = path
    for key, value in params.items():
        url = url.replace("{" + key + "}", value)
    assert "{" not in url, f"unfilled path parameter in {url}"
    kwargs = {} if method in ("get", "delete") else {"json": {}}
    response = http.request(method.upper(), url, **kwargs)
    fallback = routed_by_router_fallback(response)
    assert not fallback, f"{method.upper()} {path} is not routed: {response.status_code} {response.text[:300]}"
