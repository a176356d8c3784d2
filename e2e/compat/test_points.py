"""Point CRUD, payload operations, scroll and count."""

import uuid

import numpy as np
import pytest
from qdrant_client import models

from conftest import scroll_all

UUID_A = "0f9a3d7c-5b1e-4c1a-9d2e-7a6b5c4d3e2f"
UUID_B = "6ad1c2b3-0000-4000-8000-000000000001"


def vecs(n, dim, seed):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def close(a, b, tol=1e-5):
    return a is not None and np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tol)


def by_id(records):
    return {r.id: r for r in records}


@pytest.fixture
def euclid8(collection):
    return collection(size=8, distance=models.Distance.EUCLID)


# --------------------------------------------------------------------------- upsert / retrieve


def test_upsert_point_structs_int_ids(client, euclid8):
    v = vecs(5, 8, 1)
    res = client.upsert(
        euclid8,
        points=[models.PointStruct(id=i + 1, vector=v[i].tolist(), payload={"i": i, "name": f"p{i}"}) for i in range(5)],
        wait=True,
    )
    assert res.status == models.UpdateStatus.COMPLETED
    assert client.get_collection(euclid8).points_count == 5
    recs = client.retrieve(euclid8, ids=[1, 2, 3, 4, 5], with_payload=True, with_vectors=True)
    assert sorted(r.id for r in recs) == [1, 2, 3, 4, 5]
    for r in recs:
        i = r.id - 1
        assert r.payload == {"i": i, "name": f"p{i}"}
        assert close(r.vector, v[i])


def test_upsert_batch_form(client, euclid8):
    v = vecs(4, 8, 2)
    ids = [10, 20, 30, 40]
    res = client.upsert(
        euclid8,
        points=models.Batch(ids=ids, vectors=v.tolist(), payloads=[{"k": k} for k in ids]),
        wait=True,
    )
    assert res.status == models.UpdateStatus.COMPLETED
    recs = by_id(client.retrieve(euclid8, ids=ids, with_payload=True, with_vectors=True))
    assert set(recs) == set(ids)
    for j, k in enumerate(ids):
        assert recs[k].payload == {"k": k}
        assert close(recs[k].vector, v[j])


def test_upsert_batch_without_payloads(client, euclid8):
    v = vecs(3, 8, 3)
    client.upsert(euclid8, points=models.Batch(ids=[1, 2, 3], vectors=v.tolist()), wait=True)
    recs = client.retrieve(euclid8, ids=[1, 2, 3], with_payload=True)
    assert len(recs) == 3
    for r in recs:
        assert not r.payload  # None or {}


def test_uuid_ids(client, euclid8, http):
    v = vecs(3, 8, 4)
    client.upsert(
        euclid8,
        points=[
            models.PointStruct(id=UUID_A, vector=v[0].tolist(), payload={"u": "a"}),
            models.PointStruct(id=UUID_B, vector=v[1].tolist(), payload={"u": "b"}),
            models.PointStruct(id=7, vector=v[2].tolist(), payload={"u": "int"}),
        ],
        wait=True,
    )
    recs = by_id(client.retrieve(euclid8, ids=[UUID_A, UUID_B, 7], with_vectors=True))
    assert set(recs) == {UUID_A, UUID_B, 7}
    assert recs[UUID_A].payload == {"u": "a"}
    assert close(recs[UUID_B].vector, v[1])

    r = http.get(f"/collections/{euclid8}/points/{UUID_A}")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["id"] == UUID_A
    assert r.json()["result"]["payload"] == {"u": "a"}


def test_uuid_id_is_canonicalised(client, euclid8):
    """Qdrant parses UUIDs and returns them lowercase-hyphenated."""
    upper = UUID_A.upper()
    client.upsert(euclid8, points=[models.PointStruct(id=upper, vector=[0.0] * 8)], wait=True)
    recs = client.retrieve(euclid8, ids=[UUID_A])
    assert [r.id for r in recs] == [UUID_A]
    assert client.count(euclid8).count == 1


