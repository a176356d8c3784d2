"""Introspection and operations endpoints: shard keys, optimizations, telemetry (this peer's and
the cluster's), issues, and POST /cluster/recover.

Every answer's `result` is validated against the component schema Qdrant 1.18.3 publishes
(OpenAPI 3.0 `nullable` rewritten into JSON Schema), and each endpoint is checked for what it
reports, not only for its shape.
"""

from __future__ import annotations

import json
import time

import jsonschema_rs
import numpy as np
import pytest
from qdrant_client import models

from conftest import REPO, RO_KEY, RW_KEY, Http, unique_name

SPEC_PATH = REPO.parent / "shared" / "reference" / "qdrant-openapi-v1.18.3.json"

POLL_DEADLINE_S = 120


# --------------------------------------------------------------------------------------
# Schema validation against the reference
# --------------------------------------------------------------------------------------


def _to_json_schema(node):
    """OpenAPI 3.0 → JSON Schema: `nullable: true` becomes an explicit `null` alternative."""
    if isinstance(node, list):
        return [_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _to_json_schema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if set(node) <= {"description", "default", "example"}:
            return {"type": "null"}
        t = node.get("type")
        if isinstance(t, str):
            node["type"] = [t, "null"]
            if "enum" in node:
                node["enum"] = node["enum"] + [None]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture(scope="module")
def schema():
    spec = json.loads(SPEC_PATH.read_text())
    components = _to_json_schema(spec["components"])
    cache = {}

    def validate(name: str, instance) -> None:
        if name not in cache:
            cache[name] = jsonschema_rs.validator_for(
                {"$ref": f"#/components/schemas/{name}", "components": components}
            )
        errors = [f"{e.instance_path}: {e.message}"[:300] for e in cache[name].iter_errors(instance)]
        assert not errors, f"result does not match {name}: {errors[:5]}\n{json.dumps(instance)[:2000]}"

    # The validator must be able to fail, or the checks below prove nothing.
    validate("OptimizationsResponse", {"running": [], "summary": {"queued_optimizations": 0, "queued_segments": 0, "queued_points": 0, "idle_segments": 0}})
    with pytest.raises(AssertionError):
        validate("OptimizationsResponse", {"running": [], "summary": {"queued_optimizations": "many"}})
    return validate


def ok(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok", body
    assert isinstance(body["time"], (int, float))
    return body["result"]


def upload(http: Http, name: str, n: int, dim: int, payload=None, batch: int = 2000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        vectors = rng.random((len(ids), dim), dtype=np.float32)
        points = [
            {"id": i, "vector": v.tolist(), "payload": payload(i) if payload else {}}
            for i, v in zip(ids, vectors)
        ]
        r = http.put(f"/collections/{name}/points?wait=true", json={"points": points}, timeout=120)
        assert r.status_code == 200, r.text


def cluster_status(http: Http) -> dict:
    return ok(http.get("/cluster"))


# --------------------------------------------------------------------------------------
# GET /collections/{c}/shards
# --------------------------------------------------------------------------------------


def test_shard_keys_are_listed_after_creating_them(http, client, collection, schema):
    name = collection(size=4, sharding_method=models.ShardingMethod.CUSTOM, shard_number=1)
    empty = ok(http.get(f"/collections/{name}/shards"))
    schema("ShardKeysResponse", empty)
    assert empty == {"shard_keys": []}

    assert client.create_shard_key(name, "alpha") is True
    assert client.create_shard_key(name, 7) is True
    listed = ok(http.get(f"/collections/{name}/shards"))
    schema("ShardKeysResponse", listed)
    assert listed == {"shard_keys": [{"key": "alpha"}, {"key": 7}]}

    alias = unique_name("alias")
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=name, alias_name=alias))
        ]
    )
    try:
        assert ok(http.get(f"/collections/{alias}/shards")) == listed
    finally:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )

    assert client.delete_shard_key(name, "alpha") is True
    assert ok(http.get(f"/collections/{name}/shards")) == {"shard_keys": [{"key": 7}]}


def test_shard_keys_of_auto_sharding_and_unknown_collections(http, collection, schema):
    name = collection(size=4)
    auto = ok(http.get(f"/collections/{name}/shards"))
    schema("ShardKeysResponse", auto)
    assert auto.get("shard_keys") is None, "auto sharding has no shard keys (Qdrant omits the field)"
    r = http.get(f"/collections/{unique_name('missing')}/shards")
    assert r.status_code == 404, r.text


