"""Collection, shard and full-storage snapshots through qdrant-client and raw HTTP.

In the 3-peer run every test collection is replicated to every peer, so the peer the client
talks to holds every shard and its snapshots hold the whole collection.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import time

import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import CLUSTER_PEERS, _start_node, make_client, scroll_all, state_of, unique_name

RF = max(CLUSTER_PEERS, 1)


def make_loaded(client, collection, n: int = 600, shards: int = 2, size: int = 8) -> str:
    """A collection with `n` points, indexed in several sealed segments plus a tail."""
    name = collection(
        size=size,
        shard_number=shards,
        replication_factor=RF,
        optimizers_config=models.OptimizersConfigDiff(indexing_threshold=2),
        hnsw_config=models.HnswConfigDiff(full_scan_threshold=10),
    )
    client.create_payload_index(name, "tag", models.PayloadSchemaType.KEYWORD)
    rng = random.Random(7)
    points = [
        models.PointStruct(
            id=i,
            vector=[rng.uniform(-1, 1) for _ in range(size)],
            payload={"tag": f"t{i % 5}", "n": i},
        )
        for i in range(n)
    ]
    for start in range(0, n, 200):
        client.upsert(name, points[start:start + 200], wait=True)
    # 2 KB of vectors (64 points of 8 floats) fill a segment, which is then indexed.
    deadline = time.monotonic() + (30 if n * size * 4 > 4096 else 0)
    while time.monotonic() < deadline:
        if (client.get_collection(name).indexed_vectors_count or 0) > 0:
            break
        time.sleep(0.2)
    return name


def mutate(client, name: str) -> None:
    client.upsert(name, [models.PointStruct(id=10_000, vector=[0.5] * 8, payload={"tag": "new"})], wait=True)
    client.delete(name, models.PointIdsList(points=[1, 2, 3]), wait=True)
    client.set_payload(name, {"tag": "changed"}, points=[4, 5], wait=True)


def snapshot_location(node, collection: str, snapshot: str) -> str:
    return f"file://{node.data_dir / 'snapshots' / collection / snapshot}"


def wait_replicas_active(http, name: str) -> None:
    """Until no replica of the collection (seen from the client's peer) is Dead or Partial."""
    deadline = time.monotonic() + 60
    info = None
    while time.monotonic() < deadline:
        info = http.get(f"/collections/{name}/cluster").json()["result"]
        states = [s["state"] for s in info["local_shards"] + info["remote_shards"]]
        if all(s == "Active" for s in states) and not info.get("shard_transfers"):
            return
        time.sleep(0.2)
    raise AssertionError(f"replicas of {name} did not settle: {info}")


def test_collection_snapshot_create_list_download_delete(client, http, collection):
    name = make_loaded(client, collection)
    desc = client.create_snapshot(name)
    assert desc.name.startswith(f"{name}-") and desc.name.endswith(".snapshot")
    assert desc.size > 0
    assert len(desc.checksum) == 64
    assert desc.creation_time
    assert [s.name for s in client.list_snapshots(name)] == [desc.name]

    r = http.get(f"/collections/{name}/snapshots/{desc.name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert len(r.content) == desc.size
    assert hashlib.sha256(r.content).hexdigest() == desc.checksum

    assert client.delete_snapshot(name, desc.name) is True
    assert client.list_snapshots(name) == []
    assert http.get(f"/collections/{name}/snapshots/{desc.name}").status_code == 404
    assert http.delete(f"/collections/{name}/snapshots/{desc.name}").status_code == 404
    assert http.get(f"/collections/{name}/snapshots/..%2Fx").status_code == 404


def test_recover_restores_the_state_at_creation(client, http, node, collection):
    name = make_loaded(client, collection)
    before = state_of(client, name)
    desc = client.create_snapshot(name)
    mutate(client, name)
    assert state_of(client, name) != before
    assert client.recover_snapshot(name, snapshot_location(node, name, desc.name)) is True
    assert state_of(client, name) == before
    wait_replicas_active(http, name)
    assert state_of(client, name) == before
    # Searches use the restored graphs and payload index.
    hits = client.query_points(
        name,
        query=[0.1] * 8,
        query_filter=models.Filter(must=[models.FieldCondition(key="tag", match=models.MatchValue(value="t1"))]),
        limit=5,
    ).points
    assert len(hits) == 5 and all(h.payload["tag"] == "t1" for h in hits)


def test_recover_into_a_missing_collection_creates_it(client, http, node, collection):
    name = make_loaded(client, collection)
    desc = client.create_snapshot(name)
    target = unique_name("restored")
    try:
        url = f"{node.base_url}/collections/{name}/snapshots/{desc.name}"
        assert client.recover_snapshot(target, url, checksum=desc.checksum) is True
        assert scroll_all(client, target) == scroll_all(client, name)
        info = client.get_collection(target)
        assert info.config.params.vectors.size == 8
        assert info.config.params.shard_number == 2
        assert "tag" in info.payload_schema
        wait_replicas_active(http, target)
        assert client.count(target, exact=True).count == 600
    finally:
        client.delete_collection(target)


@pytest.fixture
def fresh_node():
    yield from _start_node("fresh")


def test_restore_into_a_fresh_node_through_the_client(client, http, collection, fresh_node):
    """The other end of a migration: a snapshot taken here, recovered by URL on a node that
    has never seen the collection, answers the same reads and searches."""
    name = make_loaded(client, collection)
    # Settled first (every full segment indexed), so that the snapshot holds only indexed
    # segments and a remainder below the threshold: the fresh node then has nothing to index.
    deadline = time.monotonic() + 60
    while client.get_collection(name).status != models.CollectionStatus.GREEN:
        assert time.monotonic() < deadline, "the collection did not settle"
        time.sleep(0.1)
    desc = client.create_snapshot(name)
    fresh = make_client(fresh_node.base_url)
    try:
        url = f"{http.base}/collections/{name}/snapshots/{desc.name}"
        assert fresh.recover_snapshot(name, url, checksum=desc.checksum) is True
        assert scroll_all(fresh, name) == scroll_all(client, name)
        assert fresh.count(name, exact=True).count == 600
        info = fresh.get_collection(name)
        assert info.status == models.CollectionStatus.GREEN
        assert (info.indexed_vectors_count or 0) > 0
        query = [0.3] * 8
        here = client.query_points(name, query=query, limit=10, search_params=models.SearchParams(exact=True)).points
        there = fresh.query_points(name, query=query, limit=10, search_params=models.SearchParams(exact=True)).points
        assert [p.id for p in there] == [p.id for p in here]
    finally:
        fresh.close()


def test_upload_recovers_and_keeps_priority(client, http, collection):
    name = make_loaded(client, collection)
    before = state_of(client, name)
    desc = client.create_snapshot(name)
    blob = http.get(f"/collections/{name}/snapshots/{desc.name}").content
    mutate(client, name)
    r = http.post(
        f"/collections/{name}/snapshots/upload",
        params={"priority": "snapshot", "checksum": desc.checksum},
        files={"snapshot": ("upload.snapshot", blob)},
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"] is True
    assert state_of(client, name) == before
    wait_replicas_active(http, name)


def tar_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in entries:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_bad_uploads_are_refused_and_change_nothing(client, http, collection):
    name = make_loaded(client, collection, n=300)
    other = collection(size=4)
    client.upsert(other, [models.PointStruct(id=1, vector=[0.1, 0.2, 0.3, 0.4])], wait=True)
    foreign = client.create_snapshot(other)
    foreign_blob = http.get(f"/collections/{other}/snapshots/{foreign.name}").content
    resharded = collection(size=8, shard_number=3, replication_factor=RF)
    resharded_snap = client.create_snapshot(resharded)
    resharded_blob = http.get(f"/collections/{resharded}/snapshots/{resharded_snap.name}").content
    desc = client.create_snapshot(name)
    blob = http.get(f"/collections/{name}/snapshots/{desc.name}").content
    before = state_of(client, name)

    def upload(data: bytes, **params):
        return http.post(
            f"/collections/{name}/snapshots/upload",
            params=params,
            files={"snapshot": ("x.snapshot", data)},
        )

    cases = {
        "truncated": upload(blob[: len(blob) // 2]),
        "wrong checksum": upload(blob, checksum="0" * 64),
        "another collection's config": upload(foreign_blob),
        "another shard count": upload(resharded_blob),
        "path traversal": upload(tar_bytes([("../../escape", b"x")])),
        "absolute path": upload(tar_bytes([("/tmp/escape", b"x")])),
        "not a tar": upload(b"definitely not a tar archive" * 100),
        "empty": upload(b""),
    }
    for what, r in cases.items():
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert "error" in r.json()["status"], what
    bad_format = upload(blob, checksum="xyz")
    assert bad_format.status_code == 422
    no_field = http.post(f"/collections/{name}/snapshots/upload", files={"other": ("x", b"x")})
    assert no_field.status_code == 400
    assert state_of(client, name) == before
    # Recovering another collection's snapshot by location is refused the same way.
    with pytest.raises(UnexpectedResponse) as e:
        client.recover_snapshot(name, f"{http.base}/collections/{other}/snapshots/{foreign.name}")
    assert e.value.status_code == 400
    assert state_of(client, name) == before


def test_recover_locations_follow_qdrant_rules(client, http, node, collection):
    name = make_loaded(client, collection, n=50)
    for location, status in [
        ("file:///etc/passwd", 403),
        (f"file://{node.data_dir / 'snapshots' / 'nope.snapshot'}", 400),
        ("file://relative.snapshot", 400),
        ("ftp://example.com/x.snapshot", 400),
        (f"{node.base_url}/collections/{name}/snapshots/missing.snapshot", 400),
    ]:
        r = http.put(f"/collections/{name}/snapshots/recover", json={"location": location})
        assert r.status_code == status, (location, r.text)
    assert client.count(name, exact=True).count == 50


def test_shard_snapshot_create_list_stream_recover(client, http, collection):
    name = make_loaded(client, collection, shards=1)
    before = state_of(client, name)
    desc = client.create_shard_snapshot(name, 0)
    assert desc.name.startswith(f"{name}-shard-0-")
    assert [s.name for s in client.list_shard_snapshots(name, 0)] == [desc.name]
    streamed = http.get(f"/collections/{name}/shards/0/snapshot")
    assert streamed.status_code == 200 and len(streamed.content) > 0
    mutate(client, name)
    # A bare name is one of the shard's own snapshots.
    assert client.recover_shard_snapshot(name, 0, desc.name) is True
    assert state_of(client, name) == before
    wait_replicas_active(http, name)
    mutate(client, name)
    r = http.post(
        f"/collections/{name}/shards/0/snapshots/upload",
        params={"priority": "snapshot"},
        files={"snapshot": ("s.snapshot", streamed.content)},
    )
    assert r.status_code == 200, r.text
    assert state_of(client, name) == before
    wait_replicas_active(http, name)
    # A collection snapshot is not a shard snapshot.
    whole = client.create_snapshot(name)
    blob = http.get(f"/collections/{name}/snapshots/{whole.name}").content
    r = http.post(f"/collections/{name}/shards/0/snapshots/upload", files={"snapshot": ("c.snapshot", blob)})
    assert r.status_code == 400
    assert client.delete_shard_snapshot(name, 0, desc.name) is True
    assert client.list_shard_snapshots(name, 0) == []
    assert http.post(f"/collections/{name}/shards/7/snapshots").status_code == 404
    assert http.put(
        f"/collections/{name}/shards/0/snapshots/recover", json={"location": "file:///etc/passwd"}
    ).status_code == 400


def test_snapshots_created_at_once_get_their_own_names(client, http, collection):
    """Snapshots created in the same second must not write over each other (the fuzzer once
    got a 500 from two creates racing for one name)."""
    import concurrent.futures

    import requests

    name = make_loaded(client, collection, n=50)

    def create(path: str) -> requests.Response:
        return requests.post(http.url(path), timeout=60)

    for path, listed in (
        (f"/collections/{name}/snapshots", lambda: client.list_snapshots(name)),
        ("/snapshots", client.list_full_snapshots),
    ):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(create, [path] * 4))
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        made = [r.json()["result"] for r in answers]
        names = {m["name"] for m in made}
        assert len(names) == 4, names
        assert names <= {s.name for s in listed()}
        for m in made:
            r = http.get(f"{path}/{m['name']}")
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == m["checksum"]
            assert http.delete(f"{path}/{m['name']}").status_code == 200


def test_full_snapshot_create_list_download_delete(client, http, collection):
    make_loaded(client, collection, n=50)
    desc = client.create_full_snapshot()
    assert desc.name.startswith("full-snapshot-")
    assert desc.name in [s.name for s in client.list_full_snapshots()]
    r = http.get(f"/snapshots/{desc.name}")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == desc.checksum
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert "full-snapshot.json" in tar.getnames()
    assert client.delete_full_snapshot(desc.name) is True
    assert desc.name not in [s.name for s in client.list_full_snapshots()]
    assert http.get(f"/snapshots/{desc.name}").status_code == 404


def test_wait_false_answers_accepted_then_the_snapshot_appears(client, http, collection):
    name = make_loaded(client, collection, n=50)
    r = http.post(f"/collections/{name}/snapshots", params={"wait": "false"})
    assert r.status_code == 202
    assert r.json()["status"] == "accepted"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not client.list_snapshots(name):
        time.sleep(0.1)
    assert len(client.list_snapshots(name)) == 1
