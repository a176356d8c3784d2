"""Collection lifecycle through qdrant-client: create / get / list / exists / delete."""

import time

import numpy as np
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import CLUSTER_PEERS, unique_name

ALL_DISTANCES = [models.Distance.COSINE, models.Distance.DOT, models.Distance.EUCLID, models.Distance.MANHATTAN]


@pytest.mark.parametrize("distance", ALL_DISTANCES, ids=lambda d: d.value)
def test_create_and_get_each_distance(client, collection, distance):
    name = collection(size=7, distance=distance)
    info = client.get_collection(name)
    assert info.status == models.CollectionStatus.GREEN
    assert info.points_count == 0
    assert isinstance(info.segments_count, int)
    vp = info.config.params.vectors
    assert isinstance(vp, models.VectorParams)
    assert vp.size == 7
    assert vp.distance == distance


def test_create_with_full_config_is_echoed(client, collection):
    name = collection(
        size=16,
        distance=models.Distance.DOT,
        shard_number=3,
        replication_factor=2,
        write_consistency_factor=2,
        sharding_method=models.ShardingMethod.AUTO,
        hnsw_config=models.HnswConfigDiff(m=8, ef_construct=50, full_scan_threshold=1234),
        optimizers_config=models.OptimizersConfigDiff(default_segment_number=3, flush_interval_sec=7),
    )
    cfg = client.get_collection(name).config
    assert cfg.params.vectors.size == 16
    assert cfg.params.vectors.distance == models.Distance.DOT
    assert cfg.params.shard_number == 3
    assert cfg.params.replication_factor == 2
    assert cfg.params.write_consistency_factor == 2
    assert cfg.params.sharding_method == models.ShardingMethod.AUTO
    assert cfg.hnsw_config.m == 8
    assert cfg.hnsw_config.ef_construct == 50
    assert cfg.hnsw_config.full_scan_threshold == 1234
    assert cfg.optimizer_config.default_segment_number == 3
    assert cfg.optimizer_config.flush_interval_sec == 7


def test_defaults_are_sane(client, collection):
    name = collection(size=4, distance=models.Distance.EUCLID)
    cfg = client.get_collection(name).config
    # One shard per peer, as in Qdrant (one, on a node that runs alone).
    assert cfg.params.shard_number in (None, max(CLUSTER_PEERS, 1))
    assert cfg.params.replication_factor in (None, 1)
    assert cfg.params.write_consistency_factor in (None, 1)
    assert cfg.hnsw_config.m > 0 and cfg.hnsw_config.ef_construct > 0
    assert cfg.optimizer_config.flush_interval_sec >= 0


def test_multi_shard_collection_holds_all_points(client, collection):
    name = collection(size=4, distance=models.Distance.EUCLID, shard_number=4)
    ids = list(range(1, 101))
    client.upsert(
        name,
        points=models.Batch(ids=ids, vectors=[[float(i), 0.0, 0.0, 0.0] for i in ids], payloads=[{"i": i} for i in ids]),
        wait=True,
    )
    assert client.get_collection(name).points_count == 100
    assert client.count(name, exact=True).count == 100
    recs, nxt = client.scroll(name, limit=1000)
    assert nxt is None
    assert [r.id for r in recs] == ids  # global id order across shards
    res = client.query_points(name, query=[50.2, 0, 0, 0], limit=3).points
    assert [p.id for p in res] == [50, 51, 49]


def test_list_collections(client, collection):
    a = collection(size=4)
    b = collection(size=4)
    names = {c.name for c in client.get_collections().collections}
    assert {a, b} <= names
    client.delete_collection(a)
    names = {c.name for c in client.get_collections().collections}
    assert a not in names and b in names


def test_exists(client, collection):
    name = collection(size=4)
    assert client.collection_exists(name) is True
    assert client.collection_exists(unique_name("missing")) is False


def test_delete_collection(client, collection, http):
    name = collection(size=4)
    client.upsert(name, points=[models.PointStruct(id=1, vector=[1, 2, 3, 4])], wait=True)
    assert client.delete_collection(name) is True
    assert client.collection_exists(name) is False
    with pytest.raises(UnexpectedResponse) as ei:
        client.get_collection(name)
    assert ei.value.status_code == 404
    r = http.get(f"/collections/{name}")
    assert r.status_code == 404
    assert r.json()["status"]["error"]


