"""`order_by` in scroll and in the query API, as Qdrant answers it."""

import pytest
from qdrant_client import models


@pytest.fixture
def ordered(client, collection):
    name = collection(size=2, distance=models.Distance.DOT)
    payloads = [
        {"n": 5, "when": "2024-01-05T00:00:00Z"},
        {"n": [1, 9], "when": "2024-01-01T00:00:00Z"},
        {"n": 3.5, "when": "2024-01-03T12:00:00+01:00"},
        {"n": "not a number"},
        {},
        {"n": 5},
    ]
    client.upsert(
        name,
        points=[models.PointStruct(id=i + 1, vector=[1.0, 0.0], payload=p) for i, p in enumerate(payloads)],
        wait=True,
    )
    client.create_payload_index(name, "n", models.PayloadSchemaType.FLOAT, wait=True)
    client.create_payload_index(name, "when", models.PayloadSchemaType.DATETIME, wait=True)
    return name


def pairs(records):
    return [(r.id, r.order_value) for r in records]


def test_scroll_orders_by_every_value_of_the_key(client, ordered):
    """A point appears once per value (arrays element by element); ties go by id; points
    without a number at the key do not appear; no next page is given."""
    records, next_page = client.scroll(ordered, order_by="n", limit=10)
    assert pairs(records) == [(2, 1), (3, 3.5), (1, 5), (6, 5), (2, 9)]
    assert next_page is None
    desc, _ = client.scroll(
        ordered, order_by=models.OrderBy(key="n", direction=models.Direction.DESC, start_from=5), limit=3
    )
    assert pairs(desc) == [(1, 5), (6, 5), (3, 3.5)]


def test_datetimes_order_as_microseconds(client, ordered):
    records, _ = client.scroll(ordered, order_by="when", limit=10)
    assert [r.id for r in records] == [2, 3, 1]
    assert records[0].order_value == 1704067200 * 1_000_000


def test_query_orders_with_filter_and_offset(client, ordered):
    flt = models.Filter(must_not=[models.HasIdCondition(has_id=[6])])
    got = client.query_points(
        ordered, query=models.OrderByQuery(order_by="n"), query_filter=flt, limit=2, offset=1
    ).points
    assert [(p.id, p.order_value, p.score) for p in got] == [(3, 3.5, 1.0), (1, 5, 1.0)]


def test_order_by_needs_a_range_index(client, ordered, http):
    r = http.post(f"/collections/{ordered}/points/scroll", json={"order_by": "missing", "limit": 3})
    assert r.status_code == 400 and "No range index" in r.text
    r = http.post(f"/collections/{ordered}/points/scroll", json={"order_by": "n", "offset": 1})
    assert r.status_code == 400
