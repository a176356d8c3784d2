"""Error handling: status codes, error body shape, and no side effects on failure."""

import numpy as np
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import state_of, unique_name


def assert_error_body(r, *codes):
    assert r.status_code in codes, f"expected {codes}, got {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert isinstance(body.get("status"), dict), f"error body must be {{'status': {{'error': ...}}}}: {body}"
    msg = body["status"].get("error")
    assert isinstance(msg, str) and msg.strip(), f"empty error message: {body}"
    assert isinstance(body.get("time"), (int, float)), f"error body lacks numeric 'time': {body}"
    return msg


def assert_4xx_body(r):
    assert 400 <= r.status_code < 500, f"expected 4xx, got {r.status_code}: {r.text[:300]}"
    return assert_error_body(r, r.status_code)


def expect_client_error(fn, *codes):
    with pytest.raises(UnexpectedResponse) as ei:
        fn()
    err = ei.value
    if codes:
        assert err.status_code in codes, f"expected {codes}, got {err.status_code}: {err.content[:300]!r}"
    else:
        assert 400 <= err.status_code < 500, f"expected 4xx, got {err.status_code}"
    body = err.structured()
    assert body["status"]["error"].strip()
    return err


@pytest.fixture
def populated(client, collection):
    name = collection(size=4, distance=models.Distance.EUCLID)
    rng = np.random.default_rng(123)
    v = rng.normal(size=(12, 4)).astype(np.float32)
    client.upsert(
        name,
        points=[models.PointStruct(id=i, vector=v[i].tolist(), payload={"i": i, "tag": "x"}) for i in range(12)],
        wait=True,
    )
    before = state_of(client, name)
    assert before["count"] == 12
    yield name, before
    # every test in this module ends by checking the collection is untouched
    assert state_of(client, name) == before, "a failed request modified the collection"


# --------------------------------------------------------------------------- 400: bad input


@pytest.mark.parametrize(
    "method,path,data",
    [
        ("PUT", "/points?wait=true", '{"points": [{"id": 1, "vector": [1,2,3,4]'),
        ("PUT", "/points?wait=true", "not json at all"),
        ("POST", "/points/scroll", '{"limit": 5,,}'),
        ("POST", "/points/search", '{"vector": [1, 2, 3, 4], "limit": }'),
        ("POST", "/points/query", "{"),
        ("POST", "/points/delete?wait=true", '{"points": [1, 2'),
        ("POST", "/points/payload?wait=true", '{"payload": {"a": 1}, "points": [1}'),
    ],
)
def test_malformed_json_is_400(http, populated, method, path, data):
    name, _ = populated
    r = http.request(method, f"/collections/{name}{path}", data=data, headers={"Content-Type": "application/json"})
    assert_error_body(r, 400)


def test_malformed_json_on_create_collection(http, client):
    name = unique_name()
    r = http.put(f"/collections/{name}", data='{"vectors": {"size": 4,', headers={"Content-Type": "application/json"})
    assert_error_body(r, 400)
    assert client.collection_exists(name) is False


def test_wrong_vector_size_upsert(client, populated):
    name, _ = populated
    expect_client_error(
        lambda: client.upsert(name, points=[models.PointStruct(id=100, vector=[1.0, 2.0, 3.0])], wait=True), 400
    )
    # a batch where only one vector is wrong must not be partially applied
    expect_client_error(
        lambda: client.upsert(
            name,
            points=[
                models.PointStruct(id=101, vector=[1.0, 2.0, 3.0, 4.0]),
                models.PointStruct(id=0, vector=[9.0, 9.0, 9.0, 9.0, 9.0]),
            ],
            wait=True,
        ),
        400,
    )
    expect_client_error(
        lambda: client.upsert(name, points=models.Batch(ids=[102, 103], vectors=[[1.0] * 4, [1.0] * 2]), wait=True),
        400,
    )


def test_wrong_vector_size_search(client, http, populated):
    name, _ = populated
    expect_client_error(lambda: client.query_points(name, query=[1.0, 2.0], limit=3), 400)
    r = http.post(f"/collections/{name}/points/search", json={"vector": [1.0] * 5, "limit": 3})
    assert_error_body(r, 400)