def test_recreate_after_delete_is_empty(client, collection):
    name = collection(size=4)
    client.upsert(name, points=[models.PointStruct(id=1, vector=[1, 2, 3, 4])], wait=True)
    client.delete_collection(name)
    collection(size=6, name=name, distance=models.Distance.EUCLID)
    info = client.get_collection(name)
    assert info.points_count == 0
    assert info.config.params.vectors.size == 6
    assert client.retrieve(name, ids=[1]) == []


def test_raw_collection_envelope(http, collection):
    name = collection(size=4)
    r = http.get(f"/collections/{name}")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert isinstance(body["time"], (int, float)) and body["time"] >= 0
    res = body["result"]
    for key in ("status", "optimizer_status", "segments_count", "config", "payload_schema"):
        assert key in res, f"missing {key} in collection info"
    for key in ("params", "hnsw_config", "optimizer_config"):
        assert key in res["config"], f"missing config.{key}"

    r = http.get("/collections")
    assert r.status_code == 200
    assert name in [c["name"] for c in r.json()["result"]["collections"]]

    r = http.get(f"/collections/{name}/exists")
    assert r.status_code == 200
    assert r.json()["result"] == {"exists": True}


def test_create_via_raw_http_and_delete_returns_true(http, client):
    name = unique_name()
    try:
        r = http.put(f"/collections/{name}", json={"vectors": {"size": 3, "distance": "Manhattan"}})
        assert r.status_code == 200, r.text
        assert r.json()["result"] is True
        assert client.get_collection(name).config.params.vectors.distance == models.Distance.MANHATTAN
    finally:
        r = http.delete(f"/collections/{name}")
    assert r.status_code == 200, r.text
    assert r.json()["result"] is True


def test_payload_indexes_are_declared_reported_and_dropped(client, collection):
    """Shoal records payload indexes (filters do not need them) and reports them like Qdrant."""
    name = collection(size=2, distance=models.Distance.DOT)
    client.upsert(
        name,
        points=[
            models.PointStruct(id=1, vector=[1.0, 0.0], payload={"city": "Berlin", "n": 1}),
            models.PointStruct(id=2, vector=[0.0, 1.0], payload={"city": "London"}),
            models.PointStruct(id=3, vector=[1.0, 1.0], payload={"other": True}),
        ],
        wait=True,
    )
    result = client.create_payload_index(name, field_name="city", field_schema=models.PayloadSchemaType.KEYWORD, wait=True)
    assert result.status == models.UpdateStatus.COMPLETED
    client.create_payload_index(
        name, field_name="n", field_schema=models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True)
    )
    schema = client.get_collection(name).payload_schema
    assert schema["city"].data_type == models.PayloadSchemaType.KEYWORD and schema["city"].points == 2
    assert schema["n"].data_type == models.PayloadSchemaType.INTEGER and schema["n"].points == 1
    # Filters give the same answers with the index as without.
    hits = client.count(name, count_filter=models.Filter(must=[models.FieldCondition(key="city", match=models.MatchValue(value="Berlin"))]))
    assert hits.count == 1
    client.delete_payload_index(name, field_name="city", wait=True)
    assert set(client.get_collection(name).payload_schema) == {"n"}


def test_bad_payload_index_requests_change_nothing(http, collection):
    name = collection(size=2, distance=models.Distance.DOT)
    for body in ({"field_name": "a", "field_schema": "nope"}, {"field_name": "a..b", "field_schema": "keyword"}, {"field_schema": "keyword"}):
        r = http.put(f"/collections/{name}/index", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["status"]["error"]
    r = http.put("/collections/does-not-exist/index", json={"field_name": "a", "field_schema": "keyword"})
    assert r.status_code == 404
    info = http.get(f"/collections/{name}").json()["result"]
    assert info["payload_schema"] == {}


def test_aliases_resolve_everywhere_and_go_with_their_collection(client, collection):
    from qdrant_client import models as m

    name = collection(size=2)
    client.upsert(name, points=[m.PointStruct(id=1, vector=[1.0, 0.0])], wait=True)
    alias = f"{name}_alias"
    assert client.update_collection_aliases(
        change_aliases_operations=[m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=name, alias_name=alias))]
    )
    assert [(a.alias_name, a.collection_name) for a in client.get_collection_aliases(name).aliases] == [(alias, name)]
    assert [p.id for p in client.query_points(alias, query=[1.0, 0.0]).points] == [1]
    assert client.count(alias).count == 1
    with pytest.raises(Exception):
        client.update_collection_aliases(
            change_aliases_operations=[m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name="no-such-alias"))]
        )
    client.delete_collection(name)
    assert alias not in [a.alias_name for a in client.get_aliases().aliases]


