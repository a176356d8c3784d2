//! Payload indexes of one sealed segment, and the query planning that uses them (Qdrant's
//! `StructPayloadIndex`, `estimate_cardinality` and the plain-versus-graph rule of
//! `HNSWIndex::search_with_filter`).
//!
//! For every declared payload index (`PUT /collections/{c}/index`) a segment holds a
//! [`FieldIndex`] over the values at that key:
//!
//! | `field_schema` | structure | answers |
//! | --- | --- | --- |
//! | `keyword`, `uuid` | string value → sorted offsets | `match.value` (string), `match.any` (strings) |
//! | `integer` | integer value → offsets (`lookup`); every number, sorted (`range`) | `match.value` / `match.any` (integers); numeric `range` |
//! | `float` | every number, sorted | numeric `range` |
//! | `bool` | `true` / `false` → offsets | `match.value` (bool) |
//! | `datetime` | every RFC 3339 string as microseconds, sorted | datetime `range` |
//! | `geo` | every geo point, sorted by latitude | `geo_bounding_box`, `geo_radius`, `geo_polygon` (latitude band) |
//! | `text` | token → offsets (prefixes too with the `prefix` tokenizer) | `text`, `text_any`, `phrase` (see `text`) |
//!
//! An index never decides a result on its own. [`PayloadIndex::plan`] turns a filter into a
//! *superset* of the offsets that can match it (the smallest indexed `must` condition, or the
//! union of a `should` whose every condition is indexed), and every candidate is then checked
//! against the whole filter. So an index only changes which points are looked at, never the
//! answer, and each kind above indexes every value its conditions could match (an integer
//! index's range part holds floats too, since a numeric `range` matches them).
//!
//! Payloads of a sealed segment can still change (`set_payload` and friends). The segment
//! keeps the offsets changed since its index was built ([`PayloadIndex::built_at`]); planning
//! adds them to every candidate set, so a point that starts to match is never missed.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::collection_config::PayloadIndexEntry;
use crate::index::filter::{
    AnyVariants, Condition, FieldCondition, Filter, Match, MatchValue, Range, parse_datetime_micros,
};
use crate::index::geo::GeoPoint;
use crate::index::payload_path::JsonPath;
use crate::index::text::{TextParams, TokenMode};
use crate::types::{Payload, PointId};

/// Metres per degree of latitude on the sphere `geo_distance` uses, lowered by 1% so that a
/// latitude band computed from a radius always covers the circle.
const METRES_PER_LAT_DEGREE: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0 * 0.99;

/// The declared payload indexes of a collection, parsed: the key path and what to build there.
/// Declarations whose key does not parse or whose type is unknown are left out (the API refuses
/// both, so they only come from older metadata).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayloadSchema {
    fields: BTreeMap<String, (JsonPath, FieldKind)>,
}

/// What a field index holds, from its declared `field_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// `keyword` or `uuid`: string values.
    Keyword,
    /// `integer`, with its `lookup` and `range` parameters (both `true` unless set `false`).
    Integer {
        lookup: bool,
        range: bool,
    },
    Float,
    Bool,
    Datetime,
    Geo,
    /// Full text, with its tokenizer.
    Text(Arc<TextParams>),
}