def test_upsert_overwrites_whole_point(client, euclid8):
    v = vecs(2, 8, 5)
    client.upsert(euclid8, points=[models.PointStruct(id=1, vector=v[0].tolist(), payload={"a": 1, "b": 2})], wait=True)
    client.upsert(euclid8, points=[models.PointStruct(id=1, vector=v[1].tolist(), payload={"c": 3})], wait=True)
    (rec,) = client.retrieve(euclid8, ids=[1], with_vectors=True)
    assert rec.payload == {"c": 3}
    assert close(rec.vector, v[1])
    assert client.get_collection(euclid8).points_count == 1


def test_retrieve_options(client, euclid8):
    v = vecs(3, 8, 6)
    client.upsert(
        euclid8,
        points=[
            models.PointStruct(id=i, vector=v[i].tolist(), payload={"a": i, "b": {"c": i}, "d": "x"}) for i in range(3)
        ],
        wait=True,
    )
    recs = client.retrieve(euclid8, ids=[0, 1, 2, 999], with_payload=False, with_vectors=False)
    assert sorted(r.id for r in recs) == [0, 1, 2], "missing id 999 must simply be omitted"
    for r in recs:
        assert r.payload is None
        assert r.vector is None
    recs = by_id(client.retrieve(euclid8, ids=[1], with_payload=["a", "d"]))
    assert recs[1].payload == {"a": 1, "d": "x"}
    recs = by_id(client.retrieve(euclid8, ids=[1], with_payload=models.PayloadSelectorExclude(exclude=["b"])))
    assert recs[1].payload == {"a": 1, "d": "x"}
    recs = by_id(client.retrieve(euclid8, ids=[2], with_payload=models.PayloadSelectorInclude(include=["b"])))
    assert recs[2].payload == {"b": {"c": 2}}
    assert client.retrieve(euclid8, ids=[12345]) == []


def test_retrieve_returns_normalised_vector_for_cosine(client, collection):
    name = collection(size=4, distance=models.Distance.COSINE)
    client.upsert(name, points=[models.PointStruct(id=1, vector=[3.0, 0.0, 4.0, 0.0])], wait=True)
    (rec,) = client.retrieve(name, ids=[1], with_vectors=True)
    assert close(rec.vector, [0.6, 0.0, 0.8, 0.0])


def test_get_single_point_raw(http, client, euclid8):
    client.upsert(euclid8, points=[models.PointStruct(id=42, vector=[float(i) for i in range(8)], payload={"z": True})])
    r = http.get(f"/collections/{euclid8}/points/42")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    res = body["result"]
    assert res["id"] == 42
    assert res["payload"] == {"z": True}
    assert close(res["vector"], list(range(8)))
    r = http.get(f"/collections/{euclid8}/points/43")
    assert r.status_code == 404
    assert r.json()["status"]["error"]


# --------------------------------------------------------------------------- delete


def _seed_people(client, name, n=20):
    v = vecs(n, 8, 7)
    client.upsert(
        name,
        points=[
            models.PointStruct(id=i, vector=v[i].tolist(), payload={"group": "even" if i % 2 == 0 else "odd", "i": i})
            for i in range(n)
        ],
        wait=True,
    )
    return v


def test_delete_by_ids(client, euclid8):
    _seed_people(client, euclid8)
    res = client.delete(euclid8, points_selector=models.PointIdsList(points=[0, 1, 2, 999]), wait=True)
    assert res.status == models.UpdateStatus.COMPLETED
    assert client.count(euclid8).count == 17
    assert client.get_collection(euclid8).points_count == 17
    assert client.retrieve(euclid8, ids=[0, 1, 2]) == []
    assert len(client.retrieve(euclid8, ids=[3])) == 1