def test_named_vectors_are_added_and_removed_on_a_live_collection(client, collection, http):
    from qdrant_client import models as m

    name = collection(size=2)
    client.upsert(name, points=[m.PointStruct(id=1, vector=[1.0, 0.0], payload={"a": 1})], wait=True)
    r = http.put(f"/collections/{name}/vectors/extra", json={"dense": {"size": 3, "distance": "Dot"}})
    assert r.status_code == 200, r.text
    r = http.put(f"/collections/{name}/vectors/sp", json={"sparse": {"modifier": "idf"}})
    assert r.status_code == 200, r.text
    params = client.get_collection(name).config.params
    assert params.vectors["extra"].size == 3 and "sp" in params.sparse_vectors
    # Existing points lack the new vectors; new writes carry them.
    assert not client.retrieve(name, ids=[1], with_vectors=["extra"])[0].vector
    client.update_vectors(name, points=[m.PointVectors(id=1, vector={"extra": [0.0, 1.0, 0.0]})], wait=True)
    client.upsert(name, points=[m.PointStruct(id=2, vector={"": [0.0, 1.0], "extra": [1.0, 0.0, 0.0]})], wait=True)
    hits = client.query_points(name, query=[0.0, 1.0, 0.0], using="extra").points
    assert [p.id for p in hits] == [1, 2]
    # A duplicate is refused; removing drops every point's value.
    r = http.put(f"/collections/{name}/vectors/extra", json={"dense": {"size": 3, "distance": "Dot"}})
    assert r.status_code == 400
    assert http.delete(f"/collections/{name}/vectors/extra").status_code == 200
    vectors = client.retrieve(name, ids=[1, 2], with_vectors=True)
    assert all("extra" not in (v.vector or {}) for v in vectors)
    r = http.post(f"/collections/{name}/points/query", json={"query": [0.0, 1.0, 0.0], "using": "extra"})
    assert r.status_code == 400 and "Not existing vector name" in r.text


def test_collection_info_warns_about_settings_not_applied(client, http):
    import uuid as _uuid

    # Binary quantization is stored and reported, not applied: the collection says so.
    name = f"warn_{_uuid.uuid4().hex[:10]}"
    r = http.put(
        f"/collections/{name}",
        json={"vectors": {"size": 4, "distance": "Dot"}, "quantization_config": {"binary": {}}},
    )
    assert r.status_code == 200, r.text
    try:
        info = http.get(f"/collections/{name}").json()["result"]
        assert any("quantization" in w["message"] for w in info["warnings"])
        assert info["config"]["quantization_config"] == {"binary": {}}
        # Scalar int8 is applied: no warning.
        r = http.patch(f"/collections/{name}", json={"quantization_config": {"scalar": {"type": "int8"}}})
        assert r.status_code == 200, r.text
        info = http.get(f"/collections/{name}").json()["result"]
        assert not info.get("warnings"), info["warnings"]
        assert info["config"]["quantization_config"] == {"scalar": {"type": "int8"}}
    finally:
        client.delete_collection(name)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"vectors": {"size": 4, "distance": "Cosine", "datatype": "uint8"}}, "datatype uint8 of the unnamed vector"),
        ({"vectors": {"size": 4, "distance": "Dot"}, "hnsw_config": {"payload_m": 8}}, "payload_m"),
        ({"vectors": {"size": 4, "distance": "Dot"}, "hnsw_config": {"inline_storage": True}}, "inline_storage"),
        ({"vectors": {"size": 4, "distance": "Dot"}, "optimizers_config": {"memmap_threshold": 20000}}, "memmap_threshold"),
        ({"vectors": {"size": 4, "distance": "Dot"}, "optimizers_config": {"prevent_unoptimized": True}}, "prevent_unoptimized"),
        ({"vectors": {}, "sparse_vectors": {"s": {"index": {"on_disk": True}}}}, "sparse index on_disk of `s`"),
        ({"vectors": {}, "sparse_vectors": {"s": {"index": {"datatype": "uint8"}}}}, "sparse index datatype of `s`"),
    ],
    ids=["uint8_cosine", "payload_m", "inline_storage", "memmap_threshold", "prevent_unoptimized", "sparse_on_disk",
         "sparse_datatype"],
)
def test_settings_stored_but_not_applied_are_reported_as_warnings(http, client, body, needle):
    """A setting Shoal keeps and reports but does not act on is named in the info's warnings;
    it is echoed in the config as Qdrant echoes it."""
    name = unique_name("warn")
    r = http.put(f"/collections/{name}", json=body)
    assert r.status_code == 200, r.text
    try:
        info = http.get(f"/collections/{name}").json()["result"]
        assert any(needle in w["message"] for w in info.get("warnings") or []), info.get("warnings")
        for section in ("hnsw_config", "optimizers_config"):
            for key, value in body.get(section, {}).items():
                echoed = info["config"]["optimizer_config" if section == "optimizers_config" else section]
                assert echoed[key] == value, (key, echoed)
    finally:
        client.delete_collection(name)


