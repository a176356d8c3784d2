"""Qdrant's strict mode (`strict_mode_config`), enforced: the cases of Qdrant's own
tests/openapi/test_strictmode.py and test_strict_mode_nested.py, ported.

Strict mode is set when the collection is created (Qdrant's tests switch it with PATCH). Every
refusal is checked against the same request on collections that differ only in the setting: one
with strict mode disabled (`enabled: false`, same limits) or with the limit raised, where it
passes. A refused write must have changed nothing.
"""

from __future__ import annotations

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse

from conftest import unique_name

V = [0.2, 0.1, 0.9, 0.7]
CITIES = ["Berlin", "London", "Moscow"]


def seed_points(ids=range(1, 11)):
    return [
        {
            "id": i,
            "vector": [i * 0.1, 1.0, 0.5, (i % 3) * 0.2],
            "payload": {
                "city": CITIES[i % 3],
                "count": i,
                "docId": i % 4,
                "price": float(i),
                "t": "some text here",
                "discount_price": i,
            },
        }
        for i in ids
    ]


class Collections:
    """Creates collections (with a strict mode, seeded with 10 points by default) and drops
    them at the end of the test."""

    def __init__(self, http):
        self.http = http
        self.created: list[str] = []

    def create(self, strict=None, *, seed=True, vectors=None, sparse=None, indexes=None) -> str:
        name = unique_name("strict")
        # One shard: the size limits then count exactly, on one node or in a cluster (with more
        # shards than this peer holds, they are projections, as in Qdrant).
        body = {"vectors": {"size": 4, "distance": "Dot"} if vectors is None else vectors, "shard_number": 1}
        if sparse is not None:
            body["sparse_vectors"] = sparse
        if strict is not None:
            body["strict_mode_config"] = strict
        r = self.http.put(f"/collections/{name}", json=body)
        assert r.status_code == 200, r.text
        self.created.append(name)
        for field, schema in (indexes or {}).items():
            ok(self.http.put(f"/collections/{name}/index?wait=true", json={"field_name": field, "field_schema": schema}))
        if seed:
            ok(self.http.put(f"/collections/{name}/points?wait=true", json={"points": seed_points()}))
        return name

    def trio(self, strict: dict, raised: dict | None = None, **kw) -> tuple[str, str, str]:
        """(refusing, disabled, raised): `strict` enabled; the same limits disabled; `strict`
        updated with `raised`, enabled (or an enabled empty strict mode)."""
        refusing = self.create({"enabled": True, **strict}, **kw)
        disabled = self.create({"enabled": False, **strict}, **kw)
        passing = self.create({"enabled": True, **strict, **(raised or {})}, **kw)
        return refusing, disabled, passing

    def drop_all(self):
        for name in self.created:
            self.http.delete(f"/collections/{name}")


@pytest.fixture
def grpc_client(node):
    c = QdrantClient(host="127.0.0.1", port=node.http_port, grpc_port=node.grpc_port, prefer_grpc=True, check_compatibility=False)
    yield c
    c.close()


@pytest.fixture
def cols(http):
    c = Collections(http)
    yield c
    c.drop_all()


def ok(r):
    assert r.status_code == 200, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
    return r.json()["result"]


def refused(r, *needles, status=400):
    assert r.status_code == status, f"{r.request.method} {r.request.url}: expected {status}, got {r.status_code} {r.text[:500]}"
    message = r.json()["status"]["error"]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def state(http, name):
    """Everything a write could change: points (payloads, vectors), count, indexes."""
    points = ok(http.post(f"/collections/{name}/points/scroll", json={"limit": 1000, "with_payload": True, "with_vector": True}))["points"]
    info = ok(http.get(f"/collections/{name}"))
    return {
        "points": sorted((str(p["id"]), repr(p["payload"]), repr(p.get("vector"))) for p in points),
        "count": ok(http.post(f"/collections/{name}/points/count", json={"exact": True}))["count"],
        "payload_schema": sorted(info["payload_schema"]),
    }


def assert_unchanged(http, name, before):
    assert state(http, name) == before, "a refused request changed the collection"


# --------------------------------------------------------------------------- the configuration


FULL = {
    "enabled": True,
    "max_query_limit": 10,
    "max_timeout": 2,
    "unindexed_filtering_retrieve": False,
    "unindexed_filtering_update": False,
    "search_max_hnsw_ef": 3,
    "search_allow_exact": False,
    "search_max_oversampling": 1.5,
    "upsert_max_batchsize": 100,
    "search_max_batchsize": 6,
    "max_collection_vector_size_bytes": 1_000_000,
    "read_rate_limit": 700,
    "write_rate_limit": 800,
    "max_collection_payload_size_bytes": 1_000_000,
    "max_points_count": 1000,
    "filter_max_conditions": 12,
    "condition_max_size": 13,
    "multivector_config": {"colbert": {"max_vectors": 5}},
    "sparse_config": {"text": {"max_length": 4}},
    "max_payload_index_count": 2,
    "max_resident_memory_percent": 100,
    "max_disk_usage_percent": 100,
}