impl PayloadSchema {
    pub fn new(entries: &BTreeMap<String, PayloadIndexEntry>) -> PayloadSchema {
        let flag = |entry: &PayloadIndexEntry, name: &str| {
            entry
                .params
                .as_ref()
                .and_then(|p| p.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(true)
        };
        let fields = entries
            .iter()
            .filter_map(|(key, entry)| {
                let path: JsonPath = key.parse().ok()?;
                let kind = match entry.data_type.as_str() {
                    "keyword" | "uuid" => FieldKind::Keyword,
                    "integer" => FieldKind::Integer {
                        lookup: flag(entry, "lookup"),
                        range: flag(entry, "range"),
                    },
                    "float" => FieldKind::Float,
                    "bool" => FieldKind::Bool,
                    "datetime" => FieldKind::Datetime,
                    "geo" => FieldKind::Geo,
                    "text" => {
                        FieldKind::Text(Arc::new(TextParams::from_schema(entry.params.as_ref())))
                    }
                    _ => return None,
                };
                Some((key.clone(), (path, kind)))
            })
            .collect();
        PayloadSchema { fields }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The parameters of the full-text index on `key`, if it has one.
    pub fn text_params(&self, key: &JsonPath) -> Option<Arc<TextParams>> {
        self.fields.values().find_map(|(path, kind)| match kind {
            FieldKind::Text(params) if path == key => Some(Arc::clone(params)),
            _ => None,
        })
    }
}

/// Offsets sorted by a value, in two parallel arrays (binary search touches only `values`).
#[derive(Debug, Default)]
struct Sorted<T> {
    values: Vec<T>,
    offsets: Vec<u32>,
}

impl<T: Copy> Sorted<T> {
    fn build(mut pairs: Vec<(T, u32)>, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Sorted<T> {
        pairs.sort_by(|a, b| cmp(&a.0, &b.0).then(a.1.cmp(&b.1)));
        let (values, offsets) = pairs.into_iter().unzip();
        Sorted { values, offsets }
    }

    /// The offsets whose value lies between the first value not `below` and the first value
    /// `above` (both predicates monotone over the sorted values).
    fn slice(&self, below: impl Fn(&T) -> bool, above: impl Fn(&T) -> bool) -> &[u32] {
        let lo = self.values.partition_point(below);
        let hi = self.values.partition_point(|v| !above(v)).max(lo);
        &self.offsets[lo..hi]
    }
}

/// The index of one payload key in one segment.
#[derive(Debug)]
pub struct FieldIndex {
    kind: FieldKind,
    strings: HashMap<String, Vec<u32>>,
    integers: HashMap<i64, Vec<u32>>,
    bools: [Vec<u32>; 2],
    numbers: Sorted<f64>,
    datetimes: Sorted<i64>,
    /// Latitude → offset (the longitude is checked with the payload).
    latitudes: Sorted<f64>,
    /// Geo points with a latitude outside [-90, 90]: a distance check wraps them around the
    /// pole, so no latitude band can exclude them; they are candidates of every geo condition.
    odd_latitudes: Vec<u32>,
}

/// A [`FieldIndex`] being built: fed one payload at a time, in offset order.
struct FieldIndexBuilder {
    kind: FieldKind,
    strings: HashMap<String, Vec<u32>>,
    integers: HashMap<i64, Vec<u32>>,
    bools: [Vec<u32>; 2],
    numbers: Vec<(f64, u32)>,
    datetimes: Vec<(i64, u32)>,
    latitudes: Vec<(f64, u32)>,
    odd_latitudes: Vec<u32>,
}

impl FieldIndexBuilder {
    fn new(kind: FieldKind) -> FieldIndexBuilder {
        FieldIndexBuilder {
            kind,
            strings: HashMap::new(),
            integers: HashMap::new(),
            bools: Default::default(),
            numbers: Vec::new(),
            datetimes: Vec::new(),
            latitudes: Vec::new(),
            odd_latitudes: Vec::new(),
        }
    }

    /// Indexes the values at `path` of the payload at `offset`.
    fn add(&mut self, path: &JsonPath, offset: u32, payload: &Payload) {
        for value in path.values(payload) {
            match &self.kind {
                FieldKind::Keyword => {
                    if let Some(s) = value.as_str() {
                        push_once(self.strings.entry(s.to_owned()).or_default(), offset);
                    }
                }
                FieldKind::Integer { lookup, range } => {
                    if let (true, Some(n)) = (*lookup, value.as_i64()) {
                        push_once(self.integers.entry(n).or_default(), offset);
                    }
                    if let (true, Some(x)) = (*range, value.as_f64()) {
                        self.numbers.push((x, offset));
                    }
                }
                FieldKind::Float => {
                    if let Some(x) = value.as_f64() {
                        self.numbers.push((x, offset));
                    }
                }
                FieldKind::Bool => {
                    if let Some(b) = value.as_bool() {
                        push_once(&mut self.bools[b as usize], offset);
                    }
                }
                FieldKind::Datetime => {
                    if let Some(micros) = value.as_str().and_then(parse_datetime_micros) {
                        self.datetimes.push((micros, offset));
                    }
                }
                FieldKind::Geo => match GeoPoint::from_value(value) {
                    Some(p) if (-90.0..=90.0).contains(&p.lat) => {
                        self.latitudes.push((p.lat, offset))
                    }
                    Some(_) => push_once(&mut self.odd_latitudes, offset),
                    None => {}
                },
                FieldKind::Text(params) => {
                    if let Some(s) = value.as_str() {
                        for token in params.indexed_tokens(s) {
                            push_once(self.strings.entry(token).or_default(), offset);
                        }
                    }
                }
            }
        }
    }

    fn finish(mut self) -> FieldIndex {
        self.strings.values_mut().for_each(|p| p.shrink_to_fit());
        self.integers.values_mut().for_each(|p| p.shrink_to_fit());
        FieldIndex {
            kind: self.kind,
            strings: self.strings,
            integers: self.integers,
            bools: self.bools,
            numbers: Sorted::build(self.numbers, f64::total_cmp),
            datetimes: Sorted::build(self.datetimes, Ord::cmp),
            latitudes: Sorted::build(self.latitudes, f64::total_cmp),
            odd_latitudes: self.odd_latitudes,
        }
    }
}

impl FieldIndex {
    /// A superset of the offsets where `condition` holds, from this index alone, and whether
    /// it is exactly those offsets (every check but the geo ones, which take a latitude band);
    /// `None` when this index cannot answer the condition.
    fn lookup(&self, condition: &FieldCondition) -> Option<(Vec<Cow<'_, [u32]>>, bool)> {
        // A field condition holds when any of its checks does: every check must be answerable.
        let mut out: Vec<Cow<'_, [u32]>> = Vec::new();
        let mut checks = 0;
        let mut exact = true;
        if let Some(m) = &condition.r#match {
            checks += 1;
            out.extend(self.lookup_match(m)?);
            // Several tokens must meet in one string (or in order): the shortest list is only
            // a superset.
            if let Match::Tokens(t) = m
                && (t.mode == TokenMode::Phrase || (t.mode == TokenMode::All && t.tokens.len() > 1))
            {
                exact = false;
            }
        }
        if let Some(range) = &condition.range {
            checks += 1;
            out.push(Cow::Borrowed(self.lookup_range(range)?));
        }
        let geo = [
            condition
                .geo_bounding_box
                .as_ref()
                .map(|b| (b.bottom_right.lat, b.top_left.lat)),
            condition.geo_radius.as_ref().map(|r| {
                let d = r.radius / METRES_PER_LAT_DEGREE;
                (r.center.lat - d, r.center.lat + d)
            }),
            condition.geo_polygon.as_ref().map(|p| {
                p.exterior
                    .points
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), q| {
                        (lo.min(q.lat), hi.max(q.lat))
                    })
            }),
        ];
        for (lo, hi) in geo.into_iter().flatten() {
            checks += 1;
            exact = false;
            if self.kind != FieldKind::Geo {
                return None;
            }
            out.push(Cow::Borrowed(
                self.latitudes.slice(|v| *v < lo, |v| *v > hi),
            ));
            out.push(Cow::Borrowed(&self.odd_latitudes));
        }
        if condition.values_count.is_some()
            || condition.is_empty.is_some()
            || condition.is_null.is_some()
            || checks == 0
        {
            return None;
        }
        Some((out, exact))
    }