def test_batch_ids_vectors_length_mismatch(client, populated):
    name, _ = populated
    expect_client_error(
        lambda: client.upsert(name, points=models.Batch(ids=[200, 201, 202], vectors=[[1.0] * 4, [2.0] * 4])),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"points": [{"id": -1, "vector": [1, 2, 3, 4]}]},
        {"points": [{"id": "not-a-uuid", "vector": [1, 2, 3, 4]}]},
        {"points": [{"id": 1.5, "vector": [1, 2, 3, 4]}]},
        {"points": [{"id": 1, "vector": "nope"}]},
        {"points": [{"id": 1, "vector": [1, 2, "x", 4]}]},
        {"points": [{"vector": [1, 2, 3, 4]}]},
        {"points": [{"id": 1, "vector": [1, 2, 3, 4], "payload": [1, 2]}]},
        {"pointz": []},
    ],
    ids=["negative_id", "bad_uuid", "float_id", "vector_string", "vector_non_numeric", "missing_id",
         "payload_not_object", "unknown_shape"],
)
def test_invalid_upsert_bodies(http, populated, body):
    name, _ = populated
    r = http.put(f"/collections/{name}/points?wait=true", json=body)
    assert_4xx_body(r)


@pytest.mark.parametrize(
    "flt",
    [
        {"must": [{"key": "i", "match": {"nope": 1}}]},
        {"must": "i == 1"},
        {"must": [{"key": "i", "range": {"gte": "ten"}}]},
        {"must": [{"unknown_condition": 1}]},
        {"bogus_clause": []},
        {"must": [{"has_id": "1"}]},
        {"min_should": {"conditions": [{"key": "i", "match": {"value": 1}}]}},
    ],
    ids=["bad_match", "must_string", "range_string", "unknown_condition", "unknown_clause", "has_id_string",
         "min_should_without_min_count"],
)
def test_bad_filter_shape_is_400(http, populated, flt):
    name, _ = populated
    for path, extra in (
        ("/points/scroll", {"limit": 5}),
        ("/points/count", {}),
        ("/points/search", {"vector": [0, 0, 0, 0], "limit": 3}),
        ("/points/query", {"query": [0, 0, 0, 0], "limit": 3}),
    ):
        r = http.post(f"/collections/{name}{path}", json={"filter": flt, **extra})
        assert_error_body(r, 400)
    # and destructive operations with a bad filter must not do anything
    r = http.post(f"/collections/{name}/points/delete?wait=true", json={"filter": flt})
    assert_error_body(r, 400)
    r = http.post(f"/collections/{name}/points/payload?wait=true", json={"payload": {"z": 1}, "filter": flt})
    assert_error_body(r, 400)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/points/scroll", {"limit": 0}),
        ("/points/scroll", {"limit": -3}),
        ("/points/search", {"vector": [0, 0, 0, 0], "limit": 0}),
        ("/points/search", {"vector": [0, 0, 0, 0]}),  # limit is required for search
        ("/points/query", {"query": [0, 0, 0, 0], "limit": 0}),
        ("/points/query", {"query": [0, 0, 0, 0], "limit": 3, "offset": -1}),
        ("/points/search/batch", {"searches": [{"vector": [0, 0, 0, 0], "limit": 0}]}),
        ("/points/query/batch", {"searches": [{"query": [0, 0, 0, 0], "limit": 0}]}),
        ("/points", {"ids": "1"}),
    ],
    ids=["scroll_limit0", "scroll_limit_neg", "search_limit0", "search_no_limit", "query_limit0", "query_offset_neg",
         "search_batch_limit0", "query_batch_limit0", "retrieve_ids_string"],
)
def test_invalid_values_are_4xx(http, populated, path, body):
    name, _ = populated
    r = http.post(f"/collections/{name}{path}", json=body)
    assert_4xx_body(r)


def test_limit_zero_via_client(client, populated):
    name, _ = populated
    expect_client_error(lambda: client.scroll(name, limit=0))
    expect_client_error(lambda: client.query_points(name, query=[0.0] * 4, limit=0))