def test_config_is_typed_validated_and_reported(http, cols, grpc_client):
    bad = [
        ({"enabled": True, "max_query_limt": 3}, 400, "max_query_limt"),
        ({"multivector_config": {"colbert": {"max_vector": 3}}}, 400, "max_vector"),
        ({"max_query_limit": -1}, 400, "-1"),
        ({"max_query_limit": 0}, 422, "max_query_limit"),
        ({"read_rate_limit": 0}, 422, "read_rate_limit"),
        ({"max_points_count": 0}, 422, "max_points_count"),
        ({"sparse_config": {"text": {"max_length": 0}}}, 422, "max_length"),
        ({"max_disk_usage_percent": 101}, 422, "max_disk_usage_percent"),
    ]
    for strict, status, needle in bad:
        name = unique_name("strict")
        r = http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}, "strict_mode_config": strict})
        refused(r, needle, status=status)
        assert http.get(f"/collections/{name}").status_code == 404, "a refused create made the collection"

    name = cols.create(FULL, seed=False)
    info = ok(http.get(f"/collections/{name}"))
    assert info["config"]["strict_mode_config"] == FULL
    assert not any("strict" in w["message"] for w in info.get("warnings", [])), info.get("warnings")
    # gRPC reports it too (every field the wire type has).
    reported = grpc_client.get_collection(name).config.strict_mode_config
    assert reported.enabled is True and reported.max_query_limit == 10 and reported.read_rate_limit == 700
    assert reported.max_payload_index_count == 2 and reported.search_max_oversampling == 1.5
    multi = getattr(reported.multivector_config, "root", reported.multivector_config)
    sparse = getattr(reported.sparse_config, "root", reported.sparse_config)
    assert multi["colbert"].max_vectors == 5
    assert sparse["text"].max_length == 4


# --------------------------------------------------------------------------- limits of reads


READS_WITH_LIMIT_4 = [
    ("points/search", {"vector": V, "limit": 4}),
    ("points/search/batch", {"searches": [{"vector": V, "limit": 4}]}),
    ("points/query", {"query": V, "limit": 4}),
    ("points/query", {"prefetch": [{"query": V, "limit": 4}], "query": V, "limit": 2}),
    ("points/query", {"prefetch": [{"prefetch": [{"query": V, "limit": 4}], "query": V, "limit": 2}], "query": {"fusion": "rrf"}, "limit": 2}),
    ("points/query/batch", {"searches": [{"query": V, "limit": 4}]}),
    ("points/recommend", {"positive": [1], "limit": 4}),
    ("points/recommend/batch", {"searches": [{"positive": [1], "limit": 4}]}),
    ("points/discover", {"target": 1, "context": [{"positive": 2, "negative": 3}], "limit": 4}),
    ("points/discover/batch", {"searches": [{"target": 1, "context": [{"positive": 2, "negative": 3}], "limit": 4}]}),
    ("points/scroll", {"limit": 4}),
    ("facet", {"key": "city", "limit": 4}),
    ("points/search/groups", {"vector": V, "limit": 2, "group_by": "city", "group_size": 2}),
    ("points/recommend/groups", {"positive": [1], "limit": 2, "group_by": "city", "group_size": 2}),
    ("points/query/groups", {"query": V, "limit": 2, "group_by": "city", "group_size": 2}),
    ("points/search/matrix/pairs", {"sample": 2, "limit": 2}),
    ("points/search/matrix/offsets", {"sample": 4}),
]


@pytest.mark.parametrize("path,body", READS_WITH_LIMIT_4, ids=[f"{p}-{i}" for i, (p, _) in enumerate(READS_WITH_LIMIT_4)])
def test_query_limit(http, cols, path, body):
    lim3, off, lim4 = cols.trio({"max_query_limit": 3}, {"max_query_limit": 4}, indexes={"city": "keyword"})
    refused(http.post(f"/collections/{lim3}/{path}", json=body), 'Limit exceeded 4 > 3 for "limit"', "Help: Reduce the \"limit\" parameter to or below 3.")
    ok(http.post(f"/collections/{off}/{path}", json=body))
    ok(http.post(f"/collections/{lim4}/{path}", json=body))


def test_query_limit_counts_qdrant_defaults(http, cols):
    lim5, off, lim10 = cols.trio({"max_query_limit": 5}, {"max_query_limit": 10})
    # A query without `limit` asks for 10, as does a prefetch without one.
    for body in ({"query": V}, {"prefetch": [{"query": V}], "query": V, "limit": 2}):
        refused(http.post(f"/collections/{lim5}/points/query", json=body), "Limit exceeded 10 > 5")
        ok(http.post(f"/collections/{off}/points/query", json=body))
        ok(http.post(f"/collections/{lim10}/points/query", json=body))
    # Groups count `limit * group_size` (Qdrant's test_strict_mode_group_limits).
    lim15 = cols.create({"enabled": True, "max_query_limit": 15})
    body = {"vector": [1.0, 0.0, 0.0, 0.0], "limit": 10, "with_payload": True, "group_by": "docId", "group_size": 3}
    refused(http.post(f"/collections/{lim15}/points/search/groups", json=body), 'Limit exceeded 30 > 15 for "limit"')
    body["query"] = body.pop("vector")
    refused(http.post(f"/collections/{lim15}/points/query/groups", json=body), 'Limit exceeded 30 > 15 for "limit"')
    ok(http.post(f"/collections/{off}/points/query/groups", json=body))
    # Matrices count `sample * limit` (test_strict_mode_distance_matrix_limits).
    refused(http.post(f"/collections/{lim15}/points/search/matrix/pairs", json={"sample": 10, "limit": 2}), 'Limit exceeded 20 > 15 for "limit"')
    ok(http.post(f"/collections/{off}/points/search/matrix/pairs", json={"sample": 10, "limit": 2}))