    fn lookup_match(&self, m: &Match) -> Option<Vec<Cow<'_, [u32]>>> {
        if let (Match::Tokens(t), FieldKind::Text(params)) = (m, &self.kind) {
            // Tokens bound to this very index (the shard binds with its schema).
            if t.params != *params {
                return None;
            }
            let posting = |token: &String| {
                Cow::Borrowed(self.strings.get(token).map_or(&[][..], Vec::as_slice))
            };
            return Some(match t.mode {
                TokenMode::Any => t.tokens.iter().map(posting).collect(),
                // Every token must be there: the shortest list holds every match.
                TokenMode::All | TokenMode::Phrase => t
                    .tokens
                    .iter()
                    .map(posting)
                    .min_by_key(|p| p.len())
                    .into_iter()
                    .collect(),
            });
        }
        let keyword = self.kind == FieldKind::Keyword;
        let integer = matches!(self.kind, FieldKind::Integer { lookup: true, .. });
        let strings = |s: &str| Cow::Borrowed(self.strings.get(s).map_or(&[][..], Vec::as_slice));
        let integers = |n: &i64| Cow::Borrowed(self.integers.get(n).map_or(&[][..], Vec::as_slice));
        Some(match m {
            Match::Value {
                value: MatchValue::Keyword(s),
            } if keyword => vec![strings(s)],
            Match::Value {
                value: MatchValue::Integer(n),
            } if integer => vec![integers(n)],
            Match::Value {
                value: MatchValue::Bool(b),
            } if self.kind == FieldKind::Bool => vec![Cow::Borrowed(&self.bools[*b as usize][..])],
            Match::Any {
                any: AnyVariants::Keywords(list),
            } if keyword || list.is_empty() => list.iter().map(|s| strings(s)).collect(),
            Match::Any {
                any: AnyVariants::Integers(list),
            } if integer || list.is_empty() => list.iter().map(integers).collect(),
            _ => return None,
        })
    }

    fn lookup_range(&self, range: &Range) -> Option<&[u32]> {
        match (range, &self.kind) {
            (Range::Numbers(b), FieldKind::Float | FieldKind::Integer { range: true, .. }) => {
                Some(self.numbers.slice(
                    |v| b.gt.is_some_and(|g| *v <= g) || b.gte.is_some_and(|g| *v < g),
                    |v| b.lt.is_some_and(|l| *v >= l) || b.lte.is_some_and(|l| *v > l),
                ))
            }
            (Range::Datetimes(b), FieldKind::Datetime) => {
                let micros =
                    |d: &Option<crate::index::filter::Datetime>| d.as_ref().map(|d| d.micros());
                let (gt, gte, lt, lte) =
                    (micros(&b.gt), micros(&b.gte), micros(&b.lt), micros(&b.lte));
                Some(self.datetimes.slice(
                    |v| gt.is_some_and(|g| *v <= g) || gte.is_some_and(|g| *v < g),
                    |v| lt.is_some_and(|l| *v >= l) || lte.is_some_and(|l| *v > l),
                ))
            }
            _ => None,
        }
    }
}