@pytest.mark.parametrize(
    "vectors",
    [
        {"size": 4, "distance": "Cosine"},
        {"size": 4, "distance": "Dot", "datatype": "uint8"},
        {"size": 4, "distance": "Cosine", "datatype": "float16"},
    ],
    ids=["plain", "uint8_dot", "float16_cosine"],
)
def test_collections_whose_settings_all_apply_have_no_warnings(http, client, vectors):
    name = unique_name("nowarn")
    assert http.put(f"/collections/{name}", json={"vectors": vectors}).status_code == 200
    try:
        assert not http.get(f"/collections/{name}").json()["result"].get("warnings")
    finally:
        client.delete_collection(name)


def test_update_collection_changes_a_live_collection_as_qdrant_does(client, collection, http):
    from qdrant_client import models as m

    name = collection(size=4, distance=m.Distance.DOT, metadata={"owner": "search", "tier": 1})
    client.upsert(name, points=[m.PointStruct(id=i, vector=[float(i), 1.0, 0.0, 0.0]) for i in range(1, 6)], wait=True)
    assert client.update_collection(
        name,
        vectors_config={"": m.VectorParamsDiff(hnsw_config=m.HnswConfigDiff(m=8), on_disk=True)},
        hnsw_config=m.HnswConfigDiff(ef_construct=64),
        optimizers_config=m.OptimizersConfigDiff(indexing_threshold=0),
        collection_params=m.CollectionParamsDiff(write_consistency_factor=1, read_fan_out_factor=1),
        quantization_config=m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8)),
        strict_mode_config=m.StrictModeConfig(enabled=False, max_query_limit=100),
        metadata={"tier": None, "region": "eu"},
    )
    config = http.get(f"/collections/{name}").json()["result"]["config"]
    assert config["params"]["vectors"]["hnsw_config"]["m"] == 8
    assert config["params"]["vectors"]["on_disk"] is True
    assert config["params"]["read_fan_out_factor"] == 1
    assert config["hnsw_config"]["ef_construct"] == 64
    assert config["optimizer_config"]["indexing_threshold"] == 0
    assert config["quantization_config"] == {"scalar": {"type": "int8"}}
    assert config["strict_mode_config"]["max_query_limit"] == 100
    assert config["metadata"] == {"owner": "search", "region": "eu"}
    # The points and their answers are unchanged.
    assert [p.id for p in client.query_points(name, query=[1.0, 0.0, 0.0, 0.0], limit=2).points] == [5, 4]
    # "Disabled" removes quantization; `{}` unsets a vector's own graph parameters.
    r = http.patch(
        f"/collections/{name}",
        json={"quantization_config": "Disabled", "vectors": {"": {"hnsw_config": {}}}},
    )
    assert r.status_code == 200 and r.json()["result"] is True, r.text
    config = http.get(f"/collections/{name}").json()["result"]["config"]
    assert "quantization_config" not in config or config["quantization_config"] is None
    assert "hnsw_config" not in config["params"]["vectors"]