def test_timeout(http, cols):
    max2, off, max3 = cols.trio({"max_timeout": 2}, {"max_timeout": 3})
    search = {"vector": V, "limit": 3}
    refused(http.post(f"/collections/{max2}/points/search?timeout=3", json=search), 'Limit exceeded 3 > 2 for "timeout"')
    ok(http.post(f"/collections/{max2}/points/search?timeout=2", json=search))
    ok(http.post(f"/collections/{max2}/points/search", json=search))
    for name in (off, max3):
        ok(http.post(f"/collections/{name}/points/search?timeout=3", json=search))
    reads = [
        ("POST", "points/count", {}),
        ("POST", "points/scroll", {}),
        ("POST", "points", {"ids": [1]}),
        ("GET", "points/1", None),
        ("POST", "points/query", {"query": V}),
    ]
    for method, path, body in reads:
        refused(http.request(method, f"/collections/{max2}/{path}?timeout=3", json=body), '"timeout"')
        ok(http.request(method, f"/collections/{off}/{path}?timeout=3", json=body))
    # Writes: refused before anything is applied.
    before = state(http, max2)
    writes = [
        ("PUT", "points?wait=true&timeout=3", {"points": seed_points([42])}),
        ("POST", "points/payload?wait=true&timeout=3", {"payload": {"a": 1}, "points": [1]}),
        ("POST", "points/delete?wait=true&timeout=3", {"points": [1]}),
        ("PUT", "index?wait=true&timeout=3", {"field_name": "city", "field_schema": "keyword"}),
    ]
    for method, path, body in writes:
        refused(http.request(method, f"/collections/{max2}/{path}", json=body), '"timeout"')
        ok(http.request(method, f"/collections/{off}/{path}", json=body))
    assert_unchanged(http, max2, before)
    refused(http.post(f"/collections/{max2}/points/search?timeout=soon", json=search))


# --------------------------------------------------------------------------- unindexed filters


def city_filter(city="Berlin"):
    return {"must": [{"key": "city", "match": {"value": city}}]}


def test_unindexed_filter_read_keyword(http, cols):
    strict, off, allowed = cols.trio({"unindexed_filtering_retrieve": False}, {"unindexed_filtering_retrieve": True})
    requests_ = [
        ("points/search", {"vector": V, "limit": 3, "filter": city_filter()}),
        ("points/query", {"query": V, "filter": city_filter()}),
        ("points/query", {"prefetch": [{"query": V, "filter": city_filter()}], "query": {"fusion": "rrf"}}),
        ("points/scroll", {"filter": city_filter()}),
        ("points/count", {"filter": city_filter()}),
        ("points/recommend", {"positive": [1], "limit": 3, "filter": city_filter()}),
        ("points/search/matrix/pairs", {"sample": 3, "limit": 1, "filter": city_filter()}),
    ]
    for path, body in requests_:
        refused(
            http.post(f"/collections/{strict}/{path}", json=body),
            'Index required but not found for "city" of one of the following types: [keyword]',
            "Help: Create an index for this key or use a different filter.",
        )
        for name in (off, allowed):
            ok(http.post(f"/collections/{name}/{path}", json=body))
    ok(http.put(f"/collections/{strict}/index?wait=true", json={"field_name": "city", "field_schema": "keyword"}))
    for path, body in requests_:
        ok(http.post(f"/collections/{strict}/{path}", json=body))


def test_unindexed_filter_read_integer(http, cols):
    name = cols.create({"enabled": True, "unindexed_filtering_retrieve": False})
    body = {"vector": V, "limit": 3, "filter": {"must": [{"key": "count", "match": {"value": 1}}]}}
    refused(http.post(f"/collections/{name}/points/search", json=body), '"count"', "[integer]")
    ok(http.put(f"/collections/{name}/index?wait=true", json={"field_name": "count", "field_schema": {"type": "integer", "lookup": True, "range": True}}))
    ok(http.post(f"/collections/{name}/points/search", json=body))
    # An integer index without lookup does not serve `match`.
    ok(http.put(f"/collections/{name}/index?wait=true", json={"field_name": "count", "field_schema": {"type": "integer", "lookup": False, "range": True}}))
    refused(http.post(f"/collections/{name}/points/search", json=body), '"count"')
    # ... but serves `range`.
    ranged = {"vector": V, "limit": 3, "filter": {"must": [{"key": "count", "range": {"gte": 2}}]}}
    ok(http.post(f"/collections/{name}/points/search", json=ranged))


def test_unindexed_filter_read_phrase(http, cols):
    name = cols.create({"enabled": True, "unindexed_filtering_retrieve": False}, indexes={"t": {"type": "text"}})

    def scroll(kind):
        return http.post(f"/collections/{name}/points/scroll", json={"filter": {"must": [{"key": "t", "match": {kind: "some text"}}]}})

    ok(scroll("text"))
    refused(scroll("phrase"), "Help: Create an index", "text (with phrase_matching: true)")
    ok(http.put(f"/collections/{name}/index?wait=true", json={"field_name": "t", "field_schema": {"type": "text", "phrase_matching": True}}))
    ok(scroll("text"))
    ok(scroll("phrase"))