def test_delete_by_filter(client, euclid8):
    _seed_people(client, euclid8)
    client.delete(
        euclid8,
        points_selector=models.FilterSelector(
            filter=models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value="odd"))])
        ),
        wait=True,
    )
    remaining = sorted(r.id for r in scroll_all(client, euclid8))
    assert remaining == list(range(0, 20, 2))
    assert client.get_collection(euclid8).points_count == 10


# --------------------------------------------------------------------------- payload ops


def _payloads(client, name):
    return {r.id: r.payload for r in scroll_all(client, name, with_vectors=False)}


def test_set_payload_by_ids_merges(client, euclid8):
    _seed_people(client, euclid8, n=4)
    client.set_payload(euclid8, payload={"x": 1, "i": 100}, points=[1, 2], wait=True)
    p = _payloads(client, euclid8)
    assert p[1] == {"group": "odd", "i": 100, "x": 1}
    assert p[2] == {"group": "even", "i": 100, "x": 1}
    assert p[0] == {"group": "even", "i": 0}
    assert p[3] == {"group": "odd", "i": 3}


def test_set_payload_by_filter(client, euclid8):
    _seed_people(client, euclid8, n=6)
    client.set_payload(
        euclid8,
        payload={"flag": True},
        points=models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value="even"))]),
        wait=True,
    )
    p = _payloads(client, euclid8)
    assert {k for k, v in p.items() if v.get("flag") is True} == {0, 2, 4}
    assert all("flag" not in p[k] for k in (1, 3, 5))


def test_overwrite_payload(client, euclid8):
    _seed_people(client, euclid8, n=4)
    client.overwrite_payload(euclid8, payload={"only": "this"}, points=[0, 3], wait=True)
    p = _payloads(client, euclid8)
    assert p[0] == {"only": "this"}
    assert p[3] == {"only": "this"}
    assert p[1] == {"group": "odd", "i": 1}
    client.overwrite_payload(
        euclid8,
        payload={"o": 1},
        points=models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value="odd"))]),
        wait=True,
    )
    p = _payloads(client, euclid8)
    assert p[1] == {"o": 1}
    assert p[3] == {"only": "this"}  # no longer has group=odd
    assert p[2] == {"group": "even", "i": 2}


def test_delete_payload_keys(client, euclid8):
    _seed_people(client, euclid8, n=4)
    client.delete_payload(euclid8, keys=["group", "nope"], points=[0, 1], wait=True)
    p = _payloads(client, euclid8)
    assert p[0] == {"i": 0}
    assert p[1] == {"i": 1}
    assert p[2] == {"group": "even", "i": 2}
    client.delete_payload(
        euclid8,
        keys=["i"],
        points=models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value="odd"))]),
        wait=True,
    )
    p = _payloads(client, euclid8)
    assert p[3] == {"group": "odd"}
    assert p[1] == {"i": 1}  # group was removed earlier, so the filter did not match
    assert p[2] == {"group": "even", "i": 2}


def test_clear_payload(client, euclid8):
    v = _seed_people(client, euclid8, n=6)
    client.clear_payload(euclid8, points_selector=[0, 1], wait=True)
    client.clear_payload(
        euclid8,
        points_selector=models.FilterSelector(
            filter=models.Filter(must=[models.FieldCondition(key="i", range=models.Range(gte=4))])
        ),
        wait=True,
    )
    recs = by_id(scroll_all(client, euclid8))
    for k in (0, 1, 4, 5):
        assert not recs[k].payload, f"payload of {k} should be cleared"
        assert close(recs[k].vector, v[k]), "clear_payload must keep the vector"
    assert recs[2].payload == {"group": "even", "i": 2}
    assert recs[3].payload == {"group": "odd", "i": 3}
    assert client.count(euclid8).count == 6


# --------------------------------------------------------------------------- scroll


