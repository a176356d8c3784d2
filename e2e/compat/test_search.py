"""Search correctness against an exact numpy brute force.

Qdrant score conventions:
  Cosine    -> cosine similarity (vectors are normalised on ingest), higher is better
  Dot       -> raw dot product, higher is better
  Euclid    -> L2 distance, lower is better
  Manhattan -> L1 distance, lower is better
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from qdrant_client import models

from conftest import unique_name

D = models.Distance
N_POINTS = 300
K = 10
SCORE_TOL = 1e-4
HIGHER_IS_BETTER = {D.COSINE: True, D.DOT: True, D.EUCLID: False, D.MANHATTAN: False}


# --------------------------------------------------------------------------- reference implementation


def stored_form(data: np.ndarray, distance) -> np.ndarray:
    """What the server stores (and returns): normalised rows for Cosine."""
    data = data.astype(np.float64)
    if distance == D.COSINE:
        norms = np.linalg.norm(data, axis=1, keepdims=True)
        norms[norms == 0] = 1
        return data / norms
    return data


def scores_for(stored: np.ndarray, q, distance) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if distance == D.COSINE:
        n = np.linalg.norm(q)
        q = q / (n if n else 1)
        return stored @ q
    if distance == D.DOT:
        return stored @ q
    if distance == D.EUCLID:
        return np.sqrt(((stored - q) ** 2).sum(axis=1))
    if distance == D.MANHATTAN:
        return np.abs(stored - q).sum(axis=1)
    raise ValueError(distance)


class Dataset:
    def __init__(self, name, distance, ids, raw):
        self.name = name
        self.distance = distance
        self.ids = np.asarray(ids)
        self.raw = raw
        self.stored = stored_form(raw, distance)
        self.row = {int(i): j for j, i in enumerate(ids)}
        self.buckets = np.asarray([int(i) % 4 for i in ids])

    def expected(self, q, k, mask=None, exclude=()):
        s = scores_for(self.stored, q, self.distance)
        keep = np.ones(len(s), dtype=bool) if mask is None else mask.copy()
        for e in exclude:
            keep[self.row[e]] = False
        idx = np.nonzero(keep)[0]
        order = idx[np.argsort(-s[idx] if HIGHER_IS_BETTER[self.distance] else s[idx], kind="stable")]
        top = order[:k]
        return [int(self.ids[j]) for j in top], [float(s[j]) for j in top], s

    def check(self, hits, q, k, mask=None, exclude=(), label=""):
        exp_ids, exp_scores, all_scores = self.expected(q, k, mask, exclude)
        got = [(h.id if hasattr(h, "id") else h["id"], h.score if hasattr(h, "score") else h["score"]) for h in hits]
        got_ids = [g[0] for g in got]
        assert len(got_ids) == len(exp_ids), f"{label}: expected {len(exp_ids)} hits, got {len(got_ids)}"
        assert len(set(got_ids)) == len(got_ids), f"{label}: duplicate ids {got_ids}"
        for rank, (gid, gscore) in enumerate(got):
            assert gid in self.row, f"{label}: unknown id {gid}"
            true = float(all_scores[self.row[gid]])
            assert np.isclose(gscore, true, rtol=SCORE_TOL, atol=SCORE_TOL), (
                f"{label}: score of id {gid} is {gscore}, brute force says {true}"
            )
            if gid != exp_ids[rank]:
                # only tolerated for numerical near-ties
                assert np.isclose(true, exp_scores[rank], rtol=SCORE_TOL, atol=SCORE_TOL), (
                    f"{label}: rank {rank}: got id {gid} (score {true}), expected id {exp_ids[rank]} "
                    f"(score {exp_scores[rank]})\n got ids: {got_ids}\n expected: {exp_ids}"
                )
        if mask is not None:
            for gid in got_ids:
                assert mask[self.row[gid]], f"{label}: id {gid} does not satisfy the filter"
        return got_ids


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def datasets(client):
    cache: dict = {}
    created = []

    def get(distance, dim, shards=None) -> Dataset:
        key = (distance, dim, shards)
        if key not in cache:
            seed = {D.COSINE: 1, D.DOT: 2, D.EUCLID: 3, D.MANHATTAN: 4}[distance] * 1000 + dim + (shards or 0)
            rng = np.random.default_rng(seed)
            raw = rng.normal(size=(N_POINTS, dim)).astype(np.float32)
            ids = (1000 + 7 * rng.permutation(N_POINTS)).tolist()  # non-contiguous, shuffled ids
            name = unique_name("search")
            kw = {"shard_number": shards} if shards else {}
            client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=distance), **kw)
            created.append(name)
            client.upsert(
                name,
                points=models.Batch(
                    ids=ids,
                    vectors=raw.tolist(),
                    payloads=[{"bucket": i % 4, "pid": i} for i in ids],
                ),
                wait=True,
            )
            assert client.count(name, exact=True).count == N_POINTS
            cache[key] = Dataset(name, distance, ids, raw)
        return cache[key]

    yield get
    for name in created:
        try:
            client.delete_collection(name)
        except Exception:
            pass


def queries(dim, n=4, seed=0):
    return np.random.default_rng(seed + dim).normal(size=(n, dim)).astype(np.float32).tolist()


DIST_DIM = [(d, dim) for d in (D.COSINE, D.DOT, D.EUCLID, D.MANHATTAN) for dim in (4, 16, 32)]
DIST_DIM_IDS = [f"{d.value}-{dim}" for d, dim in DIST_DIM]
ALL_D = [D.COSINE, D.DOT, D.EUCLID, D.MANHATTAN]


# --------------------------------------------------------------------------- query_points (vector)


@pytest.mark.parametrize("distance,dim", DIST_DIM, ids=DIST_DIM_IDS)
def test_query_points_exact_matches_brute_force(client, datasets, distance, dim):
    ds = datasets(distance, dim)
    for qi, q in enumerate(queries(dim)):
        res = client.query_points(
            ds.name, query=q, limit=K, search_params=models.SearchParams(hnsw_ef=128, exact=True)
        )
        ds.check(res.points, q, K, label=f"exact q{qi}")


@pytest.mark.parametrize("distance,dim", DIST_DIM, ids=DIST_DIM_IDS)
def test_query_points_default_hnsw_matches_brute_force(client, datasets, distance, dim):
    ds = datasets(distance, dim)
    for qi, q in enumerate(queries(dim, seed=100)):
        res = client.query_points(ds.name, query=q, limit=K)
        ds.check(res.points, q, K, label=f"hnsw q{qi}")
        res = client.query_points(ds.name, query=q, limit=K, search_params=models.SearchParams(hnsw_ef=16))
        ds.check(res.points, q, K, label=f"hnsw ef=16 q{qi}")


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_multi_shard_search_matches_brute_force(client, datasets, distance):
    ds = datasets(distance, 16, shards=3)
    for qi, q in enumerate(queries(16, seed=7)):
        ds.check(client.query_points(ds.name, query=q, limit=K).points, q, K, label=f"3 shards q{qi}")
        ds.check(
            client.query_points(ds.name, query=q, limit=K, search_params=models.SearchParams(exact=True)).points,
            q,
            K,
            label=f"3 shards exact q{qi}",
        )


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_query_with_payload_and_vectors(client, datasets, distance):
    ds = datasets(distance, 16)
    q = queries(16)[0]
    res = client.query_points(ds.name, query=q, limit=5, with_payload=True, with_vectors=True).points
    ds.check(res, q, 5)
    for p in res:
        assert p.payload == {"bucket": p.id % 4, "pid": p.id}
        assert np.allclose(p.vector, ds.stored[ds.row[p.id]], atol=1e-5), "returned vector must be the stored one"
        assert isinstance(p.version, int)
    res = client.query_points(ds.name, query=q, limit=5, with_payload=False, with_vectors=False).points
    assert all(p.payload is None and p.vector is None for p in res)
    res = client.query_points(ds.name, query=q, limit=5, with_payload=["pid"]).points
    assert all(p.payload == {"pid": p.id} for p in res)


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_query_offset_and_limit(client, datasets, distance):
    ds = datasets(distance, 16)
    q = queries(16)[1]
    exp_ids, _, _ = ds.expected(q, 15)
    res = client.query_points(ds.name, query=q, limit=5, offset=5, search_params=models.SearchParams(exact=True))
    assert [p.id for p in res.points] == exp_ids[5:10]
    res = client.query_points(ds.name, query=q, limit=N_POINTS + 50)
    assert len(res.points) == N_POINTS


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_query_with_filter(client, datasets, distance):
    ds = datasets(distance, 16)
    flt = models.Filter(must=[models.FieldCondition(key="bucket", match=models.MatchValue(value=1))])
    mask = ds.buckets == 1
    for qi, q in enumerate(queries(16, seed=3)):
        res = client.query_points(ds.name, query=q, limit=K, query_filter=flt)
        ds.check(res.points, q, K, mask=mask, label=f"filtered q{qi}")
        res = client.query_points(
            ds.name, query=q, limit=K, query_filter=flt, search_params=models.SearchParams(exact=True)
        )
        ds.check(res.points, q, K, mask=mask, label=f"filtered exact q{qi}")


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_score_threshold(client, datasets, distance):
    ds = datasets(distance, 16)
    q = queries(16, seed=9)[0]
    s = np.sort(scores_for(ds.stored, q, distance))
    if HIGHER_IS_BETTER[distance]:
        s = s[::-1]
    # threshold strictly between the 20th and 21st best scores -> exactly 20 results
    thr = float((s[19] + s[20]) / 2)
    assert abs(s[19] - s[20]) > 1e-4, "test data has a near-tie at the threshold"
    res = client.query_points(ds.name, query=q, limit=100, score_threshold=thr).points
    ds.check(res, q, 20, label="score_threshold")
    for p in res:
        assert (p.score >= thr) if HIGHER_IS_BETTER[distance] else (p.score <= thr)


# --------------------------------------------------------------------------- query by id / recommend


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_query_by_point_id(client, datasets, distance):
    ds = datasets(distance, 16)
    for pid in (int(ds.ids[0]), int(ds.ids[123])):
        q = ds.stored[ds.row[pid]]
        res = client.query_points(ds.name, query=pid, limit=K)
        got = ds.check(res.points, q, K, exclude=[pid], label=f"by id {pid}")
        assert pid not in got, "the query point itself must be excluded"


def _reco_vector(ds, pos, neg):
    ap = np.mean([ds.stored[ds.row[i]] for i in pos], axis=0)
    if not neg:
        return ap
    an = np.mean([ds.stored[ds.row[i]] for i in neg], axis=0)
    return ap + (ap - an)


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_recommend_positive_negative(client, datasets, distance):
    ds = datasets(distance, 16)
    pos = [int(ds.ids[3]), int(ds.ids[77])]
    neg = [int(ds.ids[150])]
    q = _reco_vector(ds, pos, neg)
    res = client.query_points(
        ds.name,
        query=models.RecommendQuery(recommend=models.RecommendInput(positive=pos, negative=neg)),
        limit=K,
    )
    got = ds.check(res.points, q, K, exclude=pos + neg, label="recommend +/-")
    assert not set(got) & set(pos + neg)


@pytest.mark.parametrize("distance", [D.COSINE, D.EUCLID], ids=lambda d: d.value)
def test_recommend_positive_only(client, datasets, distance):
    ds = datasets(distance, 16)
    pos = [int(ds.ids[10]), int(ds.ids[20]), int(ds.ids[30])]
    q = _reco_vector(ds, pos, [])
    res = client.query_points(
        ds.name, query=models.RecommendQuery(recommend=models.RecommendInput(positive=pos)), limit=K
    )
    ds.check(res.points, q, K, exclude=pos, label="recommend +")


def test_query_by_uuid_id(client, collection):
    name = collection(size=3, distance=models.Distance.EUCLID)
    u = [str(uuid.UUID(int=i * 0x10001 + 5)) for i in range(4)]
    client.upsert(
        name,
        points=[models.PointStruct(id=u[i], vector=[float(i), 0.0, 0.0]) for i in range(4)],
        wait=True,
    )
    res = client.query_points(name, query=u[1], limit=3).points
    assert [p.id for p in res] == [u[0], u[2], u[3]] or [p.id for p in res] == [u[2], u[0], u[3]]
    assert [round(p.score, 5) for p in res] == [1.0, 1.0, 2.0]


# --------------------------------------------------------------------------- batch + raw search endpoints


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_query_batch_points(client, datasets, distance):
    ds = datasets(distance, 32)
    qs = queries(32, n=3, seed=21)
    flt = models.Filter(must_not=[models.FieldCondition(key="bucket", match=models.MatchValue(value=0))])
    reqs = [
        models.QueryRequest(query=qs[0], limit=K),
        models.QueryRequest(query=qs[1], limit=3, filter=flt),
        models.QueryRequest(query=qs[2], limit=K, params=models.SearchParams(exact=True), with_payload=True),
        models.QueryRequest(query=int(ds.ids[5]), limit=4),
    ]
    out = client.query_batch_points(ds.name, requests=reqs)
    assert len(out) == 4
    ds.check(out[0].points, qs[0], K, label="batch[0]")
    ds.check(out[1].points, qs[1], 3, mask=ds.buckets != 0, label="batch[1]")
    ds.check(out[2].points, qs[2], K, label="batch[2]")
    assert all(p.payload == {"bucket": p.id % 4, "pid": p.id} for p in out[2].points)
    ds.check(out[3].points, ds.stored[5], 4, exclude=[int(ds.ids[5])], label="batch[3] by id")


@pytest.mark.parametrize("distance,dim", DIST_DIM, ids=DIST_DIM_IDS)
def test_raw_search_endpoint(http, datasets, distance, dim):
    ds = datasets(distance, dim)
    for qi, q in enumerate(queries(dim, seed=50)):
        for params in ({"exact": True}, {"hnsw_ef": 64}, None):
            body = {"vector": q, "limit": K}
            if params:
                body["params"] = params
            r = http.post(f"/collections/{ds.name}/points/search", json=body)
            assert r.status_code == 200, r.text
            payload = r.json()
            assert payload["status"] == "ok"
            hits = payload["result"]
            for h in hits:
                assert "version" in h and isinstance(h["version"], int)
            ds.check(hits, q, K, label=f"raw search q{qi} {params}")


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_raw_search_options(http, datasets, distance):
    ds = datasets(distance, 16)
    q = queries(16, seed=60)[0]
    body = {
        "vector": q,
        "limit": 5,
        "offset": 2,
        "with_payload": True,
        "with_vector": True,
        "filter": {"must": [{"key": "bucket", "match": {"any": [1, 2]}}]},
    }
    r = http.post(f"/collections/{ds.name}/points/search", json=body)
    assert r.status_code == 200, r.text
    hits = r.json()["result"]
    mask = np.isin(ds.buckets, [1, 2])
    exp_ids, _, _ = ds.expected(q, 7, mask=mask)
    assert [h["id"] for h in hits] == exp_ids[2:7]
    for h in hits:
        assert h["payload"] == {"bucket": h["id"] % 4, "pid": h["id"]}
        assert np.allclose(h["vector"], ds.stored[ds.row[h["id"]]], atol=1e-5)
    # Qdrant's search default: no payload, no vector
    r = http.post(f"/collections/{ds.name}/points/search", json={"vector": q, "limit": 2})
    for h in r.json()["result"]:
        assert h.get("payload") is None and h.get("vector") is None


@pytest.mark.parametrize("distance", ALL_D, ids=lambda d: d.value)
def test_raw_search_batch(http, datasets, distance):
    ds = datasets(distance, 16)
    qs = queries(16, n=3, seed=70)
    body = {
        "searches": [
            {"vector": qs[0], "limit": K},
            {"vector": qs[1], "limit": 4, "filter": {"must": [{"key": "bucket", "match": {"value": 3}}]}},
            {"vector": qs[2], "limit": K, "params": {"exact": True}, "score_threshold": None},
        ]
    }
    r = http.post(f"/collections/{ds.name}/points/search/batch", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert isinstance(res, list) and len(res) == 3
    ds.check(res[0], qs[0], K, label="search/batch[0]")
    ds.check(res[1], qs[1], 4, mask=ds.buckets == 3, label="search/batch[1]")
    ds.check(res[2], qs[2], K, label="search/batch[2]")


def test_search_after_updates_and_deletes(client, collection):
    """Index must reflect overwrites and deletions."""
    name = collection(size=4, distance=models.Distance.EUCLID)
    rng = np.random.default_rng(99)
    raw = rng.normal(size=(200, 4)).astype(np.float32)
    client.upsert(name, points=models.Batch(ids=list(range(200)), vectors=raw.tolist()), wait=True)
    target = [5.0, 5.0, 5.0, 5.0]
    # move point 17 right onto the target, delete the current true nearest neighbours
    before = [p.id for p in client.query_points(name, query=target, limit=3).points]
    client.upsert(name, points=[models.PointStruct(id=17, vector=target)], wait=True)
    client.delete(name, points_selector=[i for i in before if i != 17], wait=True)
    ds = Dataset(name, models.Distance.EUCLID, list(range(200)), raw.copy())
    ds.stored[17] = target
    mask = np.ones(200, dtype=bool)
    for i in before:
        if i != 17:
            mask[i] = False
    for exact in (False, True):
        res = client.query_points(name, query=target, limit=K, search_params=models.SearchParams(exact=exact)).points
        assert res[0].id == 17 and res[0].score == pytest.approx(0.0, abs=1e-5)
        ds.check(res, target, K, mask=mask, label=f"after updates exact={exact}")


def test_large_query_limit_is_accepted(client, datasets):
    """Qdrant has no upper bound on limit (only >= 1); all points come back."""
    ds = datasets(D.EUCLID, 4)
    q = queries(4)[0]
    res = client.query_points(ds.name, query=q, limit=100_000).points
    ds.check(res, q, N_POINTS, label="limit=100000")


def test_query_without_query_lists_points_by_id(client, datasets):
    """QueryRequest without `query` (and no prefetch) returns points ordered by id."""
    ds = datasets(D.DOT, 4)
    flt = models.Filter(must=[models.FieldCondition(key="bucket", match=models.MatchValue(value=2))])
    res = client.query_points(ds.name, limit=7, query_filter=flt, with_payload=True).points
    expected = sorted(int(i) for i in ds.ids if int(i) % 4 == 2)[:7]
    assert [p.id for p in res] == expected
    assert all(p.payload["bucket"] == 2 for p in res)


def test_indexed_collection_recall_and_exact(client, collection):
    """With a low indexing threshold the HNSW graph is really used: recall must stay high,
    exact=True must stay exact, and filters must still be honoured."""
    import time

    n, dim = 2000, 16
    name = collection(
        size=dim,
        distance=D.COSINE,
        hnsw_config=models.HnswConfigDiff(m=16, ef_construct=64, full_scan_threshold=10),
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=10),
    )
    rng = np.random.default_rng(2024)
    raw = rng.normal(size=(n, dim)).astype(np.float32)
    ids = list(range(1, n + 1))
    for lo in range(0, n, 500):
        client.upsert(
            name,
            points=models.Batch(
                ids=ids[lo : lo + 500], vectors=raw[lo : lo + 500].tolist(), payloads=[{"bucket": i % 4} for i in ids[lo : lo + 500]]
            ),
            wait=True,
        )
    ds = Dataset(name, D.COSINE, ids, raw)
    # give the optimizer a moment to build the graph (status goes back to green when done)
    deadline = time.monotonic() + 20
    while client.get_collection(name).status != models.CollectionStatus.GREEN and time.monotonic() < deadline:
        time.sleep(0.2)
    info = client.get_collection(name)
    assert info.points_count == n
    qs = queries(dim, n=10, seed=4242)
    hits = total = 0
    for q in qs:
        exp_ids, _, _ = ds.expected(q, K)
        got = client.query_points(name, query=q, limit=K, search_params=models.SearchParams(hnsw_ef=128)).points
        assert len(got) == K
        hits += len(set(p.id for p in got) & set(exp_ids))
        total += K
        for p in got:  # whatever the graph returns, the scores must be true scores
            assert np.isclose(p.score, float(scores_for(ds.stored[[ds.row[p.id]]], q, D.COSINE)[0]), atol=SCORE_TOL)
        ds.check(client.query_points(name, query=q, limit=K, search_params=models.SearchParams(exact=True)).points, q, K)
        flt = models.Filter(must=[models.FieldCondition(key="bucket", match=models.MatchValue(value=3))])
        fres = client.query_points(name, query=q, limit=K, query_filter=flt).points
        assert len(fres) == K and all(p.id % 4 == 3 for p in fres)
    assert hits / total >= 0.9, f"HNSW recall@{K} too low: {hits / total:.2f}"


@pytest.mark.parametrize("distance", ALL_D, ids=[d.value for d in ALL_D])
def test_scalar_quantized_search_rescores_with_original_vectors(client, collection, http, distance):
    """Scalar int8 quantization is applied, not only stored: the graph walk compares codes and
    the hits are rescored with the original vectors (true scores, high recall); with
    `rescore: false` the codes' approximate scores come back; `ignore` searches the vectors;
    an oversampling below 1 is refused and the collection reports no warning."""
    import time

    n, dim = 2000, 16
    name = collection(
        size=dim,
        distance=distance,
        hnsw_config=models.HnswConfigDiff(m=16, ef_construct=64, full_scan_threshold=10),
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=10),
        quantization_config=models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        ),
    )
    rng = np.random.default_rng(77)
    raw = rng.normal(size=(n, dim)).astype(np.float32)
    ids = list(range(1, n + 1))
    client.upsert(name, points=models.Batch(ids=ids, vectors=raw.tolist()), wait=True)
    ds = Dataset(name, distance, ids, raw)
    deadline = time.monotonic() + 30
    while client.get_collection(name).status != models.CollectionStatus.GREEN and time.monotonic() < deadline:
        time.sleep(0.2)
    info = http.get(f"/collections/{name}").json()["result"]
    assert info["status"] == "green" and info["indexed_vectors_count"] > 0, info
    assert not info.get("warnings"), info["warnings"]
    hits = total = 0
    approximate = 0
    for q in queries(dim, n=10, seed=99):
        exp_ids, _, _ = ds.expected(q, K)
        true = lambda p: float(scores_for(ds.stored[[ds.row[p.id]]], q, distance)[0])  # noqa: E731
        got = client.query_points(name, query=q, limit=K, search_params=models.SearchParams(hnsw_ef=64)).points
        assert len(got) == K
        hits += len(set(p.id for p in got) & set(exp_ids))
        total += K
        assert all(np.isclose(p.score, true(p), atol=SCORE_TOL) for p in got)
        raw_scores = client.query_points(
            name,
            query=q,
            limit=K,
            search_params=models.SearchParams(
                hnsw_ef=64, quantization=models.QuantizationSearchParams(rescore=False, oversampling=2.0)
            ),
        ).points
        assert len(raw_scores) == K
        approximate += sum(not np.isclose(p.score, true(p), atol=SCORE_TOL) for p in raw_scores)
        ignored = client.query_points(
            name,
            query=q,
            limit=K,
            search_params=models.SearchParams(quantization=models.QuantizationSearchParams(ignore=True, rescore=False)),
        ).points
        assert all(np.isclose(p.score, true(p), atol=SCORE_TOL) for p in ignored)
    assert hits / total >= 0.9, f"recall@{K} with codes: {hits / total:.2f}"
    assert approximate > 0, "rescore=false must answer the codes' scores"
    r = http.post(
        f"/collections/{name}/points/search",
        json={"vector": queries(dim, n=1)[0], "limit": 3, "params": {"quantization": {"oversampling": 0.5}}},
    )
    assert r.status_code == 422 and "oversampling" in r.text, r.text


def test_malformed_quantization_is_refused(http):
    name = unique_name("q")
    for body in (
        {"scalar": {"type": "int4"}},
        {"scalar": {"type": "int8", "quantile": 0.1}},
        {"product": {"compression": "x3"}},
        {"scalar": {"type": "int8"}, "binary": {}},
    ):
        r = http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}, "quantization_config": body})
        assert r.status_code in (400, 422) and "quantization" in r.text, (body, r.status_code, r.text)
        assert http.get(f"/collections/{name}").status_code == 404


def test_relevance_feedback_reorders_by_feedback_pairs(client, collection):
    """Qdrant's naive relevance feedback: score = a * sim(target) + sum over pairs (better,
    worse) of (score difference)^b * c * (sim(better) - sim(worse)); example ids are excluded."""
    name = collection(size=2, distance=models.Distance.DOT)
    vectors = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [0.7, 0.7], 4: [-1.0, 0.0]}
    client.upsert(name, points=[models.PointStruct(id=i, vector=v) for i, v in vectors.items()], wait=True)
    plain = client.query_points(name, query=[1.0, 0.0], limit=2).points
    assert [p.id for p in plain] == [1, 3]
    got = client.query_points(
        name,
        query=models.RelevanceFeedbackQuery(
            relevance_feedback=models.RelevanceFeedbackInput(
                target=[1.0, 0.0],
                feedback=[models.FeedbackItem(example=2, score=0.9), models.FeedbackItem(example=4, score=0.1)],
                strategy=models.NaiveFeedbackStrategy(naive=models.NaiveFeedbackStrategyParams(a=0.5, b=1.0, c=1.0)),
            )
        ),
        limit=10,
    ).points
    assert [p.id for p in got] == [3, 1]
    assert abs(got[0].score - (0.35 + 0.8 * 1.4)) < 1e-4 and abs(got[1].score - 1.3) < 1e-4


def test_query_groups_by_payload_value_with_lookup(client, collection):
    """Grouped query: groups in the order of their best hit, `group_size` hits each (best
    first), a point with several values in several groups, and each group's id looked up in
    another collection."""
    name = collection(size=2, distance=models.Distance.DOT)
    cities = collection(size=2, distance=models.Distance.DOT)
    points = [
        (1, [0.9, 0.0], "a"), (2, [0.8, 0.0], "b"), (3, [0.7, 0.0], "a"),
        (4, [0.6, 0.0], ["b", "c"]), (5, [0.5, 0.0], "a"), (6, [0.4, 0.0], 7),
    ]
    client.upsert(
        name, points=[models.PointStruct(id=i, vector=v, payload={"g": g}) for i, v, g in points], wait=True
    )
    client.upsert(cities, points=[models.PointStruct(id=7, vector=[0.0, 1.0], payload={"city": "seven"})], wait=True)
    got = client.query_points_groups(
        name, query=[1.0, 0.0], group_by="g", group_size=2, limit=4, with_payload=False, with_lookup=cities
    ).groups
    assert [(g.id, [h.id for h in g.hits]) for g in got] == [("a", [1, 3]), ("b", [2, 4]), ("c", [4]), (7, [6])]
    assert got[3].lookup is not None and got[3].lookup.payload == {"city": "seven"}
    assert got[0].lookup is None
    assert got[0].hits[0].payload is None


def test_formula_rescores_prefetched_points(client, collection):
    """Score boosting: `$score` plus a payload value times a weight plus a condition, over the
    points the prefetch found; errors in the formula are 400s."""
    name = collection(size=2, distance=models.Distance.DOT)
    client.upsert(
        name,
        points=[
            models.PointStruct(id=1, vector=[1.0, 0.0], payload={"boost": 0.0, "tag": "x"}),
            models.PointStruct(id=2, vector=[0.5, 0.0], payload={"boost": 2.0}),
            models.PointStruct(id=3, vector=[0.1, 0.0], payload={}),
        ],
        wait=True,
    )
    got = client.query_points(
        name,
        prefetch=models.Prefetch(query=[1.0, 0.0], limit=10),
        query=models.FormulaQuery(
            formula=models.SumExpression(
                sum=["$score", models.MultExpression(mult=[0.5, "boost"]),
                     models.FieldCondition(key="tag", match=models.MatchValue(value="x"))]
            ),
            defaults={"boost": 10.0},
        ),
        limit=3,
    ).points
    assert [(p.id, round(p.score, 4)) for p in got] == [(3, 5.1), (1, 2.0), (2, 1.5)]
    with pytest.raises(Exception, match="non-finite|in the payload"):
        client.query_points(
            name,
            prefetch=models.Prefetch(query=[1.0, 0.0], limit=10),
            query=models.FormulaQuery(formula=models.DivExpression(div=models.DivParams(left=1.0, right="boost"))),
        )


def test_facet_counts_values_most_frequent_first(client, collection, http):
    name = collection(size=2, distance=models.Distance.DOT)
    tags = [["a", "b"], "a", ["a", "a"], "c", 5, None]
    client.upsert(
        name, points=[models.PointStruct(id=i + 1, vector=[1.0, 0.0], payload={"t": t}) for i, t in enumerate(tags)],
        wait=True,
    )
    r = http.post(f"/collections/{name}/facet", json={"key": "t"})
    assert r.status_code == 400 and "Index required" in r.text
    client.create_payload_index(name, "t", models.PayloadSchemaType.KEYWORD, wait=True)
    hits = client.facet(name, key="t").hits
    assert [(h.value, h.count) for h in hits] == [("a", 3), ("b", 1), ("c", 1), (5, 1)]
    flt = models.Filter(must_not=[models.HasIdCondition(has_id=[1])])
    assert [(h.value, h.count) for h in client.facet(name, key="t", facet_filter=flt, limit=1).hits] == [("a", 2)]


def test_distance_matrix_pairs_and_offsets_agree(client, collection):
    name = collection(size=2, distance=models.Distance.DOT)
    client.upsert(
        name, points=[models.PointStruct(id=i, vector=[float(i), 1.0]) for i in range(1, 6)], wait=True
    )
    pairs = client.search_matrix_pairs(name, sample=5, limit=2).pairs
    assert len(pairs) == 10
    # Dot: point 5 is everyone's nearest, then 4 (and 4 for point 5 itself).
    assert [(p.a, p.b) for p in pairs if p.a == 1] == [(1, 5), (1, 4)]
    assert [(p.a, p.b, p.score) for p in pairs if p.a == 5] == [(5, 4, 21.0), (5, 3, 16.0)]
    offsets = client.search_matrix_offsets(name, sample=5, limit=2)
    assert offsets.ids == [1, 2, 3, 4, 5]
    got = [(offsets.ids[r], offsets.ids[c], s) for r, c, s in zip(offsets.offsets_row, offsets.offsets_col, offsets.scores)]
    assert got == [(p.a, p.b, p.score) for p in pairs]


def test_legacy_discover_and_group_endpoints_answer_as_the_query_api(client, collection, http):
    """`points/discover`, `points/discover/batch`, `points/search/groups` and
    `points/recommend/groups` give what the equivalent query-API request gives."""
    name = collection(size=2, distance=models.Distance.DOT)
    client.upsert(
        name,
        points=[models.PointStruct(id=i, vector=[float(i), 1.0], payload={"g": i % 2}) for i in range(1, 7)],
        wait=True,
    )
    base = f"/collections/{name}/points"
    disc = {"target": [1.0, 0.0], "context": [{"positive": 6, "negative": 1}], "limit": 3}
    legacy = http.post(f"{base}/discover", json=disc).json()["result"]
    query = http.post(
        f"{base}/query", json={"query": {"discover": {"target": [1.0, 0.0], "context": disc["context"]}}, "limit": 3}
    ).json()["result"]["points"]
    assert [p["id"] for p in legacy] == [p["id"] for p in query] and legacy
    batch = http.post(f"{base}/discover/batch", json={"searches": [disc, {"context": disc["context"], "limit": 2}]})
    assert batch.status_code == 200 and [len(r) for r in batch.json()["result"]] == [3, 2]
    groups = http.post(
        f"{base}/search/groups", json={"vector": [1.0, 0.0], "group_by": "g", "group_size": 2, "limit": 2}
    ).json()["result"]["groups"]
    assert [(g["id"], [h["id"] for h in g["hits"]]) for g in groups] == [(0, [6, 4]), (1, [5, 3])]
    rec = http.post(
        f"{base}/recommend/groups", json={"positive": [6], "group_by": "g", "group_size": 1, "limit": 2}
    ).json()["result"]["groups"]
    assert [(g["id"], [h["id"] for h in g["hits"]]) for g in rec] == [(1, [5]), (0, [4])]