def test_unindexed_filter_write(http, cols):
    strict, off, allowed = cols.trio({"unindexed_filtering_update": False}, {"unindexed_filtering_update": True})
    before = state(http, strict)
    writes = [
        ("points/delete?wait=true", {"filter": city_filter()}),
        ("points/payload?wait=true", {"payload": {"seen": True}, "filter": city_filter()}),
        ("points/payload/delete?wait=true", {"keys": ["count"], "filter": city_filter()}),
        ("points/payload/clear?wait=true", {"filter": city_filter()}),
        ("points/vectors/delete?wait=true", {"vector": [""], "filter": city_filter()}),
        ("points/batch?wait=true", {"operations": [{"delete": {"points": [10]}}, {"delete": {"filter": city_filter()}}]}),
    ]
    for path, body in writes:
        refused(http.post(f"/collections/{strict}/{path}", json=body), '"city"', "[keyword]")
    assert_unchanged(http, strict, before)
    # Reads are not limited by the update setting; selecting by ids needs no index.
    ok(http.post(f"/collections/{strict}/points/count", json={"filter": city_filter()}))
    ok(http.post(f"/collections/{strict}/points/payload?wait=true", json={"payload": {"seen": True}, "points": [1]}))
    for name in (off, allowed):
        for path, body in writes:
            ok(http.post(f"/collections/{name}/{path}", json=body))
    ok(http.put(f"/collections/{strict}/index?wait=true", json={"field_name": "city", "field_schema": "keyword"}))
    ok(http.post(f"/collections/{strict}/points/delete?wait=true", json={"filter": city_filter()}))
    assert ok(http.post(f"/collections/{strict}/points/count", json={"filter": city_filter(), "exact": True}))["count"] == 0


def test_unindexed_nested_filter(http, cols):
    """Qdrant's test_strict_mode_nested: indexes of nested arrays are declared by full path."""
    points = [
        {"id": 1, "vector": V, "payload": {"country": {"name": "Germany", "cities": [
            {"name": "Berlin", "population": 3.7, "sightseeing": ["Brandenburg Gate", "Reichstag", "Museum Island"]}]}}},
        {"id": 2, "vector": V, "payload": {"country": {"name": "Japan", "cities": [
            {"name": "Tokyo", "population": 9.3, "sightseeing": ["Meiji Shrine", "Tokyo Skytree"]},
            {"name": "Osaka", "population": 2.7, "sightseeing": ["Osaka Castle"]}]}}},
        {"id": 3, "vector": V, "payload": {"country": {"name": "USA", "cities": [
            {"name": "New York", "population": 8.8, "sightseeing": ["Statue of Liberty", "Central Park", "Times Square"]}]}}},
    ]
    name = cols.create({"enabled": True, "unindexed_filtering_retrieve": False}, seed=False, indexes={"country.cities[].population": "float"})
    off = cols.create({"enabled": False, "unindexed_filtering_retrieve": False}, seed=False)
    for n in (name, off):
        ok(http.put(f"/collections/{n}/points?wait=true", json={"points": points}))
    body = {"filter": {"must": [{"nested": {"key": "country.cities", "filter": {"must": [
        {"key": "population", "range": {"gte": 8.0}},
        {"key": "sightseeing", "values_count": {"lt": 3}},
    ]}}}]}, "limit": 3}
    refused(http.post(f"/collections/{name}/points/scroll", json=body), '"country.cities[].sightseeing"')
    assert [p["payload"]["country"]["name"] for p in ok(http.post(f"/collections/{off}/points/scroll", json=body))["points"]] == ["Japan"]
    ok(http.put(f"/collections/{name}/index?wait=true", json={"field_name": "country.cities[].sightseeing", "field_schema": "integer"}))
    found = ok(http.post(f"/collections/{name}/points/scroll", json=body))["points"]
    assert [p["payload"]["country"]["name"] for p in found] == ["Japan"]


def test_formula_needs_indexes(http, cols):
    strict, off, _ = cols.trio({"unindexed_filtering_retrieve": False})
    body = {
        "prefetch": {"query": [0.1, 0.2, 0.3, 0.4]},
        "query": {"formula": {"sum": ["discount_price", "$score"]}, "defaults": {"discount_price": 0}},
    }
    refused(http.post(f"/collections/{strict}/points/query", json=body), '"discount_price"', "formula expression")
    ok(http.post(f"/collections/{off}/points/query", json=body))
    ok(http.put(f"/collections/{strict}/index?wait=true", json={"field_name": "discount_price", "field_schema": {"type": "integer", "lookup": True, "range": False}}))
    ok(http.post(f"/collections/{strict}/points/query", json=body))


def test_group_by_needs_a_matching_index(http, cols):
    strict, off, _ = cols.trio({"unindexed_filtering_retrieve": False})
    searches = [
        ("points/search/groups", {"vector": [1.0, 0.0, 0.0, 0.0], "limit": 10, "with_payload": True, "group_by": "docId", "group_size": 3}),
        ("points/query/groups", {"query": [1.0, 0.0, 0.0, 0.0], "limit": 10, "with_payload": True, "group_by": "docId", "group_size": 3}),
    ]
    for path, body in searches:
        refused(http.post(f"/collections/{strict}/{path}", json=body), 'Index required but not found for "docId". Help: Create an index supporting `match` for this key.')
        ok(http.post(f"/collections/{off}/{path}", json=body))
    ok(http.put(f"/collections/{strict}/index?wait=true", json={"field_name": "docId", "field_schema": "geo"}))
    for path, body in searches:
        refused(http.post(f"/collections/{strict}/{path}", json=body), 'Index of type "Geo" found for "docId". Help: Create an index supporting `match` for this key.')
    ok(http.put(f"/collections/{strict}/index?wait=true", json={"field_name": "docId", "field_schema": "keyword"}))
    for path, body in searches:
        ok(http.post(f"/collections/{strict}/{path}", json=body))


