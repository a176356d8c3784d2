"""Property test: payload filters and payload updates agree with qdrant-client's local mode.

qdrant-client's local mode (`QdrantClient(":memory:")`) is a pure-Python reference
implementation of Qdrant. For each fixed seed we generate random points (payload shapes in the
spirit of the official suite's fixtures: ints, floats, strings, bools, nulls, arrays, arrays
with nulls, nested objects, arrays of objects, missing keys, empty arrays) and random filters
(must / should / must_not / min_should, match value / any / except / text, range,
values_count, is_empty, is_null, has_id, nested conditions, `[]` and `[n]` paths), load the
same points into Shoal and into local mode, and compare:

  * scroll: ids in order and payloads,
  * count(exact=True),
  * filtered search: the set of ids and each score (within SCORE_TOL).

A second property applies random set_payload (with and without `key`), overwrite_payload,
delete_payload and clear_payload operations to both and compares the resulting payloads after
every step.

On a mismatch the failure message carries the seed, the filter (REST JSON), Shoal's and local
mode's answers and the payloads of the points they disagree on, so one case can be replayed
with curl. Reproduce one seed with `-k "seed_7]"`.

Local mode is not perfect: where its answer differs from real Qdrant 1.18.3 the generator
stays away from that corner, or (payload updates) the reference corrects for it; each such
place is marked `LOCAL-MODE:` below, with what real Qdrant does. The last part of the file
pins those corners, and the bugs this property found, as hand-checked cases with Qdrant
1.18.3's own answers. The whole file passes unchanged against a Qdrant 1.18.3 server, so a
failure here is Shoal answering differently from Qdrant.
"""

from __future__ import annotations

import collections
import copy
import json
import random
from typing import Any

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as m

from conftest import unique_name

FILTER_SEEDS = list(range(30))
UPDATE_SEEDS = list(range(30))
N_POINTS = 40
N_FILTERS = 40
N_UPDATE_POINTS = 6
N_UPDATE_OPS = 12
DIM = 4
SCORE_TOL = 1e-4
MAX_REPORTED = 3  # mismatches spelled out per seed (all are counted)

WORDS = ["cat", "dog", "fox", "owl", "bee"]
# LOCAL-MODE: local mode compares with Python `==`, so True == 1 and 1 == 1.0; real Qdrant
# keeps JSON types apart (match true never matches 1, match 1 never matches 1.0, range never
# matches a bool). So: ints that share a field with bools are >= 2, floats are never integral,
# and ranges are never applied to fields that hold bools.
MIXED_INTS = [2, 3, 4, 5]


# --------------------------------------------------------------------------------------
# Random payloads
# --------------------------------------------------------------------------------------


def _float(rng: random.Random) -> float:
    return round(rng.randint(-30, 30) / 10 + 0.05, 2)  # never integral (see LOCAL-MODE above)


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _maybe(rng: random.Random, p: dict, key: str, make, present: float = 0.8) -> None:
    if rng.random() < present:
        p[key] = make()


def random_payload(rng: random.Random, idx: int) -> dict[str, Any]:
    p: dict[str, Any] = {"idx": idx}
    _maybe(rng, p, "int", lambda: rng.randint(-3, 3))
    _maybe(rng, p, "float", lambda: _float(rng))
    _maybe(rng, p, "num", lambda: rng.choice([rng.randint(-3, 3), _float(rng)]))  # int or float
    _maybe(rng, p, "str", lambda: _word(rng))
    _maybe(rng, p, "bool", lambda: rng.random() < 0.5)
    _maybe(rng, p, "words", lambda: " ".join(_word(rng) for _ in range(rng.randint(1, 3))))
    # present-and-null vs missing vs a value (fixture's maybe_null)
    _maybe(rng, p, "maybe_null", lambda: rng.choice([None, None, _word(rng)]), present=0.7)
    _maybe(rng, p, "tags", lambda: [_word(rng) for _ in range(rng.randint(0, 4))])
    _maybe(rng, p, "nums", lambda: [rng.randint(-3, 3) for _ in range(rng.randint(0, 4))])
    _maybe(rng, p, "floats", lambda: [_float(rng) for _ in range(rng.randint(0, 3))])
    _maybe(
        rng, p, "with_nulls",
        lambda: rng.choice([[None, _word(rng)], [None], [], [_word(rng), _word(rng)], None, _word(rng)]),
    )
    # LOCAL-MODE: no arrays of arrays here: with a `mixed[]` key Qdrant also matches inside
    # the inner arrays, local mode does not (arrays of arrays live in "nested_array", which is
    # only read through `[][]` / `[n][]` paths).
    _maybe(
        rng, p, "mixed",
        lambda: rng.choice([
            None,
            _word(rng),
            rng.choice(MIXED_INTS),
            [rng.choice(MIXED_INTS) for _ in range(rng.randint(0, 3))],
            _float(rng),
            [_float(rng) for _ in range(2)],
            rng.random() < 0.5,
            {"key": "value"},
            {},
            [None, _word(rng)],
        ]),
    )

    def nested_item() -> dict:
        item: dict[str, Any] = {}
        _maybe(rng, item, "empty", lambda: rng.choice([["hello"], None, [], ["hello", "world"]]))
        _maybe(rng, item, "empty2", lambda: rng.choice([["hello"], []]))
        _maybe(rng, item, "word", lambda: _word(rng), present=0.9)
        _maybe(rng, item, "number", lambda: rng.randint(1, 6), present=0.9)
        _maybe(rng, item, "tags", lambda: [_word(rng) for _ in range(rng.randint(0, 2))], present=0.5)
        return item

    def nested() -> dict:
        n: dict[str, Any] = {"id": idx}
        _maybe(rng, n, "digit", lambda: rng.randint(0, 3))
        _maybe(rng, n, "array", lambda: [nested_item() for _ in range(rng.randint(0, 4))], present=0.85)
        return n

    _maybe(rng, p, "nested", nested, present=0.85)
    _maybe(rng, p, "arr", lambda: [{"w": _word(rng), "n": rng.randint(0, 4)} for _ in range(rng.randint(0, 3))])
    _maybe(
        rng, p, "obj",
        lambda: rng.choice([
            {"a": {"b": rng.randint(0, 3)}},
            {"a": {"b": [rng.randint(0, 3), rng.randint(0, 3)]}},
            {"a": {"b": None}},
            {"a": {}},
            {"a": [{"b": rng.randint(0, 3)}, {"b": rng.randint(0, 3)}]},
            {},
            [],
            None,
        ]),
    )
    _maybe(
        rng, p, "nested_array",
        lambda: [[rng.randint(-3, 3) for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(0, 3))],
    )
    return p