def test_query_unknown_point_id(client, populated):
    name, _ = populated
    err = expect_client_error(lambda: client.query_points(name, query=999_999, limit=3))
    assert err.status_code in (400, 404)
    expect_client_error(
        lambda: client.query_points(
            name, query=models.RecommendQuery(recommend=models.RecommendInput(positive=[999_998])), limit=3
        )
    )


# --------------------------------------------------------------------------- 404 / 409


def test_unknown_collection_is_404(client, http):
    missing = unique_name("missing")
    expect_client_error(lambda: client.get_collection(missing), 404)
    expect_client_error(lambda: client.upsert(missing, points=[models.PointStruct(id=1, vector=[1.0])]), 404)
    expect_client_error(lambda: client.scroll(missing), 404)
    expect_client_error(lambda: client.count(missing), 404)
    expect_client_error(lambda: client.retrieve(missing, ids=[1]), 404)
    expect_client_error(lambda: client.query_points(missing, query=[1.0], limit=1), 404)
    expect_client_error(lambda: client.delete(missing, points_selector=[1]), 404)
    expect_client_error(lambda: client.set_payload(missing, payload={"a": 1}, points=[1]), 404)
    for method, path, body in (
        ("GET", "", None),
        ("GET", "/points/1", None),
        ("POST", "/points/search", {"vector": [1.0], "limit": 1}),
        ("POST", "/points/search/batch", {"searches": [{"vector": [1.0], "limit": 1}]}),
        ("POST", "/points/query/batch", {"searches": [{"query": [1.0], "limit": 1}]}),
    ):
        r = http.request(method, f"/collections/{missing}{path}", json=body)
        assert_error_body(r, 404)
    assert client.collection_exists(missing) is False


def test_delete_unknown_collection(http):
    r = http.delete(f"/collections/{unique_name('missing')}")
    # Qdrant answers either 404 or 200 with result=false; anything else is wrong.
    if r.status_code == 200:
        assert r.json()["result"] is False
    else:
        assert_error_body(r, 404)


def test_create_existing_collection_is_409(client, http, populated):
    name, _ = populated
    err = expect_client_error(
        lambda: client.create_collection(name, vectors_config=models.VectorParams(size=9, distance=models.Distance.DOT)),
        409,
    )
    assert name in err.structured()["status"]["error"] or "exist" in err.structured()["status"]["error"].lower()
    r = http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Euclid"}})
    assert_error_body(r, 409)
    cfg = client.get_collection(name).config.params.vectors
    assert cfg.size == 4 and cfg.distance == models.Distance.EUCLID


@pytest.mark.parametrize(
    "body",
    [
        {"vectors": {"size": 4, "distance": "Hamming"}},
        {"vectors": {"size": 0, "distance": "Cosine"}},
        {"vectors": {"size": -4, "distance": "Cosine"}},
        {"vectors": {"distance": "Cosine"}},
        {"vectors": {"size": "four", "distance": "Cosine"}},
        {"vectors": {"size": 4, "distance": "Cosine"}, "shard_number": 0},
        {"vectors": {"size": 4, "distance": "Cosine"}, "hnsw_config": {"m": "many"}},
    ],
    ids=["bad_distance", "size0", "size_negative", "size_missing", "size_string", "shard_number0", "hnsw_bad_type"],
)
def test_invalid_create_collection(http, client, body):
    name = unique_name()
    r = http.put(f"/collections/{name}", json=body)
    try:
        assert_4xx_body(r)
    finally:
        if r.status_code == 200:
            http.delete(f"/collections/{name}")
    assert client.collection_exists(name) is False


def test_invalid_collection_name(http):
    # '/' can't be expressed; names with characters Qdrant forbids must be rejected
    for bad in ("a%2Fb", "x" * 300):
        r = http.put(f"/collections/{bad}", json={"vectors": {"size": 4, "distance": "Cosine"}})
        assert 400 <= r.status_code < 500, f"{bad!r}: {r.status_code} {r.text[:200]}"


def test_point_not_found_is_404(http, populated):
    name, _ = populated
    r = http.get(f"/collections/{name}/points/424242")
    assert_error_body(r, 404)
    r = http.get(f"/collections/{name}/points/00000000-0000-0000-0000-00000000abcd")
    assert_error_body(r, 404)
    r = http.get(f"/collections/{name}/points/not-an-id")
    assert_4xx_body(r)