def test_filter_condition_limits(http, cols):
    strict, off, raised = cols.trio({"filter_max_conditions": 5, "condition_max_size": 5}, {"filter_max_conditions": 6, "condition_max_size": 6})

    def search(name, filter_):
        return http.post(f"/collections/{name}/points/search", json={"vector": V, "limit": 4, "filter": filter_})

    many = {"must": [{"key": "price", "match": {"value": i}} for i in range(6)]}
    large = {"must": [{"key": "price", "match": {"any": list(range(6))}}]}
    nested = {"must": [{"nested": {"key": "city", "filter": {"must": [
        {"key": "key", "match": {"any": list(range(6))}}, {"key": "key2", "match": {"any": [0, 1]}}]}}}]}
    refused(search(strict, many), "Filter condition limit reached (6 > 5)", "Help: Reduce the amount of conditions of your filter.")
    refused(search(strict, large), "Condition size limit reached (6 > 5)", "Help: Reduce the size of your condition.")
    refused(search(strict, nested), "Condition size limit reached (6 > 5)")
    ok(search(strict, {"must": many["must"][:5]}))
    for name in (off, raised):
        for f in (many, large, nested):
            ok(search(name, f))
    # The update filter of a filtered write is limited too.
    before = state(http, strict)
    refused(http.post(f"/collections/{strict}/points/delete?wait=true", json={"filter": many}), "Filter condition limit reached")
    assert_unchanged(http, strict, before)


# --------------------------------------------------------------------------- search parameters


def test_search_params(http, cols):
    strict, off, raised = cols.trio(
        {"search_max_hnsw_ef": 4, "search_allow_exact": False, "search_max_oversampling": 1.9},
        {"search_max_hnsw_ef": 5, "search_allow_exact": True, "search_max_oversampling": 2.0},
    )
    cases = [
        ({"hnsw_ef": 5}, 'Limit exceeded 5 > 4 for "hnsw_ef"'),
        ({"exact": True}, "Exact search disabled!. Help: Set exact=false."),
        ({"quantization": {"oversampling": 2.0}}, 'Limit exceeded 2 > 1.9 for "oversampling"'),
    ]
    for params, needle in cases:
        for path, body in (
            ("points/search", {"vector": V, "limit": 4, "params": params}),
            ("points/query", {"query": V, "params": params}),
            ("points/query", {"prefetch": [{"query": V, "params": params}], "query": {"fusion": "rrf"}}),
            ("points/recommend", {"positive": [1], "limit": 4, "params": params}),
        ):
            refused(http.post(f"/collections/{strict}/{path}", json=body), needle)
            for name in (off, raised):
                ok(http.post(f"/collections/{name}/{path}", json=body))
    ok(http.post(f"/collections/{strict}/points/search", json={"vector": V, "limit": 4, "params": {"hnsw_ef": 4, "exact": False, "quantization": {"oversampling": 1.9}}}))
    # A count is exact unless it says otherwise (Qdrant's default).
    refused(http.post(f"/collections/{strict}/points/count", json={}), "Exact search disabled")
    assert ok(http.post(f"/collections/{strict}/points/count", json={"exact": False}))["count"] == 10
    ok(http.post(f"/collections/{off}/points/count", json={}))


def test_search_batch_size(http, cols):
    max2, off, max3 = cols.trio({"search_max_batchsize": 2}, {"search_max_batchsize": 3})
    batches = [
        ("points/search/batch", {"searches": [{"vector": V, "limit": 3}] * 3}),
        ("points/query/batch", {"searches": [{"query": V}] * 3}),
        ("points/recommend/batch", {"searches": [{"positive": [1], "limit": 3}] * 3}),
        ("points/discover/batch", {"searches": [{"target": 1, "context": [{"positive": 2, "negative": 3}], "limit": 3}] * 3}),
    ]
    for path, body in batches:
        refused(http.post(f"/collections/{max2}/{path}", json=body), 'Limit exceeded 3 > 2 for "search batch size"')
        for name in (off, max3):
            assert len(ok(http.post(f"/collections/{name}/{path}", json=body))) == 3


# --------------------------------------------------------------------------- writes


def batch_body(ids):
    return {"batch": {"ids": list(ids), "payloads": [{} for _ in ids], "vectors": [[1, 2, 3, 5] for _ in ids]}}


def test_upsert_batch_size(http, cols):
    max5, off, max6 = cols.trio({"upsert_max_batchsize": 5}, {"upsert_max_batchsize": 6}, seed=False)
    six = batch_body(range(1, 7))
    vectors = {"points": [{"id": i, "vector": [1, 2, 3, 5]} for i in range(1, 7)]}
    for name in (max5, off, max6):
        ok(http.put(f"/collections/{name}/points?wait=true", json=batch_body(range(1, 6))))
    before = state(http, max5)
    refused(http.put(f"/collections/{max5}/points?wait=true", json=six), 'Limit exceeded 6 > 5 for "upsert limit"')
    refused(http.post(f"/collections/{max5}/points/batch?wait=true", json={"operations": [{"upsert": six}]}), '"upsert limit"')
    refused(http.put(f"/collections/{max5}/points/vectors?wait=true", json=vectors), 'Limit exceeded 6 > 5 for "update limit"')
    # Every operation of a batch is checked before the first is applied.
    refused(http.post(f"/collections/{max5}/points/batch?wait=true", json={"operations": [{"delete": {"points": [1]}}, {"upsert": six}]}), '"upsert limit"')
    assert_unchanged(http, max5, before)
    for name in (off, max6):
        ok(http.put(f"/collections/{name}/points?wait=true", json=six))
        ok(http.post(f"/collections/{name}/points/batch?wait=true", json={"operations": [{"upsert": six}]}))
        ok(http.put(f"/collections/{name}/points/vectors?wait=true", json=vectors))