def random_points(rng: random.Random) -> list[m.PointStruct]:
    ids = rng.sample(range(1, 500), N_POINTS)
    pts = []
    for k, pid in enumerate(ids):
        vec = [round(rng.uniform(-1, 1), 3) for _ in range(DIM)]
        if not any(vec):
            vec[0] = 0.5
        pts.append(m.PointStruct(id=pid, vector=vec, payload=random_payload(rng, k)))
    return pts


# --------------------------------------------------------------------------------------
# Random filters
# --------------------------------------------------------------------------------------

# key -> kinds of values a match on it draws from
MATCH_KEYS = {
    "int": "int",
    "num": "int",
    "str": "word",
    "bool": "bool",
    "maybe_null": "word",
    "tags": "word",
    "tags[]": "word",
    "tags[0]": "word",
    "nums": "int",
    "nums[]": "int",
    "with_nulls": "word",
    "mixed": "mixed",
    "mixed[]": "mixed",
    "nested.id": "int",
    "nested.digit": "int",
    "nested.array[].word": "word",
    "nested.array[0].word": "word",
    "nested.array[].number": "int",
    "nested.array[].tags": "word",
    "nested.array[].empty": "hello",
    "arr[].w": "word",
    "arr[].n": "int",
    "obj.a.b": "int",
    "obj.a[].b": "int",
    "nested_array[][]": "int",
    "nested_array[0][]": "int",
    "nested_array[1][0]": "int",
    "missing": "word",
    "missing.deeper": "int",
}
# LOCAL-MODE: `except` in local mode matches a null (None not in [...]) and an inner empty
# array; Qdrant skips nulls. No `except` on fields that can hold a null.
NULLABLE_KEYS = {"maybe_null", "with_nulls", "mixed", "mixed[]", "obj.a.b", "obj.a[].b", "nested.array[].empty"}
# fields with no bools in them (see LOCAL-MODE at the top)
RANGE_KEYS = [
    "int", "float", "num", "nums", "nums[]", "floats", "nested.digit", "nested.array[].number",
    "arr[].n", "obj.a.b", "obj.a[].b", "nested_array[][]", "nested_array[0][]", "nested_array[1][0]",
    "str", "tags", "missing", "idx",
]
COUNT_KEYS = [
    "tags", "nums", "floats", "with_nulls", "mixed", "maybe_null", "str", "int", "obj", "obj.a", "obj.a.b",
    "nested.array", "nested.array[].empty", "nested.array[].empty2", "nested.array[].tags", "arr", "arr[].w",
    "nested_array", "nested_array[]", "tags[]", "missing", "nested.missing",
]
EMPTY_NULL_KEYS = [
    "maybe_null", "tags", "nums", "with_nulls", "mixed", "str", "obj", "obj.a", "obj.a.b", "nested.array",
    "nested.array[].empty", "nested.array[].empty2", "nested.array[].word", "arr", "arr[].w", "missing",
    "nested_array", "nested_array[]", "tags[]",
]
# LOCAL-MODE: full-text match without an index is a substring test in both, but local mode
# raises on non-string values, so only fields that hold nothing but strings.
TEXT_KEYS = ["words", "str", "tags", "nested.array[].word"]
NESTED_KEYS = ["nested.array", "arr"]
NESTED_INNER = {
    "nested.array": {"match": {"word": "word", "number": "int", "tags": "word"},
                     "range": ["number"], "count": ["tags", "empty", "empty2"],
                     "empty": ["empty", "empty2", "tags", "word"]},
    "arr": {"match": {"w": "word", "n": "int"}, "range": ["n"], "count": ["w"], "empty": ["w"]},
}


def _value(rng: random.Random, kind: str):
    if kind == "int":
        return rng.randint(-3, 6)
    if kind == "word":
        return rng.choice(WORDS + ["3"])  # "3" never equals the number 3
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "hello":
        return rng.choice(["hello", "world", "cat"])
    if kind == "mixed":
        return rng.choice([_word(rng), rng.choice(MIXED_INTS), rng.random() < 0.5, "value"])
    raise ValueError(kind)


def _values(rng: random.Random, kind: str) -> list:
    n = rng.randint(1, 3)
    if kind == "mixed":  # any/except lists are all strings or all ints
        kind = rng.choice(["word", "mixed_int"])
        if kind == "mixed_int":
            return [rng.choice(MIXED_INTS) for _ in range(n)]
    if kind == "bool":
        kind = "word"
    return [_value(rng, kind) for _ in range(n)]


def _bound(rng: random.Random):
    return rng.choice([rng.randint(-3, 6), rng.randint(-30, 60) / 10])


def random_range(rng: random.Random) -> m.Range:
    kw = {}
    for op in rng.sample(["gt", "gte", "lt", "lte"], rng.randint(1, 2)):
        kw[op] = _bound(rng)
    return m.Range(**kw)