fn push_once(list: &mut Vec<u32>, offset: u32) {
    if list.last() != Some(&offset) {
        list.push(offset);
    }
}

/// The payload indexes of one segment, built from its payloads at one moment.
#[derive(Debug)]
pub struct PayloadIndex {
    schema: PayloadSchema,
    fields: HashMap<JsonPath, FieldIndex>,
    /// The segment's payload edit counter when the payloads were read: edits numbered after it
    /// are not reflected here.
    pub built_at: u64,
}

/// Candidate offsets for a filter: the lists to merge and an upper bound of their total.
pub struct Plan<'a> {
    lists: Vec<Cow<'a, [u32]>>,
    /// Upper bound of the number of candidates (the lists' total length).
    pub estimate: usize,
    /// Whether the candidates are exactly the offsets whose payload (as indexed) passes the
    /// filter, so that checking them against it again would change nothing.
    pub exact: bool,
}

impl Plan<'_> {
    fn of(lists: Vec<Cow<'_, [u32]>>, exact: bool) -> Plan<'_> {
        let estimate = lists.iter().map(|l| l.len()).sum();
        Plan {
            lists,
            estimate,
            exact,
        }
    }

    /// The candidate offsets of a segment of `len` offsets.
    pub fn candidates(&self, len: usize) -> OffsetSet {
        let mut set = OffsetSet::new(len);
        for &o in self.lists.iter().flat_map(|l| l.iter()) {
            set.insert(o);
        }
        set
    }
}

/// A set of a segment's offsets, one bit each (64 to a word).
pub struct OffsetSet {
    words: Vec<u64>,
}

