"""API-key authentication: a node started with --api-key secret-rw --read-only-api-key secret-ro."""

import warnings

import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import RO_KEY, RW_KEY, Http, make_client, unique_name

VEC = [0.1, 0.2, 0.3, 0.4]


@pytest.fixture(scope="module")
def anon(auth_node):
    h = Http(auth_node.base_url)
    yield h
    h.close()


@pytest.fixture(scope="module")
def rw_http(auth_node):
    h = Http(auth_node.base_url, headers={"api-key": RW_KEY})
    yield h
    h.close()


@pytest.fixture(scope="module")
def bearer_http(auth_node):
    h = Http(auth_node.base_url, headers={"Authorization": f"Bearer {RW_KEY}"})
    yield h
    h.close()


@pytest.fixture(scope="module")
def ro_http(auth_node):
    h = Http(auth_node.base_url, headers={"api-key": RO_KEY})
    yield h
    h.close()


def _client(auth_node, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Api key is used with an insecure connection."
        return make_client(auth_node.base_url, api_key=key)


@pytest.fixture(scope="module")
def rw_client(auth_node):
    c = _client(auth_node, RW_KEY)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ro_client(auth_node):
    c = _client(auth_node, RO_KEY)
    yield c
    c.close()


@pytest.fixture(scope="module")
def seeded(rw_client):
    """A collection with 3 points, owned by the read-write key."""
    name = unique_name("auth")
    rw_client.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    rw_client.upsert(
        name,
        points=[models.PointStruct(id=i, vector=[float(i), 1.0, 0.0, 0.0], payload={"i": i}) for i in (1, 2, 3)],
        wait=True,
    )
    yield name
    rw_client.delete_collection(name)


def endpoints(c, new_name=None):
    """(kind, method, path, json) for every data/admin endpoint exercised here.

    Ordered so that running them all in sequence with a valid key succeeds:
    reads, payload writes, point deletion, collection creation, collection drop.
    """
    new_name = new_name or unique_name("anon")
    return [
        ("read", "GET", "/collections", None),
        ("read", "GET", "/metrics", None),
        ("read", "GET", f"/collections/{c}", None),
        ("read", "GET", f"/collections/{c}/exists", None),
        ("read", "GET", f"/collections/{c}/points/1", None),
        ("read", "POST", f"/collections/{c}/points", {"ids": [1]}),
        ("read", "POST", f"/collections/{c}/points/scroll", {"limit": 10}),
        ("read", "POST", f"/collections/{c}/points/count", {}),
        ("read", "POST", f"/collections/{c}/points/search", {"vector": VEC, "limit": 2}),
        ("read", "POST", f"/collections/{c}/points/search/batch", {"searches": [{"vector": VEC, "limit": 2}]}),
        ("read", "POST", f"/collections/{c}/points/query", {"query": VEC, "limit": 2}),
        ("read", "POST", f"/collections/{c}/points/query/batch", {"searches": [{"query": VEC, "limit": 2}]}),
        ("write", "PUT", f"/collections/{c}/points?wait=true", {"points": [{"id": 9, "vector": VEC}]}),
        ("write", "POST", f"/collections/{c}/points/payload?wait=true", {"payload": {"x": 1}, "points": [1]}),
        ("write", "PUT", f"/collections/{c}/points/payload?wait=true", {"payload": {"x": 1}, "points": [1]}),
        ("write", "POST", f"/collections/{c}/points/payload/delete?wait=true", {"keys": ["x"], "points": [1]}),
        ("write", "POST", f"/collections/{c}/points/payload/clear?wait=true", {"points": [1]}),
        ("write", "POST", f"/collections/{c}/points/delete?wait=true", {"points": [1]}),
        ("create", "PUT", f"/collections/{new_name}", {"vectors": {"size": 4, "distance": "Dot"}}),
        ("drop", "DELETE", f"/collections/{c}", None),
    ]


def snapshot(rw_client, name):
    recs, _ = rw_client.scroll(name, limit=100, with_payload=True, with_vectors=True)
    return [(r.id, r.payload, r.vector) for r in recs]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/livez"])
def test_health_is_open(anon, path):
    r = anon.get(path)
    assert r.status_code == 200, r.text


def test_root_is_open(anon):
    # Qdrant whitelists "/" (version info) alongside the health endpoints.
    r = anon.get("/")
    assert r.status_code == 200, r.text
    assert "version" in r.json()


def test_no_key_is_401_everywhere(anon, rw_client, seeded):
    before = snapshot(rw_client, seeded)
    failures = []
    new_name = unique_name("anon")
    for _kind, method, path, body in endpoints(seeded, new_name):
        r = anon.request(method, path, json=body)
        if r.status_code != 401:
            failures.append(f"{method} {path}: {r.status_code} {r.text[:120]}")
    assert not failures, "expected 401 without a key:\n" + "\n".join(failures)
    assert rw_client.collection_exists(seeded)
    assert not rw_client.collection_exists(new_name)
    assert snapshot(rw_client, seeded) == before


@pytest.mark.parametrize(
    "headers",
    [{"api-key": "wrong"}, {"Authorization": "Bearer wrong"}, {"api-key": RW_KEY + "x"}, {"Authorization": RW_KEY}],
    ids=["bad_api_key", "bad_bearer", "key_prefix", "bearer_without_scheme"],
)
def test_wrong_key_rejected(auth_node, rw_client, seeded, headers):
    h = Http(auth_node.base_url, headers=headers)
    try:
        for method, path, body in (
            ("GET", "/collections", None),
            ("POST", f"/collections/{seeded}/points/scroll", {"limit": 10}),
            ("PUT", f"/collections/{seeded}/points?wait=true", {"points": [{"id": 9, "vector": VEC}]}),
        ):
            r = h.request(method, path, json=body)
            assert r.status_code in (401, 403), f"{headers} {method} {path}: {r.status_code} {r.text[:200]}"
    finally:
        h.close()
    assert rw_client.retrieve(seeded, ids=[9]) == []


def test_rw_api_key_header_full_lifecycle(rw_client):
    name = unique_name("rw")
    assert rw_client.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    try:
        assert rw_client.collection_exists(name)
        rw_client.upsert(name, points=[models.PointStruct(id=1, vector=VEC, payload={"a": 1})], wait=True)
        rw_client.set_payload(name, payload={"b": 2}, points=[1], wait=True)
        assert rw_client.retrieve(name, ids=[1])[0].payload == {"a": 1, "b": 2}
        assert rw_client.count(name).count == 1
        assert [p.id for p in rw_client.query_points(name, query=VEC, limit=1).points] == [1]
        assert len(rw_client.scroll(name)[0]) == 1
        assert name in {c.name for c in rw_client.get_collections().collections}
        rw_client.delete(name, points_selector=[1], wait=True)
        assert rw_client.count(name).count == 0
    finally:
        assert rw_client.delete_collection(name) is True
    assert not rw_client.collection_exists(name)


def test_rw_bearer_token_everything(bearer_http, rw_http):
    name = unique_name("bearer")
    other = unique_name("bearer2")
    r = bearer_http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}})
    assert r.status_code == 200, r.text
    r = bearer_http.put(f"/collections/{name}/points?wait=true", json={"points": [{"id": 1, "vector": VEC}]})
    assert r.status_code == 200, r.text
    try:
        for _kind, method, path, body in endpoints(name, other):
            r = bearer_http.request(method, path, json=body)
            assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert rw_http.get(f"/collections/{other}").status_code == 200
        assert rw_http.get(f"/collections/{name}").status_code == 404  # dropped by the last request
    finally:
        bearer_http.delete(f"/collections/{name}")
        bearer_http.delete(f"/collections/{other}")
    assert rw_http.get(f"/collections/{other}").status_code == 404