def random_values_count(rng: random.Random, key: str) -> m.ValuesCount:
    kw = {}
    # LOCAL-MODE: where a path yields several values (a `[]` path), Qdrant counts each value
    # on its own and a point matches if one count satisfies all bounds; local mode checks each
    # bound against a possibly different value. One bound only on such paths.
    n_bounds = 1 if "[]" in key else rng.choice([1, 1, 2])
    for op in rng.sample(["gt", "gte", "lt", "lte"], n_bounds):
        kw[op] = rng.randint(0, 4)
    return m.ValuesCount(**kw)


def random_match(rng: random.Random, kind: str, key: str):
    r = rng.random()
    if r < 0.5:
        return m.MatchValue(value=_value(rng, kind))
    if r < 0.75 or key in NULLABLE_KEYS:
        return m.MatchAny(any=_values(rng, kind))
    return m.MatchExcept(**{"except": _values(rng, kind)})


def random_nested(rng: random.Random, depth: int) -> m.NestedCondition:
    key = rng.choice(NESTED_KEYS)
    inner = NESTED_INNER[key]

    def cond():
        r = rng.random()
        if r < 0.5:
            k, kind = rng.choice(list(inner["match"].items()))
            return m.FieldCondition(key=k, match=random_match(rng, kind, k))
        if r < 0.7:
            return m.FieldCondition(key=rng.choice(inner["range"]), range=random_range(rng))
        if r < 0.8:
            k = rng.choice(inner["count"])
            return m.FieldCondition(key=k, values_count=random_values_count(rng, k))
        if r < 0.9:
            return m.IsEmptyCondition(is_empty=m.PayloadField(key=rng.choice(inner["empty"])))
        return m.IsNullCondition(is_null=m.PayloadField(key=rng.choice(inner["empty"])))

    parts = {}
    for clause in rng.sample(["must", "should", "must_not"], rng.randint(1, 2)):
        parts[clause] = [cond() for _ in range(rng.randint(1, 2))]
    return m.NestedCondition(nested=m.Nested(key=key, filter=m.Filter(**parts)))


def random_condition(rng: random.Random, depth: int):
    r = rng.random()
    if r < 0.30:
        key, kind = rng.choice(list(MATCH_KEYS.items()))
        return m.FieldCondition(key=key, match=random_match(rng, kind, key))
    if r < 0.42:
        return m.FieldCondition(key=rng.choice(RANGE_KEYS), range=random_range(rng))
    if r < 0.55:
        key = rng.choice(COUNT_KEYS)
        return m.FieldCondition(key=key, values_count=random_values_count(rng, key))
    if r < 0.63:
        return m.IsEmptyCondition(is_empty=m.PayloadField(key=rng.choice(EMPTY_NULL_KEYS)))
    if r < 0.71:
        return m.IsNullCondition(is_null=m.PayloadField(key=rng.choice(EMPTY_NULL_KEYS)))
    if r < 0.76:
        return m.FieldCondition(key=rng.choice(TEXT_KEYS), match=m.MatchText(text=_word(rng)))
    if r < 0.82:
        return m.HasIdCondition(has_id=[rng.randint(1, 499) for _ in range(rng.randint(1, 12))])
    if r < 0.91:
        return random_nested(rng, depth)
    if depth < 2:
        return random_filter(rng, depth + 1)
    return m.FieldCondition(key="int", match=m.MatchValue(value=rng.randint(-3, 3)))


def random_filter(rng: random.Random, depth: int = 0) -> m.Filter:
    parts: dict[str, Any] = {}
    for clause in rng.sample(["must", "should", "must_not", "min_should"], rng.choice([1, 1, 2, 2, 3])):
        n = rng.randint(1, 3)
        conds = [random_condition(rng, depth) for _ in range(n)]
        if clause == "min_should":
            parts[clause] = m.MinShould(conditions=conds, min_count=rng.randint(1, n))
        elif n == 1 and rng.random() < 0.3:
            parts[clause] = conds[0]  # a single condition object instead of a list
        else:
            parts[clause] = conds
    return m.Filter(**parts)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def filter_json(flt: m.Filter) -> dict:
    return flt.model_dump(mode="json", exclude_none=True, by_alias=True)


def _dump(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def load_both(client: QdrantClient, name: str, points: list[m.PointStruct]) -> QdrantClient:
    local = QdrantClient(":memory:")
    for c in (client, local):
        c.create_collection(name, vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE))
        c.upsert(name, points=copy.deepcopy(points), wait=True)
    return local


def _ids(c: QdrantClient, name: str, flt: m.Filter, limit: int) -> list:
    return [r.id for r in c.scroll(name, scroll_filter=flt, limit=limit, with_payload=False)[0]]


def leaf_conditions(flt: m.Filter) -> list:
    """The conditions of a filter that are not filters themselves (a nested condition is one)."""
    out = []
    clauses = [flt.must, flt.should, flt.must_not, flt.min_should.conditions if flt.min_should else None]
    for clause in clauses:
        if clause is None:
            continue
        for c in clause if isinstance(clause, list) else [clause]:
            out.extend(leaf_conditions(c) if isinstance(c, m.Filter) else [c])
    return out


def condition_kind(c) -> str:
    """A short name for a kind of condition, e.g. `values_count on arr[].w`."""
    if isinstance(c, m.FieldCondition):
        what = next(k for k in ("match", "range", "values_count") if getattr(c, k) is not None)
        if what == "match":
            what = "match " + {"MatchValue": "value", "MatchAny": "any", "MatchExcept": "except",
                               "MatchText": "text"}[type(c.match).__name__]
        return f"{what} on {c.key}"
    if isinstance(c, m.IsEmptyCondition):
        return f"is_empty on {c.is_empty.key}"
    if isinstance(c, m.IsNullCondition):
        return f"is_null on {c.is_null.key}"
    if isinstance(c, m.NestedCondition):
        inner = sorted({condition_kind(x) for x in leaf_conditions(c.nested.filter)})
        return f"nested {c.nested.key} [{'; '.join(inner)}]"
    return type(c).__name__


