"""Payload filtering semantics (scroll + count + filtered search) on a hand-made data set."""

import pytest
from qdrant_client import models as m

from conftest import scroll_all, unique_name

# Each point: id -> payload. Vectors are irrelevant here (id i -> [i, 0, 0, 0]).
POINTS = {
    1: {"city": "London", "n": 1, "price": 9.5, "tags": ["red", "blue"], "desc": "the quick brown fox",
        "nested": {"a": {"b": 1}}, "arr": [{"b": 1}, {"b": 2}], "opt": None, "lst": [], "flag": True, "color": "red"},
    2: {"city": "Berlin", "n": 2, "price": 20.0, "tags": ["green"], "desc": "lazy dog sleeps",
        "nested": {"a": {"b": 2}}, "arr": [{"b": 3}], "opt": 1, "lst": [1], "flag": False, "color": "green"},
    3: {"city": "Paris", "n": 3, "price": 30.25, "tags": [], "desc": "quick thinking",
        "nested": {"a": {"b": 3}}, "arr": [], "lst": [1, 2], "flag": True, "color": "blue"},
    4: {"city": "London", "n": 4, "price": 40.0, "tags": ["red"], "desc": "nothing here",
        "nested": {"a": {"b": 1}}, "arr": [{"b": 2}, {"b": 5}], "opt": "x", "lst": [1, 2, 3], "color": "red"},
    5: {"city": "Tokyo", "n": 5, "tags": ["blue", "green", "red"], "nested": {"a": {}}, "arr": [{"c": 1}],
        "opt": None, "color": "yellow"},
    6: {"city": "Berlin", "n": 6, "price": 5.0, "desc": "fox and hound", "nested": {"a": {"b": [4, 5]}},
        "lst": [1, 2, 3, 4], "flag": False, "color": "blue"},
    7: {"n": 7, "price": 70.0, "tags": ["red", "black"], "color": "green"},
    8: {"city": "Paris", "n": 8, "price": 80.0, "tags": ["Blue"], "desc": "slow fox", "opt": [], "color": "red"},
}
ALL = set(POINTS)


def fc(key, **kw):
    return m.FieldCondition(key=key, **kw)


def mv(v):
    return m.MatchValue(value=v)