# --------------------------------------------------------------------------------------
# GET /collections/{c}/optimizations
# --------------------------------------------------------------------------------------


def test_optimizations_show_the_indexing_of_a_large_upload(http, collection, schema):
    dim, n = 64, 20_000
    # 64 floats are 256 bytes: a 100 KB threshold seals a segment every 400 points.
    name = collection(size=dim, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=100))
    upload(http, name, n, dim)

    seen_index_work = False
    deadline = time.monotonic() + POLL_DEADLINE_S
    while True:
        result = ok(http.get(f"/collections/{name}/optimizations?with=queued,completed,idle_segments"))
        schema("OptimizationsResponse", result)
        summary, queued = result["summary"], result["queued"]
        assert summary["queued_optimizations"] == len(queued)
        assert summary["queued_segments"] == sum(len(q["segments"]) for q in queued)
        assert summary["queued_points"] == sum(s["points_count"] for q in queued for s in q["segments"])
        assert summary["idle_segments"] == len(result["idle_segments"])
        for running in result["running"]:
            assert running["status"] == "optimizing"
            assert running["progress"]["started_at"]
            assert running["segments"] and all(s["points_count"] > 0 for s in running["segments"])
        if any(o["optimizer"] == "indexing" for o in result["running"] + queued):
            seen_index_work = True
        if not result["running"] and not queued:
            break
        assert time.monotonic() < deadline, f"the optimizer did not finish within {POLL_DEADLINE_S}s: {summary}"
        time.sleep(0.2)
    assert seen_index_work, "sealed segments of the upload were never reported as queued or running for indexing"

    done = result["completed"]
    assert 0 < len(done) <= 16, "at most completed_limit (16 by default) finished ones"
    for o in done:
        assert o["status"] == "done" or set(o["status"]) == {"cancelled"}, o
        p = o["progress"]
        assert p["started_at"] <= p["finished_at"] and p["duration_sec"] >= 0
    assert any(o["status"] == "done" for o in done), done
    starts = [o["progress"]["started_at"] for o in done]
    assert starts == sorted(starts, reverse=True), "newest first"
    # Once idle, every point is in an idle segment.
    assert sum(s["points_count"] for s in result["idle_segments"]) == n

    limited = ok(http.get(f"/collections/{name}/optimizations?with=completed&completed_limit=2"))
    schema("OptimizationsResponse", limited)
    assert len(limited["completed"]) == 2
    assert "queued" not in limited and "idle_segments" not in limited

    bare = ok(http.get(f"/collections/{name}/optimizations"))
    schema("OptimizationsResponse", bare)
    assert set(bare) == {"summary", "running"}


def test_optimizations_refuse_unknown_fields_and_collections(http, collection):
    name = collection(size=4)
    r = http.get(f"/collections/{name}/optimizations?with=queued,everything")
    assert r.status_code == 400, r.text
    assert "everything" in r.json()["status"]["error"]
    assert http.get(f"/collections/{unique_name('missing')}/optimizations").status_code == 404


# --------------------------------------------------------------------------------------
# Issues
# --------------------------------------------------------------------------------------


def issues(http: Http) -> dict:
    result = ok(http.get("/issues"))
    assert isinstance(result, dict) and isinstance(result["issues"], list)
    for issue in result["issues"]:
        assert set(issue) == {"id", "description", "solution", "timestamp", "related_collection"}, issue
    return {i["id"]: i for i in result["issues"]}