def _root_field(leaf: dict) -> str | None:
    """The top-level payload field a condition (as JSON) looks at."""
    key = leaf.get("key") or next((v["key"] for v in leaf.values() if isinstance(v, dict) and "key" in v), None)
    return key.split(".")[0].split("[")[0] if key else None


class Mismatch:
    def __init__(self, flt: m.Filter, checks: list[str], diff: list, culprits: list):
        self.flt, self.checks, self.diff, self.culprits = flt, checks, diff, culprits

    def render(self, points_by_id: dict) -> str:
        def show(ids, indent="      "):
            lines = [f"{indent}id {i}: {_dump(points_by_id[i])}" for i in ids[:3] if i in points_by_id]
            if len(ids) > 3:
                lines.append(f"{indent}... {len(ids) - 3} more")
            return "\n".join(lines)

        out = [f"  filter: {_dump(filter_json(self.flt))}", *[f"  {c}" for c in self.checks]]
        if self.culprits:
            out.append("  conditions that disagree on their own (POST /points/scroll {\"filter\": {\"must\": [<condition>]}}):")
            for leaf, got, exp in self.culprits:
                only_s, only_l = sorted(set(got) - set(exp)), sorted(set(exp) - set(got))
                out.append(f"    {_dump(leaf)}\n      only Shoal matches {only_s}, only local mode matches {only_l}")
                root = _root_field(leaf)
                for i in (only_s + only_l)[:3]:
                    p = points_by_id.get(i, {})
                    field = f"{root} = {_dump(p[root])}" if root in p else f"{root} missing"
                    out.append(f"        id {i}: {field}" if root else f"        id {i}: {_dump(p)}")
        else:
            out.append("  no single condition disagrees on its own; points in the difference:")
            out.append(show(self.diff))
        return "\n".join(out)


def compare_filter(client, local, name, flt, query) -> Mismatch | None:
    """Scroll, count and filtered search with `flt` on Shoal and on local mode."""
    limit = N_POINTS + 5
    checks = []
    body = filter_json(flt)
    exp_ids = _ids(local, name, flt, limit)
    try:
        got_ids = _ids(client, name, flt, limit)
    except Exception as e:  # noqa: BLE001 - an error is a disagreement to report
        return Mismatch(flt, [f"scroll: Shoal failed: {e}", f"local mode: {exp_ids}"], exp_ids, [])
    diff = sorted(set(got_ids) ^ set(exp_ids))
    if got_ids != exp_ids:
        checks.append(f"scroll ids: Shoal {got_ids}\n              local mode {exp_ids}")
    else:
        got = client.scroll(name, scroll_filter=flt, limit=limit, with_payload=True)[0]
        exp = local.scroll(name, scroll_filter=flt, limit=limit, with_payload=True)[0]
        for g, e in zip(got, exp):
            if g.payload != e.payload:
                checks.append(f"scroll payload of id {g.id}: Shoal {_dump(g.payload)}, local mode {_dump(e.payload)}")
                break

    got_n = client.count(name, count_filter=flt, exact=True).count
    exp_n = local.count(name, count_filter=flt, exact=True).count
    if got_n != exp_n:
        checks.append(f"count (exact): Shoal {got_n}, local mode {exp_n}")

    got_hits = client.query_points(name, query=query, query_filter=flt, limit=limit).points
    exp_hits = local.query_points(name, query=query, query_filter=flt, limit=limit).points
    g = {h.id: h.score for h in got_hits}
    e = {h.id: h.score for h in exp_hits}
    if set(g) != set(e) or len(g) != len(got_hits):
        checks.append(f"search (POST /points/query {{\"query\": {query}, \"filter\": .., \"limit\": {limit}}}): "
                      f"only Shoal {sorted(set(g) - set(e))}, only local mode {sorted(set(e) - set(g))}"
                      + (f", duplicates in Shoal's answer" if len(g) != len(got_hits) else ""))
        diff = diff or sorted(set(g) ^ set(e))
    else:
        bad = {i: (g[i], e[i]) for i in g if abs(g[i] - e[i]) > SCORE_TOL}
        if bad:
            checks.append(f"search scores (id: (Shoal, local mode)): {bad}")
        got_scores = [h.score for h in got_hits]
        if got_scores != sorted(got_scores, reverse=True):
            checks.append(f"search results not ordered by score: {got_scores}")
    if not checks:
        return None

    # Shrink: which single conditions of the filter disagree on their own?
    culprits = []
    for leaf in leaf_conditions(flt):
        alone = m.Filter(must=[leaf])
        try:
            got_leaf = _ids(client, name, alone, limit)
        except Exception as ex:  # noqa: BLE001
            got_leaf = [f"error: {ex}"]
        exp_leaf = _ids(local, name, alone, limit)
        if got_leaf != exp_leaf:
            culprits.append((leaf.model_dump(mode="json", exclude_none=True, by_alias=True), got_leaf, exp_leaf))
    return Mismatch(flt, checks, diff, culprits)


def _culprit_kinds(mismatches: list) -> collections.Counter:
    kinds = collections.Counter()
    for mm in mismatches:
        for leaf in {_dump(c[0]) for c in mm.culprits}:
            kinds[condition_kind(_parse_condition(json.loads(leaf)))] += 1
    return kinds


def _parse_condition(d: dict):
    for cls in (m.FieldCondition, m.IsEmptyCondition, m.IsNullCondition, m.HasIdCondition, m.NestedCondition):
        try:
            return cls.model_validate(d)
        except Exception:  # noqa: BLE001
            continue
    return d