@pytest.fixture
def scroll_coll(client, collection):
    name = collection(size=4, distance=models.Distance.DOT)
    rng = np.random.default_rng(11)
    ids = rng.permutation(np.arange(1, 500, 3))[:137].tolist()  # non-contiguous, inserted out of order
    v = rng.normal(size=(len(ids), 4)).astype(np.float32)
    client.upsert(
        name,
        points=models.Batch(
            ids=ids,
            vectors=v.tolist(),
            payloads=[{"id": i, "mod": i % 5, "meta": {"x": i, "y": -i}, "tag": "t"} for i in ids],
        ),
        wait=True,
    )
    return name, sorted(ids), {i: v[j] for j, i in enumerate(ids)}


def test_scroll_pages_cover_everything_once_in_id_order(client, scroll_coll):
    name, ids, _ = scroll_coll
    seen = []
    offset = None
    pages = 0
    while True:
        recs, nxt = client.scroll(name, limit=10, offset=offset)
        pages += 1
        assert len(recs) <= 10
        page_ids = [r.id for r in recs]
        assert page_ids == sorted(page_ids), "each page must be ordered by id"
        if nxt is not None:
            assert len(recs) == 10
            assert nxt > page_ids[-1], "next_page_offset must be past the current page"
        seen.extend(page_ids)
        if nxt is None:
            break
        offset = nxt
        assert pages < 100
    assert seen == ids
    assert pages == -(-len(ids) // 10)  # ceil


def test_scroll_offset_is_inclusive_start_id(client, scroll_coll):
    name, ids, _ = scroll_coll
    start = ids[40]
    recs, _ = client.scroll(name, limit=5, offset=start)
    assert [r.id for r in recs] == ids[40:45]
    # offset that is not an existing id: start from the next larger id
    missing = start + 1
    assert missing not in ids
    recs, _ = client.scroll(name, limit=3, offset=missing)
    assert [r.id for r in recs] == [i for i in ids if i > start][:3]


def test_scroll_exact_fit_has_no_next_page(client, scroll_coll):
    name, ids, _ = scroll_coll
    recs, nxt = client.scroll(name, limit=len(ids))
    assert len(recs) == len(ids)
    assert nxt is None
    recs, nxt = client.scroll(name, limit=len(ids) - 1)
    assert nxt == ids[-1]


def test_scroll_with_filter_paging(client, scroll_coll):
    name, ids, _ = scroll_coll
    flt = models.Filter(must=[models.FieldCondition(key="mod", match=models.MatchValue(value=2))])
    expected = [i for i in ids if i % 5 == 2]
    got = [r.id for r in scroll_all(client, name, page=7, scroll_filter=flt, with_payload=False, with_vectors=False)]
    assert got == expected
    assert client.count(name, count_filter=flt, exact=True).count == len(expected)


def test_scroll_payload_selectors_and_vectors(client, scroll_coll):
    name, ids, vmap = scroll_coll
    recs, _ = client.scroll(name, limit=3, with_payload=True, with_vectors=True)
    for r in recs:
        assert r.payload == {"id": r.id, "mod": r.id % 5, "meta": {"x": r.id, "y": -r.id}, "tag": "t"}
        assert close(r.vector, vmap[r.id])
    recs, _ = client.scroll(name, limit=3, with_payload=False, with_vectors=False)
    assert all(r.payload is None and r.vector is None for r in recs)
    recs, _ = client.scroll(name, limit=3, with_payload=["mod", "tag"])
    assert all(r.payload == {"mod": r.id % 5, "tag": "t"} for r in recs)
    recs, _ = client.scroll(name, limit=3, with_payload=models.PayloadSelectorInclude(include=["meta.x", "id"]))
    assert all(r.payload == {"id": r.id, "meta": {"x": r.id}} for r in recs)
    recs, _ = client.scroll(name, limit=3, with_payload=models.PayloadSelectorExclude(exclude=["meta", "tag"]))
    assert all(r.payload == {"id": r.id, "mod": r.id % 5} for r in recs)
    # default of scroll in the client: payload yes, vectors no
    recs, _ = client.scroll(name, limit=2)
    assert all(r.payload and r.vector is None for r in recs)


def test_scroll_mixed_int_and_uuid_ids(client, collection):
    name = collection(size=2, distance=models.Distance.EUCLID)
    uuids = sorted(str(uuid.UUID(int=int(x))) for x in np.random.default_rng(5).integers(1, 2**62, size=6))
    ints = [3, 1, 2]
    client.upsert(name, points=[models.PointStruct(id=i, vector=[0.0, 1.0]) for i in ints + uuids], wait=True)
    got = [r.id for r in scroll_all(client, name, page=4)]
    # Qdrant orders numeric ids first, then UUIDs (by their 128-bit value)
    assert got == [1, 2, 3] + sorted(uuids, key=lambda s: uuid.UUID(s).int)


def test_count(client, scroll_coll):
    name, ids, _ = scroll_coll
    assert client.count(name, exact=True).count == len(ids)
    flt = models.Filter(must=[models.FieldCondition(key="meta.x", range=models.Range(gte=100, lt=300))])
    assert client.count(name, count_filter=flt, exact=True).count == len([i for i in ids if 100 <= i < 300])
    none = models.Filter(must=[models.FieldCondition(key="tag", match=models.MatchValue(value="zzz"))])
    assert client.count(name, count_filter=none, exact=True).count == 0


def test_empty_collection_scroll_and_count(client, euclid8):
    recs, nxt = client.scroll(euclid8, limit=10)
    assert recs == [] and nxt is None
    assert client.count(euclid8).count == 0


def test_raw_update_result_shape(http, euclid8):
    r = http.put(
        f"/collections/{euclid8}/points?wait=true",
        json={"points": [{"id": 1, "vector": [0.5] * 8, "payload": {"a": 1}}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["result"]["status"] == "completed"
    assert isinstance(body["result"].get("operation_id", 0), int)
    assert isinstance(body["time"], (int, float))


# --------------------------------------------------------------------------- extra compatibility details


def test_payload_json_roundtrip_and_extreme_ids(client, euclid8, http):
    tricky = {
        "unicode": "héllo ✓ 世界",
        "big_int": 9007199254740993,  # > 2^53: must not go through a float
        "neg": -42,
        "small_float": 1.5e-7,
        "float": 0.1,
        "null": None,
        "empty_obj": {},
        "empty_list": [],
        "nested_lists": [[1], [2, [3, {"x": True}]]],
        "bool": False,
        "quote": 'a "quoted" \\ string',
    }
    max_u64 = 2**64 - 1
    client.upsert(
        euclid8,
        points=[
            models.PointStruct(id=0, vector=[0.0] * 8, payload=tricky),
            models.PointStruct(id=max_u64, vector=[1.0] * 8, payload={"max": True}),
        ],
        wait=True,
    )
    recs = by_id(client.retrieve(euclid8, ids=[0, max_u64]))
    assert recs[0].payload == tricky
    assert recs[max_u64].payload == {"max": True}
    r = http.get(f"/collections/{euclid8}/points/{max_u64}")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["id"] == max_u64
    assert [r.id for r in scroll_all(client, euclid8)] == [0, max_u64]


def test_set_payload_with_nested_key(client, euclid8):
    client.upsert(
        euclid8,
        points=[
            models.PointStruct(id=1, vector=[0.0] * 8, payload={"a": 1, "nested": {"k": 0}}),
            models.PointStruct(id=2, vector=[0.0] * 8, payload={"a": 2}),
        ],
        wait=True,
    )
    client.set_payload(euclid8, payload={"x": 1}, points=[1, 2], key="nested.inner", wait=True)
    p = _payloads(client, euclid8)
    assert p[1] == {"a": 1, "nested": {"k": 0, "inner": {"x": 1}}}
    assert p[2] == {"a": 2, "nested": {"inner": {"x": 1}}}


def test_has_id_with_uuids(client, euclid8):
    client.upsert(
        euclid8,
        points=[models.PointStruct(id=i, vector=[0.0] * 8) for i in (UUID_A, UUID_B, 5)],
        wait=True,
    )
    flt = models.Filter(must=[models.HasIdCondition(has_id=[UUID_B, 5])])
    assert sorted(map(str, (r.id for r in scroll_all(client, euclid8, scroll_filter=flt)))) == sorted([UUID_B, "5"])
    client.delete(euclid8, points_selector=models.FilterSelector(filter=flt), wait=True)
    assert [r.id for r in scroll_all(client, euclid8)] == [UUID_A]


def test_upsert_wait_false_becomes_visible(client, euclid8):
    import time

    res = client.upsert(
        euclid8,
        points=models.Batch(ids=list(range(50)), vectors=vecs(50, 8, 8).tolist()),
        wait=False,
    )
    assert res.status in (models.UpdateStatus.ACKNOWLEDGED, models.UpdateStatus.COMPLETED)
    deadline = time.monotonic() + 10
    while client.count(euclid8).count != 50:
        assert time.monotonic() < deadline, "wait=false upsert never became visible"
        time.sleep(0.05)
    # a subsequent wait=true write is ordered after it
    client.delete(euclid8, points_selector=list(range(25)), wait=True)
    assert client.count(euclid8).count == 25


def test_large_scroll_limit_is_accepted(client, scroll_coll):
    """Qdrant has no upper bound on the scroll limit (only >= 1)."""
    name, ids, _ = scroll_coll
    recs, nxt = client.scroll(name, limit=100_000, with_payload=False)
    assert [r.id for r in recs] == ids and nxt is None


def test_scroll_pages_are_capped_but_paging_reaches_every_point(client, collection):
    """Shoal deliberately bounds a scroll page at 10,000 points (Qdrant has no cap), so that no
    single request can exhaust the node's memory. A larger `limit` gets a full page and a
    `next_page_offset`; following it reaches every point exactly once."""
    name = collection(size=2, distance=models.Distance.DOT)
    n = 10_050
    for lo in range(0, n, 2_500):
        hi = min(n, lo + 2_500)
        client.upsert(name, points=models.Batch(ids=list(range(lo, hi)), vectors=[[1.0, 0.0]] * (hi - lo)), wait=True)
    recs, nxt = client.scroll(name, limit=20_000, with_payload=False)
    assert len(recs) == 10_000 and nxt == 10_000, f"got {len(recs)} points, next_page_offset={nxt}"
    rest, end = client.scroll(name, limit=20_000, offset=nxt, with_payload=False)
    assert end is None
    assert [r.id for r in recs + rest] == list(range(n))
    recs, nxt = client.scroll(name, limit=n - 1, with_payload=False)
    assert len(recs) == 10_000 and nxt == 10_000


# --------------------------------------------------------------------------- vector updates, payload-only collections


def test_vector_updates_are_normalised_like_upserts(client, collection):
    """`update_vectors` (alone and inside `points/batch`) stores a Cosine vector normalised, as
    an upsert does (Qdrant normalises every Cosine vector it stores)."""
    name = collection(size=3, distance=models.Distance.COSINE)
    client.upsert(name, points=[models.PointStruct(id=i, vector=[1.0, 0.0, 0.0]) for i in (1, 2)], wait=True)
    client.update_vectors(name, points=[models.PointVectors(id=1, vector=[3.0, 4.0, 0.0])], wait=True)
    client.batch_update_points(
        name,
        update_operations=[
            models.UpdateVectorsOperation(
                update_vectors=models.UpdateVectors(points=[models.PointVectors(id=2, vector=[0.0, 0.0, 2.0])])
            )
        ],
        wait=True,
    )
    got = by_id(client.retrieve(name, ids=[1, 2], with_vectors=True))
    assert close(got[1].vector, [0.6, 0.8, 0.0])
    assert close(got[2].vector, [0.0, 0.0, 1.0])


def test_collection_without_vectors_holds_payloads(client):
    """`"vectors": {}` makes a payload-only collection (as in Qdrant): `"vector": []` or `{}`
    upserts a point without vectors; a real vector is refused with Qdrant's error; scroll,
    count and a query without `query` (id order, score 1.0) work."""
    name = f"novec_{uuid.uuid4().hex[:10]}"
    assert client.create_collection(name, vectors_config={})
    try:
        client.upsert(
            name,
            points=[
                models.PointStruct(id=1, vector=[], payload={"a": 1}),
                models.PointStruct(id=2, vector={}, payload={"a": 2}),
            ],
            wait=True,
        )
        with pytest.raises(Exception, match="Not existing vector name error"):
            client.upsert(name, points=[models.PointStruct(id=3, vector=[0.1, 0.2])], wait=True)
        assert client.count(name, exact=True).count == 2
        points = client.query_points(name, limit=10).points
        assert [(p.id, p.score) for p in points] == [(1, 1.0), (2, 1.0)]
        assert [r.payload for r in client.retrieve(name, ids=[1, 2])] == [{"a": 1}, {"a": 2}]
    finally:
        client.delete_collection(name)


def test_set_payload_with_an_index_past_the_end_changes_nothing(client, euclid8):
    """Qdrant's `set_payload` with `key: "nest[1]"` on a one-element array sets nothing."""
    client.upsert(euclid8, points=[models.PointStruct(id=1, vector=[0.0] * 8, payload={"nest": [{"a": "1"}]})], wait=True)
    client.set_payload(euclid8, payload={"d": "4"}, points=[1], key="nest[1]", wait=True)
    assert client.retrieve(euclid8, ids=[1])[0].payload == {"nest": [{"a": "1"}]}
    client.set_payload(euclid8, payload={"d": "4"}, points=[1], key="nest[0]", wait=True)
    assert client.retrieve(euclid8, ids=[1])[0].payload == {"nest": [{"a": "1", "d": "4"}]}


def test_uint8_and_float16_vectors_hold_the_values_qdrant_holds(client, http):
    """`datatype` converts stored and query vectors as Qdrant 1.18 does: uint8 truncates and
    saturates, float16 rounds to half precision (and a value past its range is refused)."""
    from qdrant_client import models as m

    name = f"u8_{uuid.uuid4().hex[:10]}"
    r = http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot", "datatype": "uint8"}})
    assert r.status_code == 200, r.text
    half = f"{name}_f16"
    r = http.put(f"/collections/{half}", json={"vectors": {"size": 4, "distance": "Euclid", "datatype": "float16"}})
    assert r.status_code == 200, r.text
    try:
        client.upsert(name, points=[m.PointStruct(id=1, vector=[1.7, 300.0, -3.0, 4.2])], wait=True)
        assert client.retrieve(name, [1], with_vectors=True)[0].vector == [1.0, 255.0, 0.0, 4.0]
        # The query is truncated too: [1.9, 1.2, 1.0, 1.5] scores as [1, 1, 1, 1].
        hit = client.query_points(name, query=[1.9, 1.2, 1.0, 1.5], limit=1).points[0]
        assert hit.score == pytest.approx(260.0)

        client.upsert(half, points=[m.PointStruct(id=1, vector=[0.1, 1.0, -2049.0, 3.0])], wait=True)
        assert client.retrieve(half, [1], with_vectors=True)[0].vector == pytest.approx([0.099975586, 1.0, -2048.0, 3.0])
        r = http.put(f"/collections/{half}/points?wait=true", json={"points": [{"id": 2, "vector": [0.0, 0.0, 0.0, 70000.0]}]})
        assert r.status_code == 400 and "float16" in r.json()["status"]["error"], r.text
        assert client.count(half, exact=True).count == 1
    finally:
        client.delete_collection(name)
        client.delete_collection(half)