def test_max_collection_vector_size(http, cols):
    """4 float32 dimensions are 16 bytes a point: 15 points reach 240 bytes."""
    name, off, _ = cols.trio({"max_collection_vector_size_bytes": 240}, seed=False)
    for n in (name, off):
        ok(http.put(f"/collections/{n}/points?wait=true", json=batch_body(range(1, 11))))
        # 160 bytes: under the limit, so one more write is accepted (Qdrant checks before).
        ok(http.put(f"/collections/{n}/points?wait=true", json=batch_body(range(11, 16))))
    before = state(http, name)
    refused(http.put(f"/collections/{name}/points?wait=true", json=batch_body(range(16, 21))), "Max vector storage size limit of")
    refused(http.post(f"/collections/{name}/points/batch?wait=true", json={"operations": [{"upsert": batch_body([16])}]}), "Max vector storage size")
    refused(http.put(f"/collections/{name}/points/vectors?wait=true", json={"points": [{"id": 1, "vector": [1, 1, 1, 1]}]}), "Max vector storage size")
    assert_unchanged(http, name, before)
    # Freeing space lets writes in again; without strict mode they were never refused.
    ok(http.post(f"/collections/{name}/points/delete?wait=true", json={"points": [1, 2]}))
    ok(http.put(f"/collections/{name}/points?wait=true", json=batch_body([16])))
    ok(http.put(f"/collections/{off}/points?wait=true", json=batch_body(range(16, 21))))


def test_max_collection_payload_size(http, cols):
    """`{"city":"Berlin"}` is 17 bytes of JSON: 10 points reach 170."""
    name, off, _ = cols.trio({"max_collection_payload_size_bytes": 170}, seed=False)

    def upsert(n, ids):
        return http.put(f"/collections/{n}/points?wait=true", json={"points": [{"id": i, "vector": [1, 2, 3, 5], "payload": {"city": "Berlin"}} for i in ids]})

    for n in (name, off):
        ok(upsert(n, range(1, 6)))
        ok(upsert(n, range(6, 11)))
    before = state(http, name)
    refused(upsert(name, range(11, 16)), "Max payload storage size limit of")
    refused(http.post(f"/collections/{name}/points/payload?wait=true", json={"payload": {"more": 1}, "points": [1]}), "Max payload storage size")
    refused(http.put(f"/collections/{name}/points/payload?wait=true", json={"payload": {"more": 1}, "points": [1]}), "Max payload storage size")
    assert_unchanged(http, name, before)
    ok(upsert(off, range(11, 16)))
    ok(http.post(f"/collections/{off}/points/payload?wait=true", json={"payload": {"more": 1}, "points": [1]}))
    # Deleting payload is never refused, and makes room.
    ok(http.post(f"/collections/{name}/points/payload/clear?wait=true", json={"points": [1, 2, 3]}))
    ok(upsert(name, [11]))


def test_max_points_count(http, cols):
    name, off, raised = cols.trio({"max_points_count": 10}, {"max_points_count": 11})
    before = state(http, name)
    refused(http.put(f"/collections/{name}/points?wait=true", json=batch_body([11])), "Max points count limit of 10 reached!")
    refused(http.post(f"/collections/{name}/points/batch?wait=true", json={"operations": [{"upsert": batch_body([11])}]}), "Max points count limit of 10 reached!")
    assert_unchanged(http, name, before)
    for n in (off, raised):
        ok(http.put(f"/collections/{n}/points?wait=true", json=batch_body([11])))
    ok(http.post(f"/collections/{name}/points/delete?wait=true", json={"points": [1]}))
    ok(http.put(f"/collections/{name}/points?wait=true", json=batch_body([11])))