# --------------------------------------------------------------------------------------
# Property 1: filters
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", FILTER_SEEDS, ids=[f"seed_{s}" for s in FILTER_SEEDS])
def test_filters_agree_with_local_mode(client, seed):
    rng = random.Random(seed)
    points = random_points(rng)
    points_by_id = {p.id: p.payload for p in points}
    name = unique_name(f"fprop{seed}")
    local = load_both(client, name, points)
    try:
        mismatches = []
        for i in range(N_FILTERS):
            flt = random_filter(rng)
            query = [round(rng.uniform(-1, 1), 3) for _ in range(DIM)]
            mm = compare_filter(client, local, name, flt, query)
            if mm is not None:
                mismatches.append((i, mm))
    finally:
        client.delete_collection(name)
        local.close()
    if mismatches:
        kinds = _culprit_kinds([mm for _, mm in mismatches])
        summary = ", ".join(f"{k} ({n}x)" for k, n in kinds.most_common()) or "none alone"
        shown = "\n\n".join(f"[seed {seed}, filter #{i}]\n{mm.render(points_by_id)}"
                             for i, mm in mismatches[:MAX_REPORTED])
        more = f"\n\n... and {len(mismatches) - MAX_REPORTED} more" if len(mismatches) > MAX_REPORTED else ""
        pytest.fail(
            f"seed {seed}: {len(mismatches)} of {N_FILTERS} random filters disagree with local mode\n"
            f"conditions that disagree on their own: {summary}\n\n{shown}{more}",
            pytrace=False,
        )


# --------------------------------------------------------------------------------------
# Property 2: set_payload / overwrite_payload / delete_payload / clear_payload
# --------------------------------------------------------------------------------------

# LOCAL-MODE: delete_payload in local mode only removes top-level keys (Qdrant also deletes
# nested paths such as "a.b" and "a[].b"), so only top-level keys are deleted here; nested
# deletes are covered by the hand-checked cases at the end of this file.
SET_KEYS = [None, None, None, "nest[0]", "nest[1]", "nest[]", "nest[].inner", "a", "a.b", "a.b.c", "a.b[0]",
            "new", "new.deep", "arr[0][0]", "arr[]", "scalar", "scalar.x", "lst[0]"]
DELETE_KEYS = ["a", "nest", "scalar", "lst", "k", "null", "missing", "new", "arr"]
# LOCAL-MODE: in Qdrant a top-level null in a set_payload body deletes that key from the
# object being updated (`{"k": null}` removes "k"; nested nulls and overwrite_payload keep
# null). Qdrant has one exception Shoal deliberately does not copy: right after
# clear_payload (and before any other payload write) a set_payload without `key` stores its
# body as is, nulls included, because Qdrant then holds no payload object at all; Shoal
# treats a cleared payload like any empty one. Local mode always stores the null. The reference replays such a set with this marker in place of the null
# and then deletes every key that holds the marker (see apply_reference).
_DELETE_MARK = "__deleted_by_null__"


def random_update_payload(rng: random.Random) -> dict:
    p: dict[str, Any] = {}
    _maybe(rng, p, "a", lambda: rng.choice([{"b": {"c": 1}}, {"b": [1, 2]}, {"b": None}, {}, [], 5]))
    _maybe(rng, p, "nest", lambda: rng.choice([[{"x": 1}, {"x": 2, "inner": {"y": 1}}], [{"x": 3}], [], [1, 2]]))
    _maybe(rng, p, "scalar", lambda: rng.choice([1, "s", None, True]))
    _maybe(rng, p, "lst", lambda: rng.choice([[1, 2, 3], [], [None, "a"], [{"q": 1}]]))
    _maybe(rng, p, "arr", lambda: rng.choice([[[{"z": 1}]], [[]], [[1]]]))
    _maybe(rng, p, "null", lambda: None, present=0.3)
    return p


def random_set_value(rng: random.Random) -> dict:
    out: dict[str, Any] = {}
    for _ in range(rng.randint(0, 3)):
        k = rng.choice(["k", "x", "y", "a", "null", "scalar", "inner"])
        out[k] = rng.choice([None, 1, "v", [1, None], {"d": 1}, {}, [], False])
    return out


def random_selector(rng: random.Random, ids: list[int]):
    if rng.random() < 0.7:
        return rng.sample(ids, rng.randint(1, len(ids)))
    return m.Filter(must=[m.HasIdCondition(has_id=rng.sample(ids, rng.randint(1, len(ids))))])


def _selector_json(sel) -> Any:
    return filter_json(sel) if isinstance(sel, m.Filter) else sel


def apply_op(c: QdrantClient, name: str, op: tuple) -> None:
    kind, args = op
    if kind == "set":
        c.set_payload(name, payload=copy.deepcopy(args["payload"]), points=args["points"], key=args["key"], wait=True)
    elif kind == "overwrite":
        c.overwrite_payload(name, payload=copy.deepcopy(args["payload"]), points=args["points"], wait=True)
    elif kind == "delete":
        c.delete_payload(name, keys=args["keys"], points=args["points"], wait=True)
    elif kind == "clear":
        c.clear_payload(name, points_selector=args["points"], wait=True)
    else:
        raise ValueError(kind)


def random_op(rng: random.Random, ids: list[int]) -> tuple:
    r = rng.random()
    sel = random_selector(rng, ids)
    if r < 0.65:
        return "set", {"payload": random_set_value(rng), "points": sel, "key": rng.choice(SET_KEYS)}
    if r < 0.78:
        return "overwrite", {"payload": random_update_payload(rng), "points": sel}
    if r < 0.94:
        return "delete", {"keys": rng.sample(DELETE_KEYS, rng.randint(1, 3)), "points": sel}
    return "clear", {"points": sel}