impl OffsetSet {
    /// The empty set over offsets `0..len`.
    pub fn new(len: usize) -> OffsetSet {
        OffsetSet {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Adds `o` (an offset past the end is ignored).
    pub fn insert(&mut self, o: u32) {
        if let Some(word) = self.words.get_mut(o as usize / 64) {
            *word |= 1 << (o % 64);
        }
    }

    pub fn contains(&self, o: u32) -> bool {
        self.words
            .get(o as usize / 64)
            .is_some_and(|w| w >> (o % 64) & 1 == 1)
    }

    /// The members, in offset order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    i as u32 * 64 + bit
                })
            })
        })
    }
}

impl PayloadIndex {
    /// Indexes the payloads of `points` (offset, payload) for every field of `schema`.
    /// `built_at` is the segment's payload edit counter read under the same lock.
    /// Each payload is read once for all fields (a payload read from a segment file is
    /// parsed once).
    pub fn build<P: std::borrow::Borrow<Payload>>(
        schema: &PayloadSchema,
        points: impl Iterator<Item = (u32, P)>,
        built_at: u64,
    ) -> PayloadIndex {
        let mut builders: Vec<(&JsonPath, FieldIndexBuilder)> = schema
            .fields
            .values()
            .map(|(path, kind)| (path, FieldIndexBuilder::new(kind.clone())))
            .collect();
        for (offset, payload) in points {
            for (path, builder) in &mut builders {
                builder.add(path, offset, payload.borrow());
            }
        }
        let fields = builders
            .into_iter()
            .map(|(path, builder)| (path.clone(), builder.finish()))
            .collect();
        PayloadIndex {
            schema: schema.clone(),
            fields,
            built_at,
        }
    }

    /// The schema this index was built for.
    pub fn schema(&self) -> &PayloadSchema {
        &self.schema
    }