def test_errors_leave_collection_usable(client, populated):
    """After a series of rejected requests the collection still works normally."""
    name, before = populated
    for _ in range(3):
        with pytest.raises(UnexpectedResponse):
            client.upsert(name, points=[models.PointStruct(id=1, vector=[1.0])], wait=True)
    assert client.count(name).count == before["count"]
    res = client.query_points(name, query=[0.0, 0.0, 0.0, 0.0], limit=12).points
    assert len(res) == 12


def _nested(depth):
    """A payload object nested `depth` levels deep, counting the object itself: {"n": {"n": ... 1}}."""
    value = 1
    for _ in range(depth - 1):
        value = {"n": value}
    return {"n": value} if depth > 0 else {}


@pytest.mark.parametrize(
    "path,body",
    [
        # A 120-part key adds 120 levels to a payload that is shallow on its own.
        ("/points/payload", {"points": [1], "key": ".".join(["k"] * 120), "payload": {"x": 1}}),
        ("/points/payload", {"points": [1], "payload": _nested(101)}),
        ("/points/payload", {"points": [1], "key": ".".join(["k"] * 60), "payload": _nested(45)}),
    ],
    ids=["set_key_120_parts", "set_101_deep", "set_key_plus_value"],
)
def test_payloads_nested_past_the_limit_are_400(http, populated, path, body):
    """Shoal refuses payloads nested deeper than 100 levels (stored payloads are read back as
    JSON, which stops at 128): a refused write changes nothing, and the fixture checks it."""
    name, _ = populated
    r = http.post(f"/collections/{name}{path}?wait=true", json=body)
    msg = assert_error_body(r, 400)
    assert "levels deep" in msg, msg


def test_deep_payload_in_upsert_and_batch_is_400_and_applies_nothing(http, populated):
    name, _ = populated
    deep = {"id": 1, "vector": [0.0, 0.0, 0.0, 0.0], "payload": _nested(101)}
    r = http.put(f"/collections/{name}/points?wait=true", json={"points": [deep]})
    assert "levels deep" in assert_error_body(r, 400)
    # The batch's first operation is fine on its own; the second one's payload is too deep, so
    # neither is applied.
    batch = {
        "operations": [
            {"overwrite_payload": {"points": [2], "payload": {"fine": True}}},
            {"set_payload": {"points": [3], "key": ".".join(["k"] * 100), "payload": {"x": 1}}},
        ]
    }
    r = http.post(f"/collections/{name}/points/batch?wait=true", json=batch)
    assert "levels deep" in assert_error_body(r, 400)


def test_payload_at_the_depth_limit_is_stored_and_read_back(client, http, collection):
    name = collection(size=4, distance=models.Distance.EUCLID)
    r = http.put(f"/collections/{name}/points?wait=true",
                 json={"points": [{"id": 7, "vector": [0.0, 0.0, 0.0, 1.0], "payload": {}}]})
    assert r.status_code == 200, r.text
    # 1 (root) + 97 key steps after the first + a 2-deep value = 100 levels.
    key = ".".join(["k"] * 98)
    r = http.post(f"/collections/{name}/points/payload?wait=true",
                  json={"points": [7], "key": key, "payload": {"x": {"y": 1}}})
    assert r.status_code == 200, r.text
    got = client.retrieve(name, [7], with_payload=True)[0].payload
    for _ in range(98):
        got = got["k"]
    assert got == {"x": {"y": 1}}


def test_a_batch_with_a_refused_vector_applies_none_of_its_operations(http, populated):
    """The batch's first operations are fine on their own; a later one carries a vector of the
    wrong size, so the whole batch is refused and nothing changes (the fixture checks it)."""
    name, _ = populated
    batch = {
        "operations": [
            {"upsert": {"points": [{"id": 100, "vector": [1.0, 2.0, 3.0, 4.0]}]}},
            {"overwrite_payload": {"points": [2], "payload": {"fine": True}}},
            {"upsert": {"points": [{"id": 101, "vector": [1.0, 2.0]}]}},
        ]
    }
    r = http.post(f"/collections/{name}/points/batch?wait=true", json=batch)
    assert "dimension" in assert_error_body(r, 400)