CASES = [
    # --- match value
    ("value_str", m.Filter(must=[fc("city", match=mv("London"))]), {1, 4}),
    ("value_int", m.Filter(must=[fc("n", match=mv(3))]), {3}),
    ("value_bool_true", m.Filter(must=[fc("flag", match=mv(True))]), {1, 3}),
    ("value_bool_false", m.Filter(must=[fc("flag", match=mv(False))]), {2, 6}),
    ("value_in_str_array", m.Filter(must=[fc("tags", match=mv("red"))]), {1, 4, 5, 7}),
    ("value_case_sensitive", m.Filter(must=[fc("tags", match=mv("Blue"))]), {8}),
    ("value_in_int_array", m.Filter(must=[fc("lst", match=mv(3))]), {4, 6}),
    ("value_no_match", m.Filter(must=[fc("city", match=mv("Nowhere"))]), set()),
    # --- match any / except
    ("any_str", m.Filter(must=[fc("city", match=m.MatchAny(any=["Paris", "Tokyo"]))]), {3, 5, 8}),
    ("any_int", m.Filter(must=[fc("n", match=m.MatchAny(any=[1, 7, 99]))]), {1, 7}),
    ("any_array_field", m.Filter(must=[fc("tags", match=m.MatchAny(any=["green", "Blue"]))]), {2, 5, 8}),
    ("except_str", m.Filter(must=[fc("color", match=m.MatchExcept(**{"except": ["red", "green"]}))]), {3, 5, 6}),
    # --- full text (no index: substring; with a word index: all tokens) -- chosen to agree
    ("text_word", m.Filter(must=[fc("desc", match=m.MatchText(text="quick"))]), {1, 3}),
    ("text_word2", m.Filter(must=[fc("desc", match=m.MatchText(text="fox"))]), {1, 6, 8}),
    ("text_phrase", m.Filter(must=[fc("desc", match=m.MatchText(text="brown fox"))]), {1}),
    # --- range
    ("range_int", m.Filter(must=[fc("n", range=m.Range(gte=3, lt=6))]), {3, 4, 5}),
    ("range_float_gt_lte", m.Filter(must=[fc("price", range=m.Range(gt=20, lte=70))]), {3, 4, 7}),
    ("range_lt", m.Filter(must=[fc("price", range=m.Range(lt=9.5))]), {6}),
    ("range_lte", m.Filter(must=[fc("price", range=m.Range(lte=9.5))]), {1, 6}),
    ("range_float_bound_int_field", m.Filter(must=[fc("n", range=m.Range(gt=4.5))]), {5, 6, 7, 8}),
    # --- has_id / is_empty / is_null / values_count
    ("has_id", m.Filter(must=[m.HasIdCondition(has_id=[2, 4, 6, 100])]), {2, 4, 6}),
    ("is_empty_missing_or_empty_array", m.Filter(must=[m.IsEmptyCondition(is_empty=m.PayloadField(key="tags"))]), {3, 6}),
    ("is_empty_null_missing_empty", m.Filter(must=[m.IsEmptyCondition(is_empty=m.PayloadField(key="opt"))]),
     {1, 3, 5, 6, 7, 8}),
    ("is_null", m.Filter(must=[m.IsNullCondition(is_null=m.PayloadField(key="opt"))]), {1, 5}),
    ("not_is_empty", m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key="opt"))]), {2, 4}),
    ("values_count_gte", m.Filter(must=[fc("lst", values_count=m.ValuesCount(gte=2))]), {3, 4, 6}),
    ("values_count_gt_lte", m.Filter(must=[fc("lst", values_count=m.ValuesCount(gt=1, lte=3))]), {3, 4}),
    ("values_count_tags", m.Filter(must=[fc("tags", values_count=m.ValuesCount(gte=2))]), {1, 5, 7}),
    # --- nested keys and arrays of objects
    ("nested_dot", m.Filter(must=[fc("nested.a.b", match=mv(1))]), {1, 4}),
    ("nested_dot_array_value", m.Filter(must=[fc("nested.a.b", match=mv(4))]), {6}),
    ("nested_dot_range", m.Filter(must=[fc("nested.a.b", range=m.Range(gte=2))]), {2, 3, 6}),
    ("array_of_objects", m.Filter(must=[fc("arr[].b", match=mv(2))]), {1, 4}),
    ("array_of_objects_single", m.Filter(must=[fc("arr[].b", match=mv(3))]), {2}),
    ("array_of_objects_range", m.Filter(must=[fc("arr[].b", range=m.Range(gte=3))]), {2, 4}),
    ("missing_nested_key", m.Filter(must=[fc("nested.x.y", match=mv(1))]), set()),
    # --- boolean structure
    ("must_two", m.Filter(must=[fc("city", match=mv("London")), fc("n", range=m.Range(gte=2))]), {4}),
    ("should", m.Filter(should=[fc("city", match=mv("Berlin")), fc("city", match=mv("Tokyo"))]), {2, 5, 6}),
    ("must_not_missing_field_included", m.Filter(must_not=[fc("city", match=mv("London"))]), {2, 3, 5, 6, 7, 8}),
    ("must_and_must_not", m.Filter(must=[fc("tags", match=mv("red"))], must_not=[m.HasIdCondition(has_id=[1])]),
     {4, 5, 7}),
    ("must_and_should", m.Filter(must=[fc("price", range=m.Range(gt=10))],
                                 should=[fc("city", match=mv("Paris")), fc("color", match=mv("blue"))]), {3, 8}),
    ("min_should_1", m.Filter(min_should=m.MinShould(conditions=[
        fc("city", match=mv("London")), fc("tags", match=mv("red")), fc("color", match=mv("red")),
        fc("n", range=m.Range(lt=3))], min_count=1)), {1, 2, 4, 5, 7, 8}),
    ("min_should_3", m.Filter(min_should=m.MinShould(conditions=[
        fc("city", match=mv("London")), fc("tags", match=mv("red")), fc("color", match=mv("red")),
        fc("n", range=m.Range(lt=3))], min_count=3)), {1, 4}),
    ("nested_filter_condition", m.Filter(
        must=[m.Filter(should=[fc("city", match=mv("Berlin")), fc("city", match=mv("Paris"))])],
        must_not=[fc("n", range=m.Range(gt=6))]), {2, 3, 6}),
    ("should_and_must_not", m.Filter(should=[fc("color", match=mv("red")), fc("color", match=mv("blue"))],
                                     must_not=[fc("city", match=mv("Paris"))]), {1, 4, 6}),
    ("empty_must_matches_all", m.Filter(must=[]), ALL),
    ("empty_filter_matches_all", m.Filter(), ALL),
]


@pytest.fixture(scope="module")
def fcoll(client):
    name = unique_name("filters")
    client.create_collection(name, vectors_config=m.VectorParams(size=4, distance=m.Distance.EUCLID))
    client.upsert(
        name,
        points=[m.PointStruct(id=i, vector=[float(i), 0.0, 0.0, 0.0], payload=p) for i, p in POINTS.items()],
        wait=True,
    )
    yield name
    client.delete_collection(name)