def test_issues_report_an_unindexed_filter_key_until_cleared(http, collection):
    assert ok(http.delete("/issues")) is True
    assert issues(http) == {}

    # 12,000 points: above the 10,000 from which Shoal reports unindexed filter keys (with a
    # margin for the per-peer estimate when the suite runs against a cluster).
    name = collection(size=4)
    upload(http, name, 12_000, 4, payload=lambda i: {"city": ["London", "Moscow", "Paris"][i % 3], "n": i})
    small = collection(size=4)
    upload(http, small, 100, 4, payload=lambda i: {"city": "London"})

    city = {"must": [{"key": "city", "match": {"any": ["London", "Moscow"]}}]}
    r = http.post(f"/collections/{small}/points/search", json={"vector": [0.1] * 4, "limit": 3, "filter": city})
    assert r.status_code == 200, r.text
    assert issues(http) == {}, "a fast read of a small collection reports nothing"

    r = http.post(f"/collections/{name}/points/search", json={"vector": [0.1] * 4, "limit": 3, "filter": city})
    assert r.status_code == 200, r.text
    found = issues(http)
    code = f"UNINDEXED_FIELD/{name}/city"
    assert list(found) == [code]
    issue = found[code]
    assert issue["related_collection"] == name
    assert "city" in issue["description"] and name in issue["description"]
    action = issue["solution"]["immediate"]["action"]
    assert action["method"] == "PUT"
    assert action["uri"] == f"/collections/{name}/index"
    assert action["body"] == {"field_name": "city", "field_schema": "keyword"}
    first_seen = issue["timestamp"]

    # Seen again: the first report stays.
    r = http.post(f"/collections/{name}/points/count", json={"filter": city, "exact": True})
    assert r.status_code == 200, r.text
    assert issues(http)[code]["timestamp"] == first_seen

    # A range on another key, through scroll: either index kind would serve it.
    r = http.post(
        f"/collections/{name}/points/scroll",
        json={"limit": 2, "filter": {"must": [{"key": "n", "range": {"gte": 10}}]}},
    )
    assert r.status_code == 200, r.text
    n_issue = issues(http)[f"UNINDEXED_FIELD/{name}/n"]
    choices = n_issue["solution"]["immediate_choice"]
    assert sorted(c["action"]["body"]["field_schema"] for c in choices) == ["float", "integer"]

    # Following the solution resolves the issue.
    r = http.request(action["method"], action["uri"], json=action["body"], headers=action["headers"], params={"wait": "true"})
    assert r.status_code == 200, r.text
    assert code not in issues(http)
    assert f"UNINDEXED_FIELD/{name}/n" in issues(http)

    assert ok(http.delete("/issues")) is True
    assert issues(http) == {}


# --------------------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------------------


def collections_of(telemetry: dict) -> dict:
    return {c["id"]: c for c in telemetry["collections"].get("collections") or [] if "id" in c}


def test_telemetry_counts_collections_and_validates_at_every_level(http, collection, schema):
    before = ok(http.get("/telemetry"))
    schema("TelemetryData", before)
    name = collection(size=4)
    upload(http, name, 300, 4)
    clustered = cluster_status(http)["status"] == "enabled"

    levels = {}
    for level in range(5):
        t = ok(http.get(f"/telemetry?details_level={level}"))
        schema("TelemetryData", t)
        levels[level] = t
    t0 = levels[0]
    assert t0["collections"]["number_of_collections"] == before["collections"]["number_of_collections"] + 1
    assert "collections" not in t0["collections"], "level 0 only counts collections"
    assert t0["id"] == before["id"], "the id is the process's"
    assert t0["app"]["name"] == "shoal-node" and t0["app"]["version"]
    assert t0["app"]["startup"] == before["app"]["startup"]
    assert t0["cluster"]["enabled"] == clustered

    # Level 1: aggregates, system and Raft.
    aggregated = levels[1]["collections"]["collections"]
    assert len(aggregated) == t0["collections"]["number_of_collections"]
    assert all("id" not in c for c in aggregated)
    system = levels[1]["app"]["system"]
    assert system["cores"] >= 1 and system["ram_size"] > 0 and system["disk_size"] > 0
    if clustered:
        status = levels[1]["cluster"]["status"]
        assert status["peer_id"] == cluster_status(http)["peer_id"]
        assert status["consensus_thread_status"]["consensus_thread_status"] == "working"

    # Level 2: configuration.
    full = collections_of(levels[2])[name]
    assert full["config"]["params"]["vectors"]["size"] == 4
    assert "shards" not in full

    # Level 3: shards, with this peer's replicas' points.
    full = collections_of(levels[3])[name]
    shards = full["shards"]
    assert shards and all(s["replicate_states"] for s in shards)
    local_points = sum((s.get("local") or {}).get("num_points", 0) for s in shards)
    if not clustered:
        assert local_points == 300
        assert all(s["local"]["variant_name"] == "local" for s in shards)
    assert full["transfers"] == [] and full["resharding"] == []

    # Level 4: the optimizer log.
    for s in collections_of(levels[4])[name]["shards"]:
        if s.get("local"):
            assert isinstance(s["local"]["optimizations"]["log"], list)

    # Requests are counted.
    stats = levels[4]["requests"]["rest"]["responses"]["GET /telemetry"]["200"]
    assert stats["count"] >= 5, "the earlier GET /telemetry of this test"
    assert levels[4]["requests"]["grpc"] == {"responses": {}}