    /// A superset of the offsets that can pass `filter`, from its indexed conditions: the
    /// smallest of the `must` conditions, the `should` list (if every one is indexed) and the
    /// `min_should` list (likewise). `has_id` gives the offsets of the listed ids in this
    /// segment. `None` when no part of the filter is indexed: only a scan can tell.
    pub fn plan<'a>(
        &'a self,
        filter: &Filter,
        has_id: &dyn Fn(&[PointId]) -> Vec<u32>,
    ) -> Option<Plan<'a>> {
        let mut best: Option<Plan<'a>> = None;
        // The plan stays exact only when its part is the filter's only constraint.
        let parts = filter.must.as_ref().map_or(0, Vec::len)
            + usize::from(filter.should.is_some())
            + usize::from(filter.min_should.is_some())
            + usize::from(filter.must_not.as_ref().is_some_and(|m| !m.is_empty()));
        let mut consider = |plan: Option<Plan<'a>>| {
            if let Some(mut plan) = plan
                && best.as_ref().is_none_or(|b| plan.estimate < b.estimate)
            {
                plan.exact &= parts == 1;
                best = Some(plan);
            }
        };
        for condition in filter.must.iter().flatten() {
            consider(self.plan_condition(condition, has_id));
        }
        if let Some(should) = &filter.should {
            consider(self.plan_union(should, has_id));
        }
        if let Some(min_should) = filter.min_should.as_ref().filter(|m| m.min_count > 0) {
            // The union holds every point that passes one condition: exactly the passing
            // points only when one is enough.
            let union = self.plan_union(&min_should.conditions, has_id);
            consider(union.map(|mut plan| {
                plan.exact &= min_should.min_count == 1;
                plan
            }));
        }
        best
    }

    /// Any of `conditions`: the union of their candidates, if each has some.
    fn plan_union<'a>(
        &'a self,
        conditions: &[Condition],
        has_id: &dyn Fn(&[PointId]) -> Vec<u32>,
    ) -> Option<Plan<'a>> {
        let mut lists = Vec::new();
        let mut exact = true;
        for condition in conditions {
            let plan = self.plan_condition(condition, has_id)?;
            exact &= plan.exact;
            lists.extend(plan.lists);
        }
        Some(Plan::of(lists, exact))
    }

    fn plan_condition<'a>(
        &'a self,
        condition: &Condition,
        has_id: &dyn Fn(&[PointId]) -> Vec<u32>,
    ) -> Option<Plan<'a>> {
        match condition {
            Condition::Field(field) => {
                let (lists, exact) = self.fields.get(&field.key)?.lookup(field)?;
                Some(Plan::of(lists, exact))
            }
            Condition::HasId(ids) => Some(Plan::of(vec![Cow::Owned(has_id(ids.ids()))], true)),
            Condition::Filter(inner) => self.plan(inner, has_id),
            Condition::IsEmpty(_)
            | Condition::IsNull(_)
            | Condition::Nested(_)
            | Condition::HasVector(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema(entries: Value) -> PayloadSchema {
        let entries: BTreeMap<String, PayloadIndexEntry> = entries
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), PayloadIndexEntry::of_schema(v)))
            .collect();
        PayloadSchema::new(&entries)
    }

    fn payload(v: Value) -> Payload {
        v.as_object().unwrap().clone()
    }

    fn filter(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    fn no_ids(_: &[PointId]) -> Vec<u32> {
        Vec::new()
    }

    #[test]
    fn plans_take_the_smallest_indexed_must_condition_and_ignore_the_rest() {
        let payloads: Vec<Payload> = (0..100)
            .map(|i| {
                payload(json!({
                    "color": if i % 10 == 0 { "red" } else { "blue" },
                    "n": i,
                    "tags": ["a", format!("t{}", i % 3)],
                    "loose": i,
                }))
            })
            .collect();
        let schema = schema(json!({"color": "keyword", "n": "integer", "tags": "keyword"}));
        let index = PayloadIndex::build(
            &schema,
            payloads.iter().enumerate().map(|(o, p)| (o as u32, p)),
            0,
        );
        let plan = |f: Value| {
            index
                .plan(&filter(f), &no_ids)
                .map(|p| p.candidates(payloads.len()).iter().collect::<Vec<u32>>())
        };
        let red: Vec<u32> = (0..100).step_by(10).collect();
        assert_eq!(
            plan(json!({"must": [{"key": "color", "match": {"value": "red"}}]})),
            Some(red.clone())
        );
        // The range holds 50 points, `red` 10: the smaller one is the plan.
        assert_eq!(
            plan(json!({"must": [
                {"key": "n", "range": {"gte": 50}},
                {"key": "color", "match": {"value": "red"}},
                {"key": "loose", "match": {"value": 3}}
            ]})),
            Some(red)
        );
        assert_eq!(
            plan(json!({"must": [{"key": "n", "range": {"gt": 10, "lte": 12.5}}]})),
            Some(vec![11, 12])
        );
        // Array values: each element is indexed.
        assert_eq!(
            plan(json!({"must": [{"key": "tags", "match": {"any": ["t1"]}}]})).map(|o| o.len()),
            Some(33)
        );
        // Unindexed keys, text on a keyword index, `must_not` only: no plan.
        assert_eq!(
            plan(json!({"must": [{"key": "loose", "match": {"value": 3}}]})),
            None
        );
        assert_eq!(
            plan(json!({"must": [{"key": "color", "match": {"text": "re"}}]})),
            None
        );
        assert_eq!(
            plan(json!({"must_not": [{"key": "color", "match": {"value": "red"}}]})),
            None
        );
        // `should` needs every condition indexed.
        assert_eq!(
            plan(json!({"should": [
                {"key": "n", "match": {"value": 1}},
                {"key": "n", "match": {"value": 2}}
            ]})),
            Some(vec![1, 2])
        );
        assert_eq!(
            plan(json!({"should": [
                {"key": "n", "match": {"value": 1}},
                {"key": "loose", "match": {"value": 2}}
            ]})),
            None
        );
    }

    #[test]
    fn min_should_of_two_is_not_exact_and_odd_latitudes_stay_candidates() {
        let payloads: Vec<Payload> = vec![
            payload(json!({"color": "red", "n": 1, "place": {"lat": 92.0, "lon": 0.0}})),
            payload(json!({"color": "red", "n": 2, "place": {"lat": 10.0, "lon": 0.0}})),
        ];
        let schema = schema(json!({"color": "keyword", "n": "integer", "place": "geo"}));
        let index = PayloadIndex::build(
            &schema,
            payloads.iter().enumerate().map(|(o, p)| (o as u32, p)),
            0,
        );
        let two = filter(json!({"min_should": {"conditions": [
            {"key": "color", "match": {"value": "red"}},
            {"key": "n", "match": {"value": 2}}
        ], "min_count": 2}}));
        let plan = index.plan(&two, &no_ids).unwrap();
        assert!(!plan.exact, "point 0 passes one of the two conditions only");
        assert!(!two.check(PointId::Num(0), &payloads[0]));
        // Haversine reads latitude 92 at longitude 0 as 88 at longitude 180.
        let near = filter(json!({"must": [{"key": "place", "geo_radius": {
            "center": {"lat": 88.0, "lon": 180.0}, "radius": 1000.0}}]}));
        assert!(near.check(PointId::Num(0), &payloads[0]));
        let plan = index.plan(&near, &no_ids).unwrap();
        assert_eq!(plan.candidates(2).iter().collect::<Vec<u32>>(), vec![0]);
    }

    /// What a filter condition generator draws from.
    fn arb_condition() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec!["k", "i", "f", "b", "d", "g", "u"]);
        let word = prop::sample::select(vec!["x", "y", "z", "0"]);
        prop_oneof![
            (keys.clone(), word.clone()).prop_map(|(k, w)| json!({"key": k, "match": {"value": w}})),
            (keys.clone(), -3i64..4).prop_map(|(k, n)| json!({"key": k, "match": {"value": n}})),
            (keys.clone(), any::<bool>()).prop_map(|(k, b)| json!({"key": k, "match": {"value": b}})),
            (keys.clone(), prop::collection::vec(word, 0..3))
                .prop_map(|(k, w)| json!({"key": k, "match": {"any": w}})),
            (keys.clone(), prop::collection::vec(-3i64..4, 0..3))
                .prop_map(|(k, n)| json!({"key": k, "match": {"any": n}})),
            (keys.clone(), -4.0f64..4.0, -4.0f64..4.0, any::<bool>()).prop_map(|(k, a, b, strict)| {
                if strict {
                    json!({"key": k, "range": {"gt": a, "lt": b}})
                } else {
                    json!({"key": k, "range": {"gte": a, "lte": b}})
                }
            }),
            (keys.clone(), 0u32..4, 0u32..4).prop_map(|(k, a, b)| json!({
                "key": k,
                "range": {"gte": format!("2024-01-0{}T00:00:00Z", a + 1), "lt": format!("2024-01-0{}", b + 1)}
            })),
            (keys.clone(), -3.0f64..3.0, 0.0f64..3.0).prop_map(|(k, lat, r)| json!({
                "key": k,
                "geo_radius": {"center": {"lon": 0.0, "lat": lat}, "radius": r * 111_000.0}
            })),
            (keys.clone(), 80.0f64..90.0, 0.0f64..2e6).prop_map(|(k, lat, r)| json!({
                "key": k,
                "geo_radius": {"center": {"lon": 0.0, "lat": lat}, "radius": r}
            })),
            (keys, -3.0f64..3.0, 0.0f64..3.0).prop_map(|(k, lat, h)| json!({
                "key": k,
                "geo_bounding_box": {
                    "top_left": {"lon": -2.0, "lat": lat + h},
                    "bottom_right": {"lon": 2.0, "lat": lat}
                }
            })),
            (0u64..40).prop_map(|n| json!({"has_id": [n, n + 1]})),
            (
                prop::sample::select(vec!["k", "u"]),
                prop::sample::select(vec!["text", "text_any", "phrase"]),
                prop::sample::select(vec!["x", "X y", "y x", "x0", "", "2024"]),
            )
                .prop_map(|(k, kind, q)| json!({"key": k, "match": {kind: q}})),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            prop::sample::select(vec![
                "x",
                "y",
                "z",
                "0",
                "2024-01-02T12:00:00Z",
                "2024-01-03",
                "x y",
                "Y X z",
                "x0 y",
            ])
            .prop_map(|s| json!(s)),
            (-3i64..4).prop_map(|n| json!(n)),
            (-4.0f64..4.0).prop_map(|x| json!(x)),
            any::<bool>().prop_map(|b| json!(b)),
            (-3.0f64..3.0, -3.0f64..3.0).prop_map(|(lat, lon)| json!({"lat": lat, "lon": lon})),
            // Off the sphere: a distance check wraps it around the pole.
            (prop::sample::select(vec![92.0, -95.0]), -3.0f64..3.0)
                .prop_map(|(lat, lon)| json!({"lat": lat, "lon": lon})),
            Just(Value::Null),
        ];
        prop_oneof![
            3 => leaf.clone(),
            1 => prop::collection::vec(leaf, 0..3).prop_map(Value::Array),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The property every use rests on: whatever the payloads, schema and filter, a plan
        /// holds every offset that passes the filter.
        #[test]
        fn a_plan_never_leaves_out_a_matching_point(
            values in prop::collection::vec(
                prop::collection::btree_map(
                    prop::sample::select(vec!["k", "i", "f", "b", "d", "g", "u"]),
                    arb_value(),
                    0..5,
                ),
                0..40,
            ),
            kinds in prop::collection::vec(
                prop::sample::select(vec![
                    json!("keyword"), json!("integer"), json!("float"), json!("bool"),
                    json!("datetime"), json!("geo"), json!("uuid"), json!("text"),
                    json!({"type": "integer", "lookup": false}),
                    json!({"type": "integer", "range": false}),
                    json!({"type": "text", "tokenizer": "prefix", "phrase_matching": true}),
                    json!({"type": "text", "tokenizer": "whitespace", "lowercase": false}),
                    json!({"type": "text", "tokenizer": "prefix", "max_token_len": 1}),
                    json!({"type": "text", "min_token_len": 2}),
                ]),
                7,
            ),
            must in prop::collection::vec(arb_condition(), 0..3),
            should in prop::option::of(prop::collection::vec(arb_condition(), 0..3)),
            min_should in prop::option::of((prop::collection::vec(arb_condition(), 0..3), 0usize..4)),
        ) {
            let keys = ["k", "i", "f", "b", "d", "g", "u"];
            let schema = schema(Value::Object(
                keys.iter().zip(kinds).map(|(k, t)| (k.to_string(), t)).collect(),
            ));
            let payloads: Vec<Payload> = values
                .into_iter()
                .map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                .collect();
            let index = PayloadIndex::build(
                &schema,
                payloads.iter().enumerate().map(|(o, p)| (o as u32, p)),
                0,
            );
            let mut f = json!({"must": must});
            if let Some(should) = should {
                f["should"] = json!(should);
            }
            if let Some((conditions, min_count)) = min_should {
                f["min_should"] = json!({"conditions": conditions, "min_count": min_count});
            }
            // Text conditions on text-indexed keys are tokenized first, as a shard does.
            let f = filter(f);
            let f = f.bind_text(&|key| schema.text_params(key)).into_owned();
            let has_id = |ids: &[PointId]| -> Vec<u32> {
                ids.iter()
                    .filter_map(|id| match id {
                        PointId::Num(n) if (*n as usize) < payloads.len() => Some(*n as u32),
                        _ => None,
                    })
                    .collect()
            };
            if let Some(plan) = index.plan(&f, &has_id) {
                let mut candidates: Vec<u32> =
                    plan.lists.iter().flat_map(|l| l.iter().copied()).collect();
                candidates.sort_unstable();
                candidates.dedup();
                prop_assert!(candidates.len() <= plan.estimate);
                let bits = plan.candidates(payloads.len());
                for (o, p) in payloads.iter().enumerate() {
                    let candidate = candidates.binary_search(&(o as u32)).is_ok();
                    prop_assert_eq!(candidate, bits.contains(o as u32));
                    if f.check(PointId::Num(o as u64), p) {
                        prop_assert!(candidate, "offset {} passes {} but is not a candidate", o, f);
                    } else {
                        prop_assert!(
                            !(candidate && plan.exact),
                            "offset {} fails {} but is a candidate of an exact plan", o, f
                        );
                    }
                }
            }
        }
    }
}