def test_update_collection_refusals_change_nothing(http, collection):
    name = collection(size=2)
    before = http.get(f"/collections/{name}").json()["result"]["config"]
    for body, status, needle in (
        ({"vectors": {"nope": {"on_disk": True}}}, 400, "Not existing vector name"),
        ({"sparse_vectors": {"nope": {}}}, 400, "Not existing vector name"),
        ({"params": {"replication_factor": 0}}, 422, "replication_factor"),
        ({"hnsw_config": {"m": 100000}}, 422, "hnsw_config.m"),
        ({"params": {"shard_number": 4}}, 400, "shard_number"),
        ({"quantization_config": "Enabled"}, 422, "quantization_config"),
        ({"quantization_config": {"scalar": {"type": "int4"}}}, 422, "quantization_config.scalar.type"),
    ):
        r = http.patch(f"/collections/{name}", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert needle in r.json()["status"]["error"], (body, r.text)
    assert http.get(f"/collections/{name}").json()["result"]["config"] == before
    r = http.patch("/collections/does-not-exist", json={"metadata": {"a": 1}})
    assert r.status_code == 404


def test_update_collection_over_grpc(node, collection):
    from qdrant_client import QdrantClient, models as m

    name = collection(size=2)
    grpc = QdrantClient(host="127.0.0.1", port=node.http_port, grpc_port=node.grpc_port, prefer_grpc=True, check_compatibility=False)
    try:
        assert grpc.update_collection(
            name,
            hnsw_config=m.HnswConfigDiff(m=12),
            collection_params=m.CollectionParamsDiff(replication_factor=1, read_fan_out_factor=2),
            metadata={"k": "v"},
        )
        info = grpc.get_collection(name)
        assert info.config.hnsw_config.m == 12
        assert info.config.metadata == {"k": "v"}
        with pytest.raises(Exception) as refused:
            grpc.update_collection(name, vectors_config={"nope": m.VectorParamsDiff(on_disk=True)})
        assert "Not existing vector name" in str(refused.value)
    finally:
        grpc.close()


def _wait_for_info(client, name, done, seconds=60):
    """Polls collection info (at most `seconds`) until `done(info)`; returns the last info."""
    deadline = time.monotonic() + seconds
    while True:
        info = client.get_collection(name)
        if done(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def test_indexing_switched_off_for_an_upload_and_on_again_indexes_it(client, collection):
    """Qdrant's bulk-upload recipe: `indexing_threshold: 0` while uploading, then a threshold
    again by a collection update; the uploaded points are indexed without a restart."""
    from qdrant_client import models as m

    # One shard on every peer: each peer's info then counts every point as indexed or not.
    name = collection(size=4, shard_number=1, replication_factor=max(CLUSTER_PEERS, 1),
                      optimizers_config=m.OptimizersConfigDiff(indexing_threshold=0))
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 4)).tolist()
    client.upsert(name, points=[m.PointStruct(id=i, vector=vectors[i]) for i in range(300)], wait=True)
    assert client.get_collection(name).indexed_vectors_count == 0
    assert client.update_collection(name, optimizers_config=m.OptimizersConfigDiff(indexing_threshold=1))
    info = _wait_for_info(client, name, lambda i: i.indexed_vectors_count == 300 and i.status == m.CollectionStatus.GREEN)
    assert (info.indexed_vectors_count, info.status) == (300, m.CollectionStatus.GREEN)


def test_zero_optimization_threads_pause_optimizations_and_show_grey(client, collection, node):
    """`max_optimization_threads: 0` switches optimizations off (Qdrant: grey while work waits);
    "auto" switches them on again. Set over gRPC too, which carries it in its own message."""
    from qdrant_client import QdrantClient, models as m

    name = collection(size=4, shard_number=1, replication_factor=max(CLUSTER_PEERS, 1),
                      optimizers_config=m.OptimizersConfigDiff(indexing_threshold=1, max_optimization_threads=0))
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(300, 4)).tolist()
    client.upsert(name, points=[m.PointStruct(id=i, vector=vectors[i]) for i in range(300)], wait=True)
    info = _wait_for_info(client, name, lambda i: i.status == m.CollectionStatus.GREY, seconds=10)
    assert info.status == m.CollectionStatus.GREY, info
    assert info.indexed_vectors_count == 0
    assert info.config.optimizer_config.max_optimization_threads == 0
    grpc = QdrantClient(host="127.0.0.1", port=node.http_port, grpc_port=node.grpc_port, prefer_grpc=True, check_compatibility=False)
    try:
        assert grpc.get_collection(name).config.optimizer_config.max_optimization_threads == 0
        assert grpc.update_collection(
            name, optimizers_config=m.OptimizersConfigDiff(max_optimization_threads=m.MaxOptimizationThreadsSetting.AUTO)
        )
    finally:
        grpc.close()
    info = _wait_for_info(client, name, lambda i: i.status == m.CollectionStatus.GREEN)
    assert info.status == m.CollectionStatus.GREEN, info
    assert info.indexed_vectors_count >= 256
    assert info.config.optimizer_config.max_optimization_threads is None