def op_rest(op: tuple) -> str:
    kind, a = op
    if kind == "set":
        body = {"payload": a["payload"], "points": _selector_json(a["points"])}
        if a["key"] is not None:
            body["key"] = a["key"]
        return f"POST /points/payload {_dump(body)}"
    if kind == "overwrite":
        return f"PUT /points/payload {_dump({'payload': a['payload'], 'points': _selector_json(a['points'])})}"
    if kind == "delete":
        return f"POST /points/payload/delete {_dump({'keys': a['keys'], 'points': _selector_json(a['points'])})}"
    sel = a["points"]
    return f"POST /points/payload/clear {_dump({'filter': filter_json(sel)} if isinstance(sel, m.Filter) else {'points': sel})}"


def all_payloads(c: QdrantClient, name: str) -> dict:
    recs, _ = c.scroll(name, limit=1000, with_payload=True)
    return {r.id: r.payload for r in recs}


def _drop_marked(v):
    if isinstance(v, dict):
        return {k: _drop_marked(x) for k, x in v.items() if x != _DELETE_MARK}
    if isinstance(v, list):
        return [_drop_marked(x) for x in v]
    return v


def _selected(sel) -> list:
    return list(sel.must[0].has_id) if isinstance(sel, m.Filter) else list(sel)


def apply_reference(local: QdrantClient, name: str, op: tuple, cleared: set) -> None:
    """`op` on local mode, corrected where local mode is known to differ from Qdrant.

    `cleared` holds the ids whose payload was cleared and not set since: Qdrant keeps no
    payload for them, and a set_payload without `key` stores its body as is, nulls included.
    """
    kind, a = op
    if kind == "set":
        marked = {k: (_DELETE_MARK if v is None else v) for k, v in a["payload"].items()}
        ids = _selected(a["points"])
        # Shoal removes the keys set to null also right after clear_payload (see above), so
        # `cleared` only documents where Qdrant would differ.
        keep_nulls: list = []
        if keep_nulls:
            apply_op(local, name, ("set", {**a, "points": keep_nulls}))
        rest = [i for i in ids if i not in keep_nulls]
        if rest:
            apply_op(local, name, ("set", {**a, "payload": marked, "points": rest}))
        cleared.difference_update(ids)
    else:
        apply_op(local, name, op)
        if kind == "overwrite":
            cleared.difference_update(_selected(a["points"]))
        elif kind == "clear":
            cleared.update(_selected(a["points"]))
    # Rewrite every payload: drops the markers, and gives each point its own copy (LOCAL-MODE:
    # set_payload shares one copy of the new values between all selected points, so a later
    # set_payload with a `key` into one of them would change the others as well).
    for pid, payload in all_payloads(local, name).items():
        local.overwrite_payload(name, payload=_drop_marked(payload), points=[pid], wait=True)


@pytest.mark.parametrize("seed", UPDATE_SEEDS, ids=[f"seed_{s}" for s in UPDATE_SEEDS])
def test_payload_updates_agree_with_local_mode(client, seed):
    rng = random.Random(1000 + seed)
    ids = rng.sample(range(1, 100), N_UPDATE_POINTS)
    points = [
        m.PointStruct(id=i, vector=[round(rng.uniform(0.1, 1), 3) for _ in range(DIM)],
                      payload=random_update_payload(rng))
        for i in ids
    ]
    name = unique_name(f"uprop{seed}")
    local = load_both(client, name, points)
    history = [f"initial payloads: {_dump({p.id: p.payload for p in points})}"]
    cleared: set = set()
    try:
        for step in range(N_UPDATE_OPS):
            op = random_op(rng, ids)
            before = all_payloads(local, name)
            apply_reference(local, name, op, cleared)
            try:
                apply_op(client, name, op)
            except Exception as e:  # noqa: BLE001
                pytest.fail(
                    f"seed {seed}, step {step}: Shoal rejected an update local mode accepted\n"
                    f"  {op_rest(op)}\n  error: {e}\n  history:\n    " + "\n    ".join(history),
                    pytrace=False,
                )
            history.append(op_rest(op))
            got, exp = all_payloads(client, name), all_payloads(local, name)
            if got != exp:
                diff = [i for i in sorted(exp) if got.get(i) != exp.get(i)]
                lines = [
                    f"    id {i}: before    {_dump(before.get(i))}\n"
                    f"          Shoal:     {_dump(got.get(i))}\n          expected:  {_dump(exp.get(i))}"
                    for i in diff
                ]
                pytest.fail(
                    f"seed {seed}, step {step}: payloads differ (expected: local mode, with the Qdrant corrections "
                    f"described above SET_KEYS) after\n  {op_rest(op)}\n" + "\n".join(lines)
                    + "\n  history:\n    " + "\n    ".join(history),
                    pytrace=False,
                )
    finally:
        client.delete_collection(name)
        local.close()


# --------------------------------------------------------------------------------------
# Hand-checked cases: the corners above, with the answers of Qdrant 1.18.3 itself
# --------------------------------------------------------------------------------------

CORNER_POINTS = {
    1: {"f": None}, 2: {}, 3: {"f": []}, 4: {"f": [None, "a"]}, 5: {"f": [None]}, 6: {"f": "a"}, 7: {"f": "b"},
    8: {"f": ["a", "b"]}, 9: {"f": {"x": 1}}, 10: {"f": [[]]}, 11: {"f": 3}, 12: {"f": [3, 4]},
    13: {"n": [{"e": ["h"]}, {"e": None}, {"e": []}]}, 14: {"n": [{"e": ["h", "w"]}, {"e": ["h"]}]},
    15: {"n": [{"e": None}, {}]}, 16: {"n": [{"e": ["h"]}]}, 17: {"n": []},
    18: {"f": True}, 19: {"f": 1}, 20: {"f": 1.0}, 21: {"f": 2.5},
}
_ALL = set(CORNER_POINTS)
_F = {1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19, 20, 21}  # points that have "f"