def test_telemetry_anonymizes_names(http, collection, schema):
    name = collection(size=4)
    raw = ok(http.get("/telemetry?details_level=4"))
    anonymized = ok(http.get("/telemetry?details_level=4&anonymize=true"))
    schema("TelemetryData", anonymized)
    assert anonymized["id"] == raw["id"]
    assert name in json.dumps(raw)
    assert name not in json.dumps(anonymized)
    assert len(collections_of(anonymized)) == len(collections_of(raw))
    for peer in (anonymized.get("cluster") or {}).get("peers", {}).values():
        assert not peer["uri"].startswith("http")


def test_telemetry_parameters_are_checked(http):
    assert http.get("/telemetry?timeout=0").status_code == 422
    assert http.get("/telemetry?details_level=many").status_code == 400
    assert http.get("/cluster/telemetry?timeout=0").status_code == 422
    ok(http.get("/telemetry?timeout=1&per_collection=true"))


def test_cluster_telemetry_aggregates_the_peers(http, collection, schema):
    name = collection(size=4)
    upload(http, name, 200, 4)
    cluster = cluster_status(http)
    t = ok(http.get("/cluster/telemetry?details_level=3&timeout=20"))
    schema("DistributedTelemetryData", t)
    c = t["collections"][name]
    assert c["id"] == name
    total = 0
    for shard in c["shards"]:
        assert shard["replicas"]
        counts = {r.get("num_points") for r in shard["replicas"] if r["state"] == "Active"}
        assert len(counts) == 1, f"the replicas of shard {shard['id']} disagree: {shard['replicas']}"
        total += counts.pop()
    assert total == 200, "every shard's points, from the peers that hold them"
    if cluster["status"] == "enabled":
        peers = t["cluster"]["peers"]
        assert t["cluster"]["enabled"] is True
        assert set(peers) == set(cluster["peers"])
        assert all(p["responsive"] and p["details"]["version"] for p in peers.values())
        leaders = [p for p in peers.values() if p["details"]["role"] == "Leader"]
        assert len(leaders) == 1
    else:
        assert t["cluster"] == {"enabled": False, "number_of_peers": None, "peers": {}}


# --------------------------------------------------------------------------------------
# POST /cluster/recover
# --------------------------------------------------------------------------------------


def test_cluster_recover(http):
    cluster = cluster_status(http)
    r = http.post("/cluster/recover")
    if cluster["status"] != "enabled":
        assert r.status_code == 400, r.text
        assert "without a cluster" in r.json()["status"]["error"]
        return
    if cluster["raft_info"]["leader"] == cluster["peer_id"]:
        assert r.status_code == 400, r.text
        assert "leader" in r.json()["status"]["error"]
        return
    assert ok(r) is True
    after = cluster_status(http)
    assert after["raft_info"]["commit"] >= cluster["raft_info"]["commit"]


# --------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------


def test_read_only_key_reads_introspection_but_cannot_act(auth_node):
    rw = Http(auth_node.base_url, headers={"api-key": RW_KEY})
    ro = Http(auth_node.base_url, headers={"api-key": RO_KEY})
    anon = Http(auth_node.base_url)
    name = unique_name()
    try:
        assert rw.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}}).status_code == 200
        for path in [
            "/telemetry",
            "/cluster/telemetry",
            "/issues",
            f"/collections/{name}/shards",
            f"/collections/{name}/optimizations",
        ]:
            assert ro.get(path).status_code == 200, path
            assert anon.get(path).status_code == 401, path
        assert ro.delete("/issues").status_code == 403
        assert ro.post("/cluster/recover").status_code == 403
        assert rw.delete("/issues").status_code == 200
    finally:
        rw.delete(f"/collections/{name}")
        for h in (rw, ro, anon):
            h.close()