def test_sparse_max_length(http, cols):
    strict, off, raised = cols.trio({"sparse_config": {"sparse-vector": {"max_length": 4}}}, {"sparse_config": {"sparse-vector": {"max_length": 6}}}, seed=False, vectors={}, sparse={"sparse-vector": {}})
    four = {"points": [{"id": 1, "vector": {"sparse-vector": {"indices": [1, 2, 3, 4], "values": [0.0, 0.1, 0.2, 0.3]}}}]}
    six = {"points": [{"id": 2, "vector": {"sparse-vector": {"indices": [1, 2, 3, 4, 5, 6], "values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}}]}
    ok(http.put(f"/collections/{strict}/points?wait=true", json=four))
    before = state(http, strict)
    refused(http.put(f"/collections/{strict}/points?wait=true", json=six), "Sparse vector 'sparse-vector' has a limit of 4 indices, but 6 were provided!")
    refused(http.put(f"/collections/{strict}/points/vectors?wait=true", json={"points": [{"id": 1, "vector": six["points"][0]["vector"]}]}), "has a limit of 4 indices")
    assert_unchanged(http, strict, before)
    for name in (off, raised):
        ok(http.put(f"/collections/{name}/points?wait=true", json=six))


def test_multivector_max_vectors(http, cols):
    multi = {"dense-multi": {"size": 4, "distance": "Dot", "multivector_config": {"comparator": "max_sim"}}}
    strict, off, raised = cols.trio({"multivector_config": {"dense-multi": {"max_vectors": 5}}}, {"multivector_config": {"dense-multi": {"max_vectors": 6}}}, seed=False, vectors=multi)
    rows = lambda n: [[1.05 + i, 1.61, 1.76, 1.74] for i in range(n)]  # noqa: E731
    ok(http.put(f"/collections/{strict}/points?wait=true", json={"points": [{"id": 1, "vector": {"dense-multi": rows(3)}}]}))
    before = state(http, strict)
    message = "Multivector 'dense-multi' has a limit of 5 vectors, but 6 were provided!"
    refused(http.put(f"/collections/{strict}/points?wait=true", json={"points": [{"id": 1, "vector": {"dense-multi": rows(6)}}]}), message)
    refused(http.put(f"/collections/{strict}/points?wait=true", json={"batch": {"ids": [1], "vectors": {"dense-multi": [rows(6)]}}}), message)
    refused(http.put(f"/collections/{strict}/points/vectors?wait=true", json={"points": [{"id": 1, "vector": {"dense-multi": rows(6)}}]}), message)
    assert_unchanged(http, strict, before)
    for name in (off, raised):
        ok(http.put(f"/collections/{name}/points?wait=true", json={"batch": {"ids": [1], "vectors": {"dense-multi": [rows(6)]}}}))


def test_max_payload_index_count(http, cols):
    def create_index(name, field, schema):
        return http.put(f"/collections/{name}/index?wait=true", json={"field_name": field, "field_schema": schema})

    none_allowed = cols.create({"enabled": True, "max_payload_index_count": 0})
    refused(create_index(none_allowed, "price", {"type": "float"}), "Collection already has the maximum number of payload indices (0). Help: Please delete an existing index before creating a new one.")
    one, off, two = cols.trio({"max_payload_index_count": 1}, {"max_payload_index_count": 2})
    for name in (one, off, two):
        ok(create_index(name, "city", {"type": "keyword"}))
    before = state(http, one)
    refused(create_index(one, "price", {"type": "float"}), "maximum number of payload indices (1)")
    assert_unchanged(http, one, before)
    for name in (off, two):
        ok(create_index(name, "price", {"type": "float"}))
    # Deleting an index makes room again.
    ok(http.delete(f"/collections/{one}/index/city?wait=true"))
    ok(create_index(one, "price", {"type": "float"}))


def test_disk_usage_gate(http, cols):
    # No seed: the gate refuses it (the data directory's file system is surely over 1% full).
    full, off, roomy = cols.trio({"max_disk_usage_percent": 1}, {"max_disk_usage_percent": 100}, seed=False)
    before = state(http, full)
    refused(http.put(f"/collections/{full}/points?wait=true", json=batch_body([11])), "Disk usage is at", "configured limit of 1%")
    refused(http.post(f"/collections/{full}/points/payload?wait=true", json={"payload": {"a": 1}, "points": [1]}), "Disk usage is at")
    refused(http.put(f"/collections/{full}/index?wait=true", json={"field_name": "city", "field_schema": "keyword"}), "Disk usage is at")
    assert_unchanged(http, full, before)
    # Deletes free space: never refused.
    ok(http.post(f"/collections/{full}/points/delete?wait=true", json={"points": [1]}))
    ok(http.post(f"/collections/{full}/points/payload/clear?wait=true", json={"filter": city_filter()}))
    for name in (off, roomy):
        ok(http.put(f"/collections/{name}/points?wait=true", json=batch_body([11])))


# --------------------------------------------------------------------------- rate limits


def assert_retry_after(r, low, high):
    assert r.headers.get("Retry-After") is not None, r.headers
    assert low <= int(r.headers["Retry-After"]) <= high, r.headers["Retry-After"]


def test_read_rate_limit(http, cols):
    limited, off, _ = cols.trio({"read_rate_limit": 1})
    failed = 0
    for _ in range(10):
        r = http.post(f"/collections/{limited}/points/search", json={"vector": V, "limit": 4})
        if r.status_code != 200:
            failed += 1
            refused(r, "Rate limiting exceeded: Read rate limit exceeded", status=429)
            # The one token comes back a minute after it was taken.
            assert_retry_after(r, 56, 60)
    assert failed == 9
    # Each collection has its own bucket.
    for _ in range(10):
        ok(http.post(f"/collections/{off}/points/search", json={"vector": V, "limit": 4}))


def test_read_rate_limit_small_replenish(http, cols):
    name = cols.create({"enabled": True, "read_rate_limit": 60})
    for _ in range(120):
        r = http.post(f"/collections/{name}/points/search", json={"vector": V, "limit": 4})
        if r.status_code != 200:
            refused(r, "Read rate limit exceeded", status=429)
            assert_retry_after(r, 1, 5)
            return
    pytest.fail("the rate limiter never refused")


def test_read_rate_limit_costs(http, cols):
    # Examples count: 5 ids cost more than a bucket of 4 ever holds.
    rec, off, _ = cols.trio({"read_rate_limit": 4})
    body = {"positive": [1, 2, 3, 4, 5], "strategy": "best_score", "limit": 10}
    refused(http.post(f"/collections/{rec}/points/recommend", json=body), "Read rate limit exceeded, request larger than rate limiter capacity, please try to split your request", status=429)
    ok(http.post(f"/collections/{off}/points/recommend", json=body))
    # Retrieve costs one token per id.
    ret = cols.create({"enabled": True, "read_rate_limit": 4})
    refused(http.post(f"/collections/{ret}/points", json={"ids": [1, 2, 3, 4, 5]}), "request larger than rate limiter capacity", status=429)
    ok(http.post(f"/collections/{ret}/points", json={"ids": [1, 2, 3, 4]}))
    r = http.post(f"/collections/{ret}/points", json={"ids": [1, 2, 3, 4]})
    refused(r, "Read rate limit exceeded: Operation requires 4 tokens but only", status=429)
    assert_retry_after(r, 56, 60)
    # A scroll costs 1 plus one per filter condition.
    scr = cols.create({"enabled": True, "read_rate_limit": 10})

    def scroll(n):
        conditions = [{"key": "price", "match": {"value": i}} for i in range(n)]
        return http.post(f"/collections/{scr}/points/scroll", json={"filter": {"must": conditions}})

    refused(scroll(11), "request larger than rate limiter capacity", status=429)
    ok(scroll(6))
    refused(scroll(6), "Read rate limit exceeded: Operation requires 7 tokens", status=429)


def test_write_rate_limit(http, cols):
    limited, off, _ = cols.trio({"write_rate_limit": 1}, seed=False)
    point = lambda i: {"points": [{"id": i, "vector": [0.05, 0.61, 0.76, 0.74]}]}  # noqa: E731
    ok(http.put(f"/collections/{limited}/points?wait=true", json=point(1)))
    before = state(http, limited)
    for i in range(2, 8):
        r = http.put(f"/collections/{limited}/points?wait=true", json=point(i))
        refused(r, "Rate limiting exceeded: Write rate limit exceeded", status=429)
        assert_retry_after(r, 56, 60)
    assert_unchanged(http, limited, before)
    for i in range(1, 8):
        ok(http.put(f"/collections/{off}/points?wait=true", json=point(i)))


def test_write_rate_limit_counts_filtered_points(http, cols):
    """A write by filter costs the points it selects: Berlin has 3 of the 10 seeded points,
    London 4 (`i % 3`)."""
    name = cols.create({"enabled": True, "write_rate_limit": 12})  # the seed took 10 tokens
    before = state(http, name)
    r = http.post(f"/collections/{name}/points/payload?wait=true", json={"payload": {"seen": True}, "filter": {"must": [{"key": "city", "match": {"value": "Berlin"}}]}})
    refused(r, "Write rate limit exceeded: Operation requires 3 tokens but only 2.", status=429)
    assert_unchanged(http, name, before)
    ok(http.post(f"/collections/{name}/points/payload?wait=true", json={"payload": {"seen": True}, "points": [1, 2]}))


def test_write_rate_limit_batches(http, cols):
    limited, off, _ = cols.trio({"write_rate_limit": 10}, seed=False)

    def upsert(name, ids):
        return http.post(f"/collections/{name}/points/batch?wait=true", json={"operations": [{"upsert": batch_body(ids)}]})

    before = state(http, limited)
    refused(upsert(limited, range(1, 12)), "Rate limiting exceeded: Write rate limit exceeded, request larger than rate limiter capacity, please try to split your request", status=429)
    assert_unchanged(http, limited, before)
    ok(upsert(limited, range(1, 11)))
    before = state(http, limited)
    r = upsert(limited, range(1, 11))
    refused(r, "Write rate limit exceeded: Operation requires 10 tokens but only", "Retry after", status=429)
    assert_retry_after(r, 56, 60)
    # Two operations of one batch take their tokens together, before either is applied.
    refused(http.post(f"/collections/{limited}/points/batch?wait=true", json={"operations": [{"delete": {"points": [1]}}, {"upsert": batch_body([20])}]}), "Write rate limit exceeded", status=429)
    assert_unchanged(http, limited, before)
    ok(upsert(off, range(1, 12)))


# --------------------------------------------------------------------------- gRPC


def test_grpc_answers_like_qdrant(cols, grpc_client):
    """The gRPC API runs the REST handlers: refusals are InvalidArgument, rate limits
    ResourceExhausted with Qdrant's `retry-after` entry."""
    lim3, off, _ = cols.trio({"max_query_limit": 3, "max_timeout": 2, "read_rate_limit": 2, "max_points_count": 10})
    g = grpc_client
    with pytest.raises(grpc.RpcError) as e:
        g.query_points(lim3, query=V, limit=4)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'Limit exceeded 4 > 3 for "limit"' in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        g.query_points(lim3, query=V, limit=3, timeout=3)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'Limit exceeded 3 > 2 for "timeout"' in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        g.upsert(lim3, points=[models.PointStruct(id=20, vector=V)], wait=True)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Max points count limit of 10 reached!" in e.value.details()
    assert len(g.query_points(off, query=V, limit=4, timeout=3).points) == 4
    g.upsert(off, points=[models.PointStruct(id=20, vector=V)], wait=True)
    # The two read tokens: a count (the refused upsert changed nothing) and a query.
    assert g.count(lim3, exact=True).count == 10
    g.query_points(lim3, query=V, limit=3)
    # qdrant-client turns RESOURCE_EXHAUSTED with a `retry-after` entry into this exception.
    with pytest.raises(ResourceExhaustedResponse) as e:
        g.query_points(lim3, query=V, limit=3)
    assert "Read rate limit exceeded" in e.value.message
    assert 25 <= e.value.retry_after_s <= 30