@pytest.mark.parametrize("flt,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_filter_scroll_and_count(client, fcoll, flt, expected):
    got = [r.id for r in scroll_all(client, fcoll, page=3, scroll_filter=flt, with_vectors=False)]
    assert got == sorted(got)
    assert set(got) == expected
    assert len(got) == len(expected), "duplicates in scroll"
    assert client.count(fcoll, count_filter=flt, exact=True).count == len(expected)


@pytest.mark.parametrize(
    "flt,expected",
    [(c[1], c[2]) for c in CASES if c[0] in ("value_in_str_array", "range_int", "min_should_3", "nested_dot_range",
                                              "array_of_objects", "must_not_missing_field_included", "has_id")],
    ids=["value_in_str_array", "range_int", "min_should_3", "nested_dot_range", "array_of_objects",
         "must_not_missing_field_included", "has_id"],
)
def test_filter_in_search(client, fcoll, flt, expected):
    for exact in (False, True):
        res = client.query_points(
            fcoll, query=[0.0, 0.0, 0.0, 0.0], query_filter=flt, limit=20,
            search_params=m.SearchParams(exact=exact),
        ).points
        # Euclid distance to the origin is the id, so the result order is by id
        assert [p.id for p in res] == sorted(expected)
        assert [p.score for p in res] == pytest.approx([float(i) for i in sorted(expected)], abs=1e-5)


def test_raw_filter_single_condition_object(http, fcoll):
    """Filter clauses accept a single condition object as well as a list."""
    r = http.post(
        f"/collections/{fcoll}/points/scroll",
        json={"filter": {"must": {"key": "city", "match": {"value": "Paris"}}}, "limit": 100},
    )
    assert r.status_code == 200, r.text
    assert sorted(p["id"] for p in r.json()["result"]["points"]) == [3, 8]


def test_raw_count_without_body_fields(http, fcoll):
    r = http.post(f"/collections/{fcoll}/points/count", json={})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"count": len(POINTS)}


# --- full-text index: tokens instead of substrings, as Qdrant matches them


TEXTS = {
    1: "The quick brown fox",
    2: "a Fox that is QUICK",
    3: "quickly foxed",
    4: "lazy dog",
}


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_text_index_matches_tokens(node, client, collection, transport):
    """Without a `text` index, `match.text` is a substring test; with one (created over REST or
    gRPC, with its tokenizer parameters), `text` needs every token, `text_any` one of them and
    `phrase` all of them in a row, after lowercasing."""
    from qdrant_client import QdrantClient

    name = collection(size=4)
    client.upsert(name, [m.PointStruct(id=i, vector=[i, 0, 0, 0], payload={"t": t}) for i, t in TEXTS.items()],
                  wait=True)

    def ids(match):
        found, _ = client.scroll(name, scroll_filter=m.Filter(must=[fc("t", match=match)]), limit=10)
        return {p.id for p in found}

    assert ids(m.MatchText(text="quick fox")) == set()
    assert ids(m.MatchText(text="quick")) == {1, 3}, "a case-sensitive substring"
    params = m.TextIndexParams(type=m.TextIndexType.TEXT, tokenizer=m.TokenizerType.WORD, lowercase=True,
                               phrase_matching=True)
    creator = client if transport == "rest" else QdrantClient(
        host="127.0.0.1", port=node.http_port, grpc_port=node.grpc_port, prefer_grpc=True,
        check_compatibility=False)
    creator.create_payload_index(name, "t", field_schema=params, wait=True)
    assert ids(m.MatchText(text="quick fox")) == {1, 2}
    assert ids(m.MatchText(text="quick")) == {1, 2}, "`quickly` is another token"
    assert ids(m.MatchTextAny(text_any="dog foxed")) == {3, 4}
    assert ids(m.MatchPhrase(phrase="QUICK brown")) == {1}
    # Search and count agree with scroll.
    hits = client.query_points(name, query=[1, 0, 0, 0], query_filter=m.Filter(must=[fc("t", match=m.MatchText(
        text="fox quick"))]), limit=10).points
    assert {h.id for h in hits} == {1, 2}
    assert client.count(name, count_filter=m.Filter(must=[fc("t", match=m.MatchText(text="fox"))])).count == 2
    # Deletes by filter use the same rule.
    client.delete(name, points_selector=m.FilterSelector(filter=m.Filter(must=[fc("t", match=m.MatchText(
        text="fox quick"))])), wait=True)
    assert {p.id for p in scroll_all(client, name)} == {3, 4}


def test_text_index_options_shoal_does_not_apply_are_refused(http, collection):
    name = collection(size=4)
    for extra in ({"stopwords": "english"}, {"stemmer": {"type": "snowball", "language": "english"}},
                  {"ascii_folding": True}, {"tokenizer": "code"}):
        r = http.put(f"/collections/{name}/index?wait=true",
                     json={"field_name": "t", "field_schema": {"type": "text", **extra}})
        assert r.status_code == 400, (extra, r.text)
    assert http.get(f"/collections/{name}").json()["result"]["payload_schema"] == {}