def test_ro_key_can_read(ro_client, ro_http, seeded):
    info = ro_client.get_collection(seeded)
    assert info.points_count == 3
    assert ro_client.collection_exists(seeded)
    assert seeded in {c.name for c in ro_client.get_collections().collections}
    recs, _ = ro_client.scroll(seeded, limit=10)
    assert [r.id for r in recs] == [1, 2, 3]
    assert ro_client.count(seeded).count == 3
    assert len(ro_client.retrieve(seeded, ids=[1, 2])) == 2
    res = ro_client.query_points(seeded, query=[1.0, 0.0, 0.0, 0.0], limit=2).points
    assert [p.id for p in res] == [3, 2]
    assert len(ro_client.query_batch_points(seeded, requests=[models.QueryRequest(query=VEC, limit=1)])) == 1
    r = ro_http.post(f"/collections/{seeded}/points/search", json={"vector": [1.0, 0, 0, 0], "limit": 2})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["result"]] == [3, 2]
    r = ro_http.post(f"/collections/{seeded}/points/search/batch", json={"searches": [{"vector": VEC, "limit": 1}]})
    assert r.status_code == 200, r.text
    r = ro_http.get(f"/collections/{seeded}/points/2")
    assert r.status_code == 200, r.text


def test_ro_key_cannot_write(ro_client, ro_http, rw_client, seeded):
    before = snapshot(rw_client, seeded)
    writes = [
        lambda: ro_client.upsert(seeded, points=[models.PointStruct(id=50, vector=VEC)], wait=True),
        lambda: ro_client.delete(seeded, points_selector=[1], wait=True),
        lambda: ro_client.set_payload(seeded, payload={"x": 1}, points=[1], wait=True),
        lambda: ro_client.overwrite_payload(seeded, payload={"x": 1}, points=[1], wait=True),
        lambda: ro_client.delete_payload(seeded, keys=["i"], points=[1], wait=True),
        lambda: ro_client.clear_payload(seeded, points_selector=[1], wait=True),
        lambda: ro_client.delete_collection(seeded),
        lambda: ro_client.create_collection(
            unique_name("ro"), vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT)
        ),
    ]
    for i, w in enumerate(writes):
        with pytest.raises(UnexpectedResponse) as ei:
            w()
        assert ei.value.status_code == 403, f"write #{i}: expected 403, got {ei.value.status_code}"
    r = ro_http.put(f"/collections/{seeded}/points?wait=true", json={"points": [{"id": 51, "vector": VEC}]})
    assert r.status_code == 403
    assert rw_client.collection_exists(seeded)
    assert snapshot(rw_client, seeded) == before
    assert len([c for c in rw_client.get_collections().collections if c.name.startswith("ro_")]) == 0


def test_ro_key_raw_matrix(ro_http, rw_client, seeded):
    """Every read endpoint is allowed for the read-only key, every write is 403."""
    before = snapshot(rw_client, seeded)
    new_name = unique_name("ro")
    failures = []
    for kind, method, path, body in endpoints(seeded, new_name):
        r = ro_http.request(method, path, json=body)
        want = 200 if kind == "read" else 403
        if r.status_code != want:
            failures.append(f"{kind} {method} {path}: want {want}, got {r.status_code} {r.text[:120]}")
    assert not failures, "\n".join(failures)
    assert not rw_client.collection_exists(new_name)
    assert snapshot(rw_client, seeded) == before