def _vc(key, **kw):
    return {"must": [{"key": key, "values_count": kw}]}


FILTER_CORNERS = [
    # values_count: a missing key never matches, whatever the bound; null counts 0
    ("values_count_lt_missing_key", _vc("f", lt=2), {1, 3, 5, 6, 7, 9, 10, 11, 18, 19, 20, 21}),
    ("values_count_lte_0_missing_key", _vc("f", lte=0), {1, 3}),
    ("values_count_gte_0_missing_key", _vc("f", gte=0), _F),
    ("values_count_gt_1", _vc("f", gt=1), {4, 8, 12}),
    ("must_not_values_count_lt", {"must_not": [{"key": "f", "values_count": {"lt": 2}}]},
     {2, 4, 8, 12, 13, 14, 15, 16, 17}),
    # values_count on a `[]` path counts each value on its own (no sum over the array)
    ("values_count_array_path_gt", _vc("n[].e", gt=1), {14}),
    ("values_count_array_path_not_summed", _vc("n[].e", gte=3), set()),
    ("values_count_array_path_lt", _vc("n[].e", lt=1), {13, 15}),
    ("values_count_array_path_both_bounds_one_value", _vc("n[].e", gt=1, lt=2), set()),
    ("values_count_wildcard_elements", _vc("f[]", gt=1), set()),
    ("values_count_wildcard_nested_elements", _vc("n[].e[]", gt=1), set()),
    # is_null / is_empty
    ("is_null_array_with_null", {"must": [{"is_null": {"key": "f"}}]}, {1}),
    ("is_null_wildcard_elements", {"must": [{"is_null": {"key": "f[]"}}]}, {4, 5}),
    ("is_null_array_path", {"must": [{"is_null": {"key": "n[].e"}}]}, {13, 15}),
    ("is_empty", {"must": [{"is_empty": {"key": "f"}}]}, {1, 2, 3, 13, 14, 15, 16, 17}),
    ("is_empty_array_path", {"must": [{"is_empty": {"key": "n[].e"}}]}, _ALL - {13, 14, 16}),
    # except skips nulls (local mode does not)
    ("except_skips_nulls", {"must": [{"key": "f", "match": {"except": ["a"]}}]}, {7, 8, 9, 10, 11, 12, 18, 19, 20, 21}),
    ("except_int", {"must": [{"key": "f", "match": {"except": [3]}}]}, {4, 6, 7, 8, 9, 10, 12, 18, 19, 20, 21}),
    ("except_wildcard", {"must": [{"key": "f[]", "match": {"except": ["a"]}}]}, {8, 12}),
    # JSON types stay apart (local mode: True == 1 == 1.0)
    ("match_true_not_1", {"must": [{"key": "f", "match": {"value": True}}]}, {18}),
    ("match_1_not_true_or_1_0", {"must": [{"key": "f", "match": {"value": 1}}]}, {19}),
    ("range_skips_bool", {"must": [{"key": "f", "range": {"gte": 1, "lte": 1}}]}, {19, 20}),
    # nested conditions over array elements
    ("nested_is_null", {"must": [{"nested": {"key": "n", "filter": {"must": [{"is_null": {"key": "e"}}]}}}]}, {13, 15}),
    ("nested_values_count", {"must": [{"nested": {"key": "n", "filter": {"must": [
        {"key": "e", "values_count": {"lt": 1}}]}}}]}, {13, 15}),
    ("nested_must_not", {"must": [{"nested": {"key": "n", "filter": {"must_not": [
        {"key": "e", "match": {"value": "h"}}]}}}]}, {13, 15}),
]


@pytest.fixture(scope="module")
def corners(client):
    name = unique_name("corners")
    client.create_collection(name, vectors_config=m.VectorParams(size=2, distance=m.Distance.COSINE))
    client.upsert(name, points=[m.PointStruct(id=i, vector=[1.0, 0.5], payload=p) for i, p in CORNER_POINTS.items()],
                  wait=True)
    yield name
    client.delete_collection(name)


@pytest.mark.parametrize("flt,expected", [c[1:] for c in FILTER_CORNERS], ids=[c[0] for c in FILTER_CORNERS])
def test_filter_corner_cases_match_qdrant(http, corners, flt, expected):
    r = http.post(f"/collections/{corners}/points/scroll", json={"filter": flt, "limit": 100})
    assert r.status_code == 200, r.text
    got = {p["id"] for p in r.json()["result"]["points"]}
    assert got == expected, (
        f"POST /collections/<c>/points/scroll {_dump({'filter': flt})}\n"
        f"  only Shoal: {sorted(got - expected)}, only Qdrant: {sorted(expected - got)}\n"
        + "\n".join(f"  id {i}: {_dump(CORNER_POINTS[i])}" for i in sorted(got ^ expected))
    )
    r = http.post(f"/collections/{corners}/points/count", json={"filter": flt, "exact": True})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["count"] == len(expected)


P1 = {"points": [1]}
SET, PUT, DEL, CLEAR = ("POST", "payload"), ("PUT", "payload"), ("POST", "payload/delete"), ("POST", "payload/clear")
UPDATE_CORNERS = [
    # a top-level null in set_payload deletes the key; nested nulls and overwrite keep null
    ("set_null_deletes_key", {"k": 1, "x": 2}, [(SET, {"payload": {"k": None}})], {"x": 2}),
    ("set_null_on_missing_key", {"x": 2}, [(SET, {"payload": {"k": None}})], {"x": 2}),
    ("set_null_on_empty_payload", {}, [(SET, {"payload": {"k": None, "j": 1}})], {"j": 1}),
    ("set_nested_null_kept", {"k": {"a": 1}}, [(SET, {"payload": {"k": {"d": None, "e": 1}}})], {"k": {"d": None, "e": 1}}),
    ("set_null_in_array_kept", {"k": 1}, [(SET, {"payload": {"k": [1, None]}})], {"k": [1, None]}),
    ("overwrite_keeps_null", {"k": 1, "x": 2}, [(PUT, {"payload": {"k": None, "y": 1}})], {"k": None, "y": 1}),
    ("set_null_with_key", {"k": {"a": 1, "b": 2}}, [(SET, {"payload": {"a": None, "c": 3}, "key": "k"})],
     {"k": {"b": 2, "c": 3}}),
    ("set_null_with_wildcard_key", {"a": [{"b": 1}, 3, {}]}, [(SET, {"payload": {"b": None, "c": 2}, "key": "a[]"})],
     {"a": [{"c": 2}, {"c": 2}, {"c": 2}]}),
    ("set_null_with_key_creates_empty_object", {}, [(SET, {"payload": {"b": None}, "key": "a"})], {"a": {}}),
    # after clear_payload Qdrant stores the next set's body as is ({"j": 1, "k": None}); Shoal
    # removes the null key as after any other write (a deliberate difference, see above)
    ("set_null_after_clear", {"a": 1}, [(CLEAR, {}), (SET, {"payload": {"k": None, "j": 1}})], {"j": 1}),
    ("set_null_twice_after_clear", {"a": 1},
     [(CLEAR, {}), (SET, {"payload": {"k": None, "j": 1}}), (SET, {"payload": {"k": None, "j": 1}})], {"j": 1}),
    ("set_null_after_delete_all_keys", {"a": 1}, [(DEL, {"keys": ["a"]}), (SET, {"payload": {"k": None, "j": 1}})],
     {"j": 1}),
    ("set_null_after_overwrite_empty", {"a": 1}, [(CLEAR, {}), (PUT, {"payload": {}}), (SET, {"payload": {"k": None}})],
     {}),
    # `key` with an index: never creates array elements
    ("set_index_past_end", {"nest": []}, [(SET, {"payload": {"d": 1}, "key": "nest[0]"})], {"nest": []}),
    ("set_index_missing_array", {}, [(SET, {"payload": {"d": 1}, "key": "nest[0]"})], {"nest": []}),
    ("set_index_1_missing_array", {"z": 1}, [(SET, {"payload": {"d": 1}, "key": "nest[1]"})], {"z": 1, "nest": []}),
    ("set_index_under_scalar", {"a": 5}, [(SET, {"payload": {"d": 1}, "key": "a.b[0]"})], {"a": {"b": []}}),
    ("set_double_index_empty_inner", {"arr": [[]]}, [(SET, {"payload": {"d": 1}, "key": "arr[0][0]"})], {"arr": [[]]}),
    ("set_double_index_existing", {"arr": [[{"z": 1}]]}, [(SET, {"payload": {"d": 1}, "key": "arr[0][0]"})],
     {"arr": [[{"d": 1, "z": 1}]]}),
    ("set_index_existing_element", {"nest": [{"a": "100", "b": "200"}]}, [(SET, {"payload": {"a": "101"}, "key": "nest[0]"})],
     {"nest": [{"a": "101", "b": "200"}]}),
    ("set_wildcard_replaces_non_objects", {"arr": [1, {"z": 1}]}, [(SET, {"payload": {"d": 1}, "key": "arr[]"})],
     {"arr": [{"d": 1}, {"d": 1, "z": 1}]}),
    ("set_key_replaces_scalar", {"a": 5}, [(SET, {"payload": {"d": 1}, "key": "a.b"})], {"a": {"b": {"d": 1}}}),
    ("set_key_into_empty_object", {"s": {}}, [(SET, {"payload": {"d": 1}, "key": "s.x"})], {"s": {"x": {"d": 1}}}),
    # delete_payload with paths
    ("delete_nested_key", {"a": {"b": 1}, "c": 2}, [(DEL, {"keys": ["a.b"]})], {"a": {}, "c": 2}),
    ("delete_wildcard_path", {"a": [{"b": 1, "c": 1}, {"b": 2}], "c": 2}, [(DEL, {"keys": ["a[].b"]})],
     {"a": [{"c": 1}, {}], "c": 2}),
    ("delete_array_index_is_a_no_op", {"a": [{"b": 1, "c": 1}, {"b": 2}], "c": 2}, [(DEL, {"keys": ["a[0]"]})],
     {"a": [{"b": 1, "c": 1}, {"b": 2}], "c": 2}),
]


@pytest.mark.parametrize("initial,ops,expected", [c[1:] for c in UPDATE_CORNERS], ids=[c[0] for c in UPDATE_CORNERS])
def test_payload_update_corner_cases_match_qdrant(http, collection, initial, ops, expected):
    name = collection(size=2)
    r = http.put(f"/collections/{name}/points?wait=true",
                 json={"points": [{"id": 1, "vector": [1.0, 0.5], "payload": initial}]})
    assert r.status_code == 200, r.text
    steps = [f"upsert payload {_dump(initial)}"]
    for (method, path), body in ops:
        body = {**body, **P1}
        steps.append(f"{method} /collections/<c>/points/{path} {_dump(body)}")
        r = http.request(method, f"/collections/{name}/points/{path}?wait=true", json=body)
        assert r.status_code == 200, f"{steps[-1]}: {r.status_code} {r.text}"
    got = http.get(f"/collections/{name}/points/1").json()["result"]["payload"]
    assert got == expected, "\n  ".join(steps) + f"\n  Shoal: {_dump(got)}\n  Qdrant: {_dump(expected)}"
