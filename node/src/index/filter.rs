//! Qdrant's payload filters: the JSON shapes the API accepts (`must` / `should` / `must_not` /
//! `min_should` over field, `is_empty`, `is_null`, `has_id` and `nested` conditions) and their
//! evaluation against one point's id and payload.
//!
//! This module owns parsing, semantic validation and brute-force evaluation only. It does not
//! know about payload indexes or storage: a caller that has an index may use it to pre-select
//! points, but the answer for a point is always the one [`Filter::check`] gives.
//!
//! Semantics, as Qdrant defines them (see the tests for each):
//! - `must`: all match; `must_not`: none matches; `should`: at least one matches (an absent
//!   `should` does not constrain, an empty one matches nothing, as in Qdrant's condition
//!   checker); `min_should`: at least `min_count` of its conditions
//!   match (so an empty list with `min_count > 0` matches nothing).
//! - A field condition matches when any value at its key matches (arrays at the end of the path
//!   count element by element). A missing key matches nothing — not even `except` or a
//!   `values_count` bound — except for the `is_empty` / `is_null` forms.
//! - `match.value`: same JSON type and equal value (an integer never matches a float payload,
//!   even `1.0`). `text` / `phrase`: case-sensitive substring. `text_any`: any whitespace-separated
//!   token is a substring. `except`: some value is not in the list; `null` values never match,
//!   values of another type (a bool, a float, a string against integers) always do.
//! - `range`: numeric payload values (integers and floats); with datetime bounds, RFC 3339-like
//!   string payload values.
//! - `values_count`: each value the path reaches counts on its own (array length, 0 for null,
//!   else 1; never summed across `a[].b`); the condition holds if one value's count satisfies
//!   every bound.
//! - `is_empty`: every value at the key is null or `[]` (a missing key is empty; `[null]` is not).
//!   `is_null`: some value at the key is exactly `null` (`[null]` is not null, a missing key is
//!   not null). The field-condition forms `{"key": k, "is_empty": b}` / `{"key": k, "is_null": b}`
//!   mean "`is_empty` / `is_null` holds" when `b` is true and its negation when false.
//! - `nested`: some object element of the array at `key` satisfies the inner filter, whose keys
//!   are relative to that element. `has_id` inside `nested` is rejected by [`Filter::validate`].
//! - A field condition with several of `match` / `range` / `values_count` / `is_empty` /
//!   `is_null` matches when any of them does (Qdrant accepts such conditions and ORs them).

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use serde_json::Value;

use crate::index::geo::{GeoBoundingBox, GeoPoint, GeoPolygon, GeoRadius};
use crate::index::payload_path::JsonPath;
use crate::index::text::{TextParams, TokenMatch, TokenMode};
use crate::types::{Payload, PointId};

/// A Qdrant filter. Every part is optional; the empty filter matches every point.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// At least one of these must match (no constraint when absent or empty).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub should: Option<Vec<Condition>>,
    /// At least `min_count` of these must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_should: Option<MinShould>,
    /// All of these must match.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub must: Option<Vec<Condition>>,
    /// None of these may match.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub must_not: Option<Vec<Condition>>,
}

/// `min_should`: at least `min_count` of `conditions` must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinShould {
    pub conditions: Vec<Condition>,
    pub min_count: usize,
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Condition {
    /// `{"key": ..., "match" | "range" | "values_count" | "is_empty" | "is_null": ...}`
    Field(FieldCondition),
    /// `{"is_empty": {"key": ...}}`
    IsEmpty(IsEmptyCondition),
    /// `{"is_null": {"key": ...}}`
    IsNull(IsNullCondition),
    /// `{"has_id": [...]}`
    HasId(HasIdCondition),
    /// `{"nested": {"key": ..., "filter": {...}}}`
    Nested(NestedCondition),
    /// `{"has_vector": "name"}`: the point has the named vector (`""` for the unnamed one).
    HasVector(HasVectorCondition),
    /// A filter used as a condition, e.g. `{"must": [...]}`; `{}` matches everything.
    Filter(Filter),
}

/// `{"key": "a.b", ...}`: conditions on the values at a payload path. Deserialisation guarantees
/// at least one of the checks is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFieldCondition")]
pub struct FieldCondition {
    pub key: JsonPath,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub r#match: Option<Match>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_count: Option<ValuesCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_empty: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_null: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_bounding_box: Option<Box<GeoBoundingBox>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_radius: Option<Box<GeoRadius>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_polygon: Option<Box<GeoPolygon>>,
}

/// The wire form of [`FieldCondition`], checked before it becomes one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldCondition {
    key: JsonPath,
    #[serde(default, rename = "match")]
    r#match: Option<Match>,
    #[serde(default)]
    range: Option<Range>,
    #[serde(default)]
    values_count: Option<ValuesCount>,
    #[serde(default)]
    is_empty: Option<bool>,
    #[serde(default)]
    is_null: Option<bool>,
    #[serde(default)]
    geo_bounding_box: Option<GeoBoundingBox>,
    #[serde(default)]
    geo_radius: Option<GeoRadius>,
    #[serde(default)]
    geo_polygon: Option<GeoPolygon>,
}

impl TryFrom<RawFieldCondition> for FieldCondition {
    type Error = String;

    fn try_from(raw: RawFieldCondition) -> Result<Self, String> {
        if let Some(g) = &raw.geo_bounding_box {
            g.validate()?;
        }
        if let Some(g) = &raw.geo_radius {
            g.validate()?;
        }
        if let Some(g) = &raw.geo_polygon {
            g.validate()?;
        }
        let condition = FieldCondition {
            geo_bounding_box: raw.geo_bounding_box.map(Box::new),
            geo_radius: raw.geo_radius.map(Box::new),
            geo_polygon: raw.geo_polygon.map(Box::new),
            key: raw.key,
            r#match: raw.r#match,
            range: raw.range,
            values_count: raw.values_count,
            is_empty: raw.is_empty,
            is_null: raw.is_null,
        };
        if !condition.has_check() {
            return Err(format!(
                "the condition on key `{}` checks nothing: give one of `match`, `range`, \
                 `values_count`, `is_empty` or `is_null`",
                condition.key
            ));
        }
        Ok(condition)
    }
}

/// `{"is_empty": {"key": ...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsEmptyCondition {
    pub is_empty: PayloadField,
}

/// `{"is_null": {"key": ...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsNullCondition {
    pub is_null: PayloadField,
}

/// `{"key": ...}` inside `is_empty` / `is_null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadField {
    pub key: JsonPath,
}

/// `{"has_id": [...]}`. The ids are kept sorted and deduplicated so membership is a binary
/// search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HasIdCondition {
    #[serde(deserialize_with = "sorted_ids")]
    has_id: Vec<PointId>,
}

impl HasIdCondition {
    pub fn new(ids: impl IntoIterator<Item = PointId>) -> Self {
        let mut has_id: Vec<PointId> = ids.into_iter().collect();
        has_id.sort_unstable();
        has_id.dedup();
        HasIdCondition { has_id }
    }

    pub fn ids(&self) -> &[PointId] {
        &self.has_id
    }

    pub fn contains(&self, id: PointId) -> bool {
        self.has_id.binary_search(&id).is_ok()
    }
}

fn sorted_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PointId>, D::Error> {
    Vec::<PointId>::deserialize(deserializer).map(|ids| HasIdCondition::new(ids).has_id)
}

/// `{"has_vector": "name"}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HasVectorCondition {
    pub has_vector: String,
}

/// `{"nested": {"key": ..., "filter": {...}}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NestedCondition {
    pub nested: Nested,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nested {
    pub key: JsonPath,
    pub filter: Filter,
}

/// The `match` of a field condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Match {
    /// `{"value": v}`: exact match of a string, integer or bool.
    Value { value: MatchValue },
    /// `{"text": t}`: the string contains `t`.
    Text { text: String },
    /// `{"text_any": t}`: the string contains one of the whitespace-separated tokens of `t`.
    TextAny { text_any: String },
    /// `{"phrase": t}`: the string contains `t` (no full-text index, so no tokenising).
    Phrase { phrase: String },
    /// `{"any": [...]}`: the value is one of the list.
    Any { any: AnyVariants },
    /// `{"except": [...]}`: the value is none of the list.
    Except { except: AnyVariants },
    /// `text`, `text_any` or `phrase` on a key with a full-text index, tokenized by it: never
    /// read from a request, only made by [`Filter::bind_text`] inside a shard.
    #[serde(skip)]
    Tokens(TokenMatch),
}

/// The value of `match.value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MatchValue {
    Keyword(String),
    Integer(i64),
    Bool(bool),
}

/// The list of `match.any` / `match.except`: all strings or all integers, kept sorted and
/// deduplicated. An empty list is read as an empty list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AnyVariants {
    Keywords(Vec<String>),
    Integers(Vec<i64>),
}

impl AnyVariants {
    fn contains_keyword(&self, s: &str) -> bool {
        match self {
            AnyVariants::Keywords(list) => list.binary_search_by(|k| k.as_str().cmp(s)).is_ok(),
            AnyVariants::Integers(_) => false,
        }
    }

    fn contains_integer(&self, n: i64) -> bool {
        match self {
            AnyVariants::Integers(list) => list.binary_search(&n).is_ok(),
            AnyVariants::Keywords(_) => false,
        }
    }
}

/// A `range`: numeric bounds or datetime bounds (never mixed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Range {
    Numbers(Bounds<f64>),
    Datetimes(Bounds<Datetime>),
}

/// `gt` / `gte` / `lt` / `lte`, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds<T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gte: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lte: Option<T>,
}

impl<T: PartialOrd> Bounds<T> {
    pub fn contains(&self, x: &T) -> bool {
        self.gt.as_ref().is_none_or(|b| x > b)
            && self.gte.as_ref().is_none_or(|b| x >= b)
            && self.lt.as_ref().is_none_or(|b| x < b)
            && self.lte.as_ref().is_none_or(|b| x <= b)
    }
}

/// `values_count`: bounds on the number of values at a key.
pub type ValuesCount = Bounds<usize>;

/// A point in time, as microseconds since the Unix epoch (UTC). Keeps the text it was read from
/// so that a filter serialises back the way the user wrote it.
#[derive(Debug, Clone)]
pub struct Datetime {
    micros: i64,
    text: String,
}

impl Datetime {
    pub fn micros(&self) -> i64 {
        self.micros
    }
}

impl PartialEq for Datetime {
    fn eq(&self, other: &Self) -> bool {
        self.micros == other.micros
    }
}

impl PartialOrd for Datetime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.micros.partial_cmp(&other.micros)
    }
}

impl std::str::FromStr for Datetime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_datetime_micros(text)
            .map(|micros| Datetime {
                micros,
                text: text.to_string(),
            })
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a datetime: expected RFC 3339, like `2023-02-08T10:49:00Z`, \
                     `2023-02-08 10:49:00+01:00` or `2023-02-08`"
                )
            })
    }
}

impl Serialize for Datetime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Datetime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialisation. Qdrant's shapes are untagged unions; serde's own untagged errors only say
// "did not match any variant", so each union is read as JSON first and dispatched on its fields,
// which lets the error name the condition and the field that was wrong.
// ---------------------------------------------------------------------------------------------

fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Condition>>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                parse_condition(item).map_err(|e| D::Error::custom(format!("condition {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        single => parse_condition(single)
            .map(|c| Some(vec![c]))
            .map_err(D::Error::custom),
    }
}

fn parse_condition(value: Value) -> Result<Condition, String> {
    let Value::Object(map) = value else {
        return Err(format!("expected a condition object, got `{value}`"));
    };
    fn read<T: for<'a> Deserialize<'a>>(map: Payload, what: &str) -> Result<T, String> {
        serde_json::from_value(Value::Object(map)).map_err(|e| format!("invalid {what}: {e}"))
    }
    if map.contains_key("key") {
        return read(map, "field condition").map(Condition::Field);
    }
    if map.contains_key("is_empty") {
        return read(map, "`is_empty` condition").map(Condition::IsEmpty);
    }
    if map.contains_key("is_null") {
        return read(map, "`is_null` condition").map(Condition::IsNull);
    }
    if map.contains_key("has_id") {
        return read(map, "`has_id` condition").map(Condition::HasId);
    }
    if map.contains_key("nested") {
        return read(map, "`nested` condition").map(Condition::Nested);
    }
    if map.contains_key("has_vector") {
        return read(map, "`has_vector` condition").map(Condition::HasVector);
    }
    if map
        .keys()
        .all(|k| matches!(k.as_str(), "must" | "should" | "must_not" | "min_should"))
    {
        return read(map, "nested filter").map(Condition::Filter);
    }
    let fields: Vec<&str> = map.keys().map(String::as_str).collect();
    Err(format!(
        "unknown condition with fields {fields:?}: expected a field condition (`key` with \
         `match`, `range` or `values_count`), `is_empty`, `is_null`, `has_id`, `nested`, or a \
         filter (`must`, `should`, `must_not`, `min_should`)"
    ))
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_condition(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Match {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Payload::deserialize(deserializer)?;
        let mut entries = map.into_iter();
        let (Some((kind, value)), None) = (entries.next(), entries.next()) else {
            return Err(D::Error::custom(
                "`match` needs exactly one of `value`, `text`, `text_any`, `phrase`, `any` or `except`",
            ));
        };
        let string = |value: Value| match value {
            Value::String(s) => Ok(s),
            other => Err(D::Error::custom(format!(
                "`match.{kind}` must be a string, got `{other}`"
            ))),
        };
        Ok(match kind.as_str() {
            "value" => Match::Value {
                value: parse_match_value(value).map_err(D::Error::custom)?,
            },
            "text" => Match::Text {
                text: string(value)?,
            },
            "text_any" => Match::TextAny {
                text_any: string(value)?,
            },
            "phrase" => Match::Phrase {
                phrase: string(value)?,
            },
            "any" => Match::Any {
                any: parse_any_variants(value, "any").map_err(D::Error::custom)?,
            },
            "except" => Match::Except {
                except: parse_any_variants(value, "except").map_err(D::Error::custom)?,
            },
            other => {
                return Err(D::Error::custom(format!(
                    "unknown `match` kind `{other}`: expected `value`, `text`, `text_any`, `phrase`, `any` or `except`"
                )));
            }
        })
    }
}

fn parse_match_value(value: Value) -> Result<MatchValue, String> {
    match value {
        Value::String(s) => return Ok(MatchValue::Keyword(s)),
        Value::Bool(b) => return Ok(MatchValue::Bool(b)),
        Value::Number(ref n) => {
            if let Some(n) = n.as_i64() {
                return Ok(MatchValue::Integer(n));
            }
        }
        _ => {}
    }
    Err(format!(
        "`match.value` must be a string, a 64-bit integer or a boolean, got `{value}` (use \
         `range` for floats)"
    ))
}

impl<'de> Deserialize<'de> for MatchValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_match_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

fn parse_any_variants(value: Value, kind: &str) -> Result<AnyVariants, String> {
    let err =
        || format!("`match.{kind}` must be an array of strings or an array of 64-bit integers");
    let Value::Array(items) = value else {
        return Err(err());
    };
    if items.first().is_some_and(Value::is_number) {
        let mut list = items
            .iter()
            .map(Value::as_i64)
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(err)?;
        list.sort_unstable();
        list.dedup();
        Ok(AnyVariants::Integers(list))
    } else {
        let mut list = items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(err)?;
        list.sort_unstable();
        list.dedup();
        Ok(AnyVariants::Keywords(list))
    }
}

impl<'de> Deserialize<'de> for AnyVariants {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_any_variants(Value::deserialize(deserializer)?, "any").map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Payload::deserialize(deserializer)?;
        let has_strings = map.values().any(Value::is_string);
        let result = if has_strings {
            serde_json::from_value(Value::Object(map)).map(Range::Datetimes)
        } else {
            serde_json::from_value(Value::Object(map)).map(Range::Numbers)
        };
        result.map_err(|e| {
            D::Error::custom(format!(
                "invalid `range` ({e}): bounds `gt`, `gte`, `lt`, `lte` must all be numbers or all be datetimes"
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation. Runs once per point in a brute-force scan, so it walks the payload in place and
// allocates nothing.
// ---------------------------------------------------------------------------------------------

/// Which vectors a point has, for `has_vector`.
pub type HasVector<'a> = &'a dyn Fn(&str) -> bool;

/// For points that have no vectors (and filters inside `nested`, which see array elements).
fn no_vectors(_: &str) -> bool {
    false
}

impl Filter {
    /// Whether the point with this id, payload and vectors passes the filter.
    pub fn check_point(&self, id: PointId, payload: &Payload, has_vector: HasVector<'_>) -> bool {
        self.check_with(Some(id), payload, has_vector)
    }

    /// Whether a point with this id and payload, and no vectors, passes the filter.
    pub fn check(&self, id: PointId, payload: &Payload) -> bool {
        self.check_with(Some(id), payload, &no_vectors)
    }

    /// `id` is `None` inside `nested`, where there is no point id to compare with.
    fn check_with(
        &self,
        id: Option<PointId>,
        payload: &Payload,
        has_vector: HasVector<'_>,
    ) -> bool {
        let holds = |c: &Condition| c.check_with(id, payload, has_vector);
        self.must.as_deref().is_none_or(|cs| cs.iter().all(holds))
            && self
                .must_not
                .as_deref()
                .is_none_or(|cs| !cs.iter().any(holds))
            && self.should.as_deref().is_none_or(|cs| cs.iter().any(holds))
            && self.min_should.as_ref().is_none_or(|m| {
                m.min_count == 0
                    || m.conditions
                        .iter()
                        .filter(|c| holds(c))
                        .take(m.min_count)
                        .count()
                        == m.min_count
            })
    }

    /// The filter with its `text`, `text_any` and `phrase` conditions on keys that have a
    /// full-text index (`text_index` gives its parameters) tokenized as that index does, as
    /// Qdrant matches them. `phrase` is bound only where the index has `phrase_matching`.
    /// Conditions inside `nested` keep the unindexed semantics. Borrowed, without a copy, when
    /// no condition changes (every read checks this, most filters have no text condition).
    pub fn bind_text(
        &self,
        text_index: &dyn Fn(&JsonPath) -> Option<Arc<TextParams>>,
    ) -> std::borrow::Cow<'_, Filter> {
        if !self.any_field(&|field| bound_text(field, text_index).is_some()) {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut bound = self.clone();
        bound.bind_text_in_place(text_index);
        std::borrow::Cow::Owned(bound)
    }

    /// The four condition lists, for walks over every condition.
    fn lists_mut(&mut self) -> [Option<&mut Vec<Condition>>; 4] {
        [
            self.must.as_mut(),
            self.should.as_mut(),
            self.must_not.as_mut(),
            self.min_should.as_mut().map(|m| &mut m.conditions),
        ]
    }

    /// Whether some field condition, here or in a filter used as a condition (not inside
    /// `nested`), satisfies `pred`.
    fn any_field(&self, pred: &dyn Fn(&FieldCondition) -> bool) -> bool {
        let lists = [
            self.must.as_ref(),
            self.should.as_ref(),
            self.must_not.as_ref(),
            self.min_should.as_ref().map(|m| &m.conditions),
        ];
        lists.into_iter().flatten().flatten().any(|c| match c {
            Condition::Field(field) => pred(field),
            Condition::Filter(inner) => inner.any_field(pred),
            _ => false,
        })
    }

    fn bind_text_in_place(&mut self, text_index: &dyn Fn(&JsonPath) -> Option<Arc<TextParams>>) {
        for condition in self.lists_mut().into_iter().flatten().flatten() {
            match condition {
                Condition::Field(field) => {
                    if let Some(bound) = bound_text(field, text_index) {
                        field.r#match = Some(bound);
                    }
                }
                Condition::Filter(inner) => inner.bind_text_in_place(text_index),
                _ => {}
            }
        }
    }

    /// Semantic checks that the JSON shape cannot express. Call after deserialising a request;
    /// the error says where the problem is and is meant for an HTTP 400 body.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_in(None)
    }

    fn validate_in(&self, nested_key: Option<&JsonPath>) -> Result<(), String> {
        let parts = [
            ("must", self.must.as_deref()),
            ("should", self.should.as_deref()),
            ("must_not", self.must_not.as_deref()),
        ];
        for (name, conditions) in parts {
            for (i, condition) in conditions.unwrap_or_default().iter().enumerate() {
                condition
                    .validate_in(nested_key)
                    .map_err(|e| format!("`{name}` condition {i}: {e}"))?;
            }
        }
        if let Some(min_should) = &self.min_should {
            for (i, condition) in min_should.conditions.iter().enumerate() {
                condition
                    .validate_in(nested_key)
                    .map_err(|e| format!("`min_should` condition {i}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// The token match a text condition on a key with a full-text index becomes (see
/// [`Filter::bind_text`]); `None` for any other condition.
fn bound_text(
    field: &FieldCondition,
    text_index: &dyn Fn(&JsonPath) -> Option<Arc<TextParams>>,
) -> Option<Match> {
    let (query, mode) = match &field.r#match {
        Some(Match::Text { text }) => (text, TokenMode::All),
        Some(Match::TextAny { text_any }) => (text_any, TokenMode::Any),
        Some(Match::Phrase { phrase }) => (phrase, TokenMode::Phrase),
        _ => return None,
    };
    let params = text_index(&field.key)?;
    if mode == TokenMode::Phrase && !params.phrase_matching {
        return None;
    }
    Some(Match::Tokens(TokenMatch::new(query, mode, params)))
}

impl Condition {
    /// Whether the condition holds for a point with this id and payload, and no vectors.
    pub fn check(&self, id: PointId, payload: &Payload) -> bool {
        self.check_with(Some(id), payload, &no_vectors)
    }

    fn check_with(
        &self,
        id: Option<PointId>,
        payload: &Payload,
        has_vector: HasVector<'_>,
    ) -> bool {
        match self {
            Condition::HasVector(c) => has_vector(&c.has_vector),
            Condition::Field(field) => field.check(payload),
            Condition::IsEmpty(c) => is_empty(&c.is_empty.key, payload),
            Condition::IsNull(c) => is_null(&c.is_null.key, payload),
            Condition::HasId(c) => id.is_some_and(|id| c.contains(id)),
            Condition::Nested(c) => c.nested.check(payload),
            Condition::Filter(filter) => filter.check_with(id, payload, has_vector),
        }
    }

    fn validate_in(&self, nested_key: Option<&JsonPath>) -> Result<(), String> {
        match self {
            Condition::HasId(_) => match nested_key {
                Some(key) => Err(format!(
                    "`has_id` cannot be used inside `nested` (key `{key}`): nested conditions see \
                     array elements, which have no ids; move it out of the `nested` filter"
                )),
                None => Ok(()),
            },
            Condition::Field(field) if !field.has_check() => Err(format!(
                "the condition on key `{}` checks nothing: give one of `match`, `range`, \
                 `values_count`, `is_empty` or `is_null`",
                field.key
            )),
            Condition::Nested(c) => c.nested.filter.validate_in(Some(&c.nested.key)),
            Condition::Filter(filter) => filter.validate_in(nested_key),
            Condition::HasVector(_) if nested_key.is_some() => Err(
                "`has_vector` cannot be used inside `nested`: nested conditions see array \
                 elements, which have no vectors"
                    .to_string(),
            ),
            Condition::Field(_)
            | Condition::IsEmpty(_)
            | Condition::IsNull(_)
            | Condition::HasVector(_) => Ok(()),
        }
    }
}

impl FieldCondition {
    fn has_check(&self) -> bool {
        self.r#match.is_some()
            || self.range.is_some()
            || self.values_count.is_some()
            || self.is_empty.is_some()
            || self.is_null.is_some()
            || self.geo_bounding_box.is_some()
            || self.geo_radius.is_some()
            || self.geo_polygon.is_some()
    }

    /// Whether any of the condition's checks holds for the values at its key.
    pub fn check(&self, payload: &Payload) -> bool {
        let key = &self.key;
        self.r#match
            .as_ref()
            .is_some_and(|m| key.any_value(payload, |v| m.matches(v)))
            || self
                .range
                .as_ref()
                .is_some_and(|r| key.any_value(payload, |v| r.contains(v)))
            || self
                .values_count
                .as_ref()
                .is_some_and(|c| values_count_matches(c, key, payload))
            || self
                .is_empty
                .is_some_and(|want| is_empty(key, payload) == want)
            || self
                .is_null
                .is_some_and(|want| is_null(key, payload) == want)
            || self.geo_bounding_box.as_ref().is_some_and(|g| {
                key.any_value(payload, |v| {
                    GeoPoint::from_value(v).is_some_and(|p| g.contains(p))
                })
            })
            || self.geo_radius.as_ref().is_some_and(|g| {
                key.any_value(payload, |v| {
                    GeoPoint::from_value(v).is_some_and(|p| g.contains(p))
                })
            })
            || self.geo_polygon.as_ref().is_some_and(|g| {
                key.any_value(payload, |v| {
                    GeoPoint::from_value(v).is_some_and(|p| g.contains(p))
                })
            })
    }
}

impl Nested {
    fn check(&self, payload: &Payload) -> bool {
        self.key
            .try_for_each_raw(payload, &mut |value| match value {
                Value::Array(items) => {
                    let hit = items.iter().any(|item| {
                        item.as_object().is_some_and(|element| {
                            self.filter.check_with(None, element, &no_vectors)
                        })
                    });
                    if hit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                _ => ControlFlow::Continue(()),
            })
            .is_break()
    }
}

impl Match {
    /// Whether one (already flattened) payload value matches.
    pub fn matches(&self, value: &Value) -> bool {
        match self {
            Match::Value {
                value: MatchValue::Keyword(want),
            } => value.as_str() == Some(want.as_str()),
            Match::Value {
                value: MatchValue::Integer(want),
            } => value.as_i64() == Some(*want),
            Match::Value {
                value: MatchValue::Bool(want),
            } => value.as_bool() == Some(*want),
            Match::Text { text } | Match::Phrase { phrase: text } => {
                value.as_str().is_some_and(|s| s.contains(text.as_str()))
            }
            Match::TextAny { text_any } => value
                .as_str()
                .is_some_and(|s| text_any.split_whitespace().any(|token| s.contains(token))),
            Match::Any { any } => match value {
                Value::String(s) => any.contains_keyword(s),
                Value::Number(n) => n.as_i64().is_some_and(|n| any.contains_integer(n)),
                _ => false,
            },
            Match::Tokens(t) => value.as_str().is_some_and(|s| t.matches(s)),
            Match::Except { except } => match (value, except) {
                (Value::Null, _) => false,
                (Value::String(s), AnyVariants::Keywords(_)) => !except.contains_keyword(s),
                // A float cannot equal a listed integer, so it is "not in the list".
                (Value::Number(n), AnyVariants::Integers(_)) => {
                    n.as_i64().is_none_or(|n| !except.contains_integer(n))
                }
                _ => true,
            },
        }
    }
}

impl Range {
    /// Whether one (already flattened) payload value lies in the range.
    pub fn contains(&self, value: &Value) -> bool {
        match self {
            Range::Numbers(bounds) => value.as_f64().is_some_and(|x| bounds.contains(&x)),
            Range::Datetimes(bounds) => {
                value
                    .as_str()
                    .and_then(parse_datetime_micros)
                    .is_some_and(|micros| {
                        bounds.gt.as_ref().is_none_or(|b| micros > b.micros)
                            && bounds.gte.as_ref().is_none_or(|b| micros >= b.micros)
                            && bounds.lt.as_ref().is_none_or(|b| micros < b.micros)
                            && bounds.lte.as_ref().is_none_or(|b| micros <= b.micros)
                    })
            }
        }
    }
}

/// Every value at the key is null or an empty array; true when the key is missing.
fn is_empty(key: &JsonPath, payload: &Payload) -> bool {
    key.try_for_each_raw(payload, &mut |value| match value {
        Value::Null => ControlFlow::Continue(()),
        Value::Array(items) if items.is_empty() => ControlFlow::Continue(()),
        _ => ControlFlow::Break(()),
    })
    .is_continue()
}

/// Some value at the key is exactly `null`.
fn is_null(key: &JsonPath, payload: &Payload) -> bool {
    key.try_for_each_raw(payload, &mut |value| {
        if value.is_null() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// `values_count`, as Qdrant checks it: each value found at the key counts on its own (an array
/// its length, `null` 0, anything else 1; `a[].b` yields one value per element, not their sum),
/// and the condition holds if one value's count satisfies every bound. A key with no values
/// matches nothing, so `lt` never matches a missing key.
fn values_count_matches(bounds: &ValuesCount, key: &JsonPath, payload: &Payload) -> bool {
    let mut counts = Vec::new();
    let _ = key.try_for_each_raw(payload, &mut |value| {
        counts.push(match value {
            Value::Null => 0,
            Value::Array(items) => items.len(),
            _ => 1,
        });
        ControlFlow::<()>::Continue(())
    });
    counts.iter().any(|c| bounds.contains(c))
}

// ---------------------------------------------------------------------------------------------
// Datetimes: the RFC 3339 forms Qdrant accepts, without pulling in a date library.
// ---------------------------------------------------------------------------------------------

/// Parses `YYYY-MM-DD`, optionally followed by `T`/`t`/space, `HH:MM[:SS[.fraction]]` and a
/// zone (`Z`, `z`, `±HH:MM`, `±HHMM`; none means UTC). Returns microseconds since the epoch.
pub(crate) fn parse_datetime_micros(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    // Normalise the spellings RFC 3339 allows (`t`, `z`, a space) to one, then let chrono parse.
    // chrono also takes unpadded fields (`2023-2-8`); RFC 3339 does not.
    let b = text.as_bytes();
    let padded_date = b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !padded_date {
        return None;
    }
    let mut norm = text.to_ascii_uppercase();
    if norm.len() > 10 && norm.as_bytes()[10] == b' ' {
        norm.replace_range(10..11, "T");
    }
    if let Some(stripped) = norm.strip_suffix('Z') {
        norm = format!("{stripped}+00:00");
    }
    const ZONED: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M%z",
    ];
    const NAIVE: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"];
    ZONED
        .iter()
        .find_map(|f| {
            DateTime::parse_from_str(&norm, f)
                .ok()
                .map(|d| d.timestamp_micros())
        })
        .or_else(|| {
            NAIVE
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(&norm, f).ok())
                .map(|n| n.and_utc().timestamp_micros())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(&norm, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc().timestamp_micros())
        })
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(json) => f.write_str(&json),
            Err(_) => Err(fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn filter(value: Value) -> Filter {
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn filter_err(value: Value) -> String {
        match serde_json::from_value::<Filter>(value.clone()) {
            Ok(parsed) => panic!("{value} parsed as {parsed:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn payload(value: Value) -> Payload {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// Ids of the points (numbered from 1) in `points` that pass `f`.
    fn passing(f: &Filter, points: &[Value]) -> Vec<u64> {
        (1u64..)
            .zip(points)
            .filter(|(id, p)| f.check(PointId::Num(*id), &payload((*p).clone())))
            .map(|(id, _)| id)
            .collect()
    }

    fn check(f: Value, p: Value) -> bool {
        filter(f).check(PointId::Num(1), &payload(p))
    }

    #[test]
    fn qdrant_documentation_examples_deserialise() {
        let examples = [
            json!({"must": [{"key": "city", "match": {"value": "London"}}, {"key": "color", "match": {"value": "red"}}]}),
            json!({"should": [{"key": "city", "match": {"value": "London"}}, {"key": "color", "match": {"value": "red"}}]}),
            json!({"must_not": [{"key": "city", "match": {"value": "London"}}, {"key": "color", "match": {"value": "red"}}]}),
            json!({"must": [{"key": "city", "match": {"value": "London"}}], "must_not": [{"key": "color", "match": {"value": "red"}}]}),
            json!({"must_not": [{"must": [{"key": "city", "match": {"value": "London"}}, {"key": "color", "match": {"value": "red"}}]}]}),
            json!({"min_should": {"conditions": [
                {"key": "city", "match": {"value": "London"}},
                {"key": "color", "match": {"value": "red"}},
                {"key": "size", "match": {"value": "xl"}}
            ], "min_count": 2}}),
            json!({"must": [{"key": "count", "match": {"value": 0}}]}),
            json!({"must": [{"key": "is_active", "match": {"value": true}}]}),
            json!({"must": [{"key": "color", "match": {"any": ["black", "yellow"]}}]}),
            json!({"must": [{"key": "color", "match": {"except": ["black", "yellow"]}}]}),
            json!({"must": [{"key": "country.name", "match": {"value": "Germany"}}]}),
            json!({"must": [{"key": "country.cities[].population", "range": {"gte": 9.0}}]}),
            json!({"must": [{"key": "country.cities[].sightseeing", "values_count": {"gt": 2}}]}),
            json!({"must": [{"nested": {"key": "diet", "filter": {"must": [
                {"key": "food", "match": {"value": "meat"}},
                {"key": "likes", "match": {"value": true}}
            ]}}}]}),
            json!({"must": [{"key": "description", "match": {"text": "good cheap"}}]}),
            json!({"must": [{"key": "description", "match": {"phrase": "brown fox"}}]}),
            json!({"must": [{"key": "description", "match": {"text_any": "good cheap"}}]}),
            json!({"must": [{"key": "price", "range": {"gt": null, "gte": 100.1, "lt": null, "lte": 450.7}}]}),
            json!({"must": [{"key": "date", "range": {"gt": "2023-02-08T10:49:00Z", "gte": null, "lt": null, "lte": "2024-01-31 10:14:31Z"}}]}),
            json!({"must": [{"key": "comments", "values_count": {"gt": 2}}]}),
            json!({"must": [{"is_empty": {"key": "reports"}}]}),
            json!({"must": [{"is_null": {"key": "reports"}}]}),
            json!({"must": [{"key": "reports", "is_empty": true}]}),
            json!({"must": [{"has_id": [1, 3, 5, 7, 9, 11]}]}),
            json!({"must": [{"has_id": ["550e8400-e29b-41d4-a716-446655440000", 2]}]}),
            json!({"must": {"key": "city", "match": {"value": "London"}}, "should": null, "must_not": null}),
            json!({}),
        ];
        for example in examples {
            let parsed = filter(example.clone());
            parsed
                .validate()
                .unwrap_or_else(|e| panic!("{example}: {e}"));
            // What we print reads back to the same filter.
            let again: Filter =
                serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
            assert_eq!(again, parsed, "{example}");
        }
    }

    #[test]
    fn single_condition_and_array_forms_are_the_same() {
        let single = filter(json!({"must": {"key": "a", "match": {"value": 1}}}));
        let array = filter(json!({"must": [{"key": "a", "match": {"value": 1}}]}));
        assert_eq!(single, array);
        assert_eq!(filter(json!({"should": null})), Filter::default());
    }

    #[test]
    fn malformed_filters_fail_with_a_readable_reason() {
        for (bad, needle) in [
            (json!({"must": [{"key": "a"}]}), "checks nothing"),
            (
                json!({"must": [{"key": "a", "match": {"value": 1.5}}]}),
                "`match.value` must be",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": null}}]}),
                "`match.value` must be",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": [1]}}]}),
                "`match.value` must be",
            ),
            (
                json!({"must": [{"key": "a", "match": {"valeu": 1}}]}),
                "unknown `match` kind `valeu`",
            ),
            (
                json!({"must": [{"key": "a", "match": {}}]}),
                "exactly one of",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": 1, "text": "x"}}]}),
                "exactly one of",
            ),
            (
                json!({"must": [{"key": "a", "match": {"any": [1, "x"]}}]}),
                "array of strings or an array",
            ),
            (
                json!({"must": [{"key": "a", "match": {"any": [1.5]}}]}),
                "array of strings or an array",
            ),
            (
                json!({"must": [{"key": "a", "match": {"except": "x"}}]}),
                "`match.except` must be",
            ),
            (
                json!({"must": [{"key": "a", "match": {"text": 3}}]}),
                "`match.text` must be a string",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": "yesterday"}}]}),
                "not a datetime",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": 1, "lt": "2020-01-01"}}]}),
                "invalid `range`",
            ),
            (
                json!({"must": [{"key": "a", "range": {"between": 1}}]}),
                "invalid `range`",
            ),
            (
                json!({"must": [{"key": "a", "values_count": {"gt": -1}}]}),
                "invalid field condition",
            ),
            (
                json!({"must": [{"key": "a..b", "match": {"value": 1}}]}),
                "empty key",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": 1}, "extra": 1}]}),
                "unknown field `extra`",
            ),
            (
                json!({"must": [{"key": "a", "geo_radius": {"center": {"lon": 500, "lat": 0}, "radius": 1}}]}),
                "longitude must be in",
            ),
            (
                json!({"must": [{"is_empty": {"field": "a"}}]}),
                "invalid `is_empty` condition",
            ),
            (
                json!({"must": [{"is_null": "a"}]}),
                "invalid `is_null` condition",
            ),
            (json!({"must": [{"has_id": [-1]}]}), "negative"),
            (
                json!({"must": [{"has_id": ["not-a-uuid"]}]}),
                "not a valid UUID",
            ),
            (
                json!({"must": [{"nested": {"key": "a"}}]}),
                "missing field `filter`",
            ),
            (
                json!({"must": [{"nested": {"key": "a", "filter": {"mus": []}}}]}),
                "unknown field `mus`",
            ),
            (json!({"must": [{"whatever": 1}]}), "unknown condition"),
            (json!({"must": [1]}), "expected a condition object"),
            (json!({"must": ["a"]}), "condition 0"),
            (
                json!({"must": [{"must": [{"key": "a"}]}]}),
                "checks nothing",
            ),
            (
                json!({"min_should": {"conditions": []}}),
                "missing field `min_count`",
            ),
            (
                json!({"min_should": {"conditions": [], "min_count": 1, "x": 2}}),
                "unknown field `x`",
            ),
            (json!({"mus": []}), "unknown field `mus`"),
            (json!({"must": 5}), "expected a condition object"),
        ] {
            let err = filter_err(bad.clone());
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_rejects_has_id_inside_nested() {
        let nested = filter(
            json!({"must": [{"nested": {"key": "a", "filter": {"should": [{"must": [{"has_id": [1]}]}]}}}]}),
        );
        let err = nested.validate().unwrap_err();
        assert!(
            err.contains("`has_id` cannot be used inside `nested` (key `a`)"),
            "{err}"
        );
        assert!(err.starts_with("`must` condition 0"), "{err}");
        // Outside `nested` it is fine, as is an unreachable `min_count` (it simply never matches).
        filter(
            json!({"must": [{"has_id": [1]}], "min_should": {"conditions": [], "min_count": 3}}),
        )
        .validate()
        .unwrap();
    }

    #[test]
    fn match_value_requires_the_same_json_type() {
        let points = [
            json!({"v": 1}),
            json!({"v": 1.0}),
            json!({"v": "1"}),
            json!({"v": true}),
            json!({"v": [3, 1]}),
            json!({"v": [[1]]}),
            json!({}),
        ];
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "v", "match": {"value": 1}}})),
                &points
            ),
            vec![1, 5]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "v", "match": {"value": "1"}}})),
                &points
            ),
            vec![3]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "v", "match": {"value": true}}})),
                &points
            ),
            vec![4]
        );
    }

    #[test]
    fn match_any_and_except() {
        let points = [
            json!({"color": "black"}),
            json!({"color": "red"}),
            json!({"color": ["black", "red"]}),
            json!({"color": ["black", "yellow"]}),
            json!({"color": []}),
            json!({"color": null}),
            json!({}),
            json!({"color": 5}),
            json!({"color": true}),
            json!({"color": [null]}),
        ];
        let any = filter(json!({"must": {"key": "color", "match": {"any": ["black", "yellow"]}}}));
        assert_eq!(passing(&any, &points), vec![1, 3, 4]);
        let except =
            filter(json!({"must": {"key": "color", "match": {"except": ["black", "yellow"]}}}));
        // A missing key, null and [] have no value outside the list, so they do not match;
        // values of another type are "not in the list" and do.
        assert_eq!(passing(&except, &points), vec![2, 3, 8, 9]);

        let numbers = [
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 2.5}),
            json!({"n": "1"}),
        ];
        let any = filter(json!({"must": {"key": "n", "match": {"any": [2, 1]}}}));
        assert_eq!(passing(&any, &numbers), vec![1, 2]);
        let except = filter(json!({"must": {"key": "n", "match": {"except": [2, 1]}}}));
        assert_eq!(passing(&except, &numbers), vec![3, 4]);
        // An empty list: `any` matches nothing, `except` every non-null value.
        assert!(!check(
            json!({"must": {"key": "n", "match": {"any": []}}}),
            json!({"n": 1})
        ));
        assert!(check(
            json!({"must": {"key": "n", "match": {"except": []}}}),
            json!({"n": 1})
        ));
    }

    #[test]
    fn text_matching_is_case_sensitive_substring() {
        let points = [
            json!({"d": "Good and cheap"}),
            json!({"d": "good cheap food"}),
            json!({"d": ["x", "so cheap"]}),
            json!({"d": 3}),
        ];
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "d", "match": {"text": "good"}}})),
                &points
            ),
            vec![2]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "d", "match": {"phrase": "good cheap"}}})),
                &points
            ),
            vec![2]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "d", "match": {"text_any": "good cheap"}}})),
                &points
            ),
            vec![1, 2, 3]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "d", "match": {"text_any": "  "}}})),
                &points
            ),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn numeric_range_covers_ints_and_floats() {
        let points = [
            json!({"p": 100}),
            json!({"p": 100.1}),
            json!({"p": 450.7}),
            json!({"p": 500}),
            json!({"p": "200"}),
            json!({"p": [1, 300]}),
            json!({}),
        ];
        let f = filter(json!({"must": {"key": "p", "range": {"gte": 100.1, "lte": 450.7}}}));
        assert_eq!(passing(&f, &points), vec![2, 3, 6]);
        let f = filter(json!({"must": {"key": "p", "range": {"gt": 100.1, "lt": 450.7}}}));
        assert_eq!(passing(&f, &points), vec![6]);
        // No bounds: any number.
        let f = filter(json!({"must": {"key": "p", "range": {}}}));
        assert_eq!(passing(&f, &points), vec![1, 2, 3, 4, 6]);
    }

    #[test]
    fn datetime_range_compares_instants() {
        let f = filter(
            json!({"must": {"key": "d", "range": {"gt": "2023-02-08T10:49:00Z", "lte": "2024-01-31 10:14:31Z"}}}),
        );
        let points = [
            json!({"d": "2023-02-08T10:49:00Z"}),
            json!({"d": "2023-02-08T10:49:00.000001Z"}),
            json!({"d": "2023-02-08T11:49:00+01:00"}),
            json!({"d": "2023-02-08T12:00:00+01:00"}),
            json!({"d": "2024-01-31T10:14:31"}),
            json!({"d": "2024-01-31T10:14:32Z"}),
            json!({"d": "2023-06-01"}),
            json!({"d": "not a date"}),
            json!({"d": 1_700_000_000}),
        ];
        assert_eq!(passing(&f, &points), vec![2, 4, 5, 7]);
    }

    #[test]
    fn datetime_parser_accepts_rfc3339_forms() {
        assert_eq!(parse_datetime_micros("1970-01-01"), Some(0));
        assert_eq!(
            parse_datetime_micros("2023-02-08T10:49:00Z"),
            Some(1_675_853_340_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2023-02-08t10:49z"),
            Some(1_675_853_340_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2023-02-08 12:49:00+02:00"),
            Some(1_675_853_340_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2023-02-08T08:49:00-0200"),
            Some(1_675_853_340_000_000)
        );
        assert_eq!(
            parse_datetime_micros("1969-12-31T23:59:59Z"),
            Some(-1_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2024-02-29"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(
            parse_datetime_micros("1970-01-01T00:00:00.1234567Z"),
            Some(123_456)
        );
        for bad in [
            "2023-02-30",
            "2023-13-01",
            "2023-2-8",
            "2023-02-08T25:00",
            "2023-02-08T10:49:00Q",
            "2023-02-08T10:49:00.Z",
            "2023-02-08T10:49+01",
            "",
            "x",
        ] {
            assert_eq!(parse_datetime_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_count_counts_values_at_the_key() {
        let points = [
            json!({"c": [1, 2, 3]}),
            json!({"c": "x"}),
            json!({"c": []}),
            json!({"c": null}),
            json!({}),
            json!({"c": [1, 2]}),
        ];
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "c", "values_count": {"gt": 2}}})),
                &points
            ),
            vec![1]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "c", "values_count": {"lt": 1}}})),
                &points
            ),
            vec![3, 4],
            "a missing key matches no bound, not even `lt`"
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "c", "values_count": {"gte": 1, "lte": 2}}})),
                &points
            ),
            vec![2, 6]
        );
        // `a[].s` counts each element's value on its own (2 and 1), never their sum.
        let nested = json!({"a": [{"s": [1, 2]}, {"s": 3}, {"t": 1}]});
        assert!(!check(
            json!({"must": {"key": "a[].s", "values_count": {"gte": 3}}}),
            nested.clone()
        ));
        // One element's count must satisfy both bounds (Qdrant), not one bound each.
        assert!(!check(
            json!({"must": {"key": "a[].s", "values_count": {"gte": 2, "lt": 2}}}),
            nested.clone()
        ));
        assert!(check(
            json!({"must": {"key": "a[].s", "values_count": {"gt": 0, "lt": 2}}}),
            nested
        ));
    }

    #[test]
    fn is_empty_and_is_null_follow_qdrant() {
        let points = [
            json!({"r": null}),
            json!({"r": []}),
            json!({}),
            json!({"r": [null]}),
            json!({"r": 0}),
            json!({"r": ""}),
            json!({"r": {}}),
            json!({"r": [1]}),
        ];
        assert_eq!(
            passing(
                &filter(json!({"must": {"is_empty": {"key": "r"}}})),
                &points
            ),
            vec![1, 2, 3]
        );
        assert_eq!(
            passing(&filter(json!({"must": {"is_null": {"key": "r"}}})), &points),
            vec![1]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "r", "is_empty": true}})),
                &points
            ),
            vec![1, 2, 3]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "r", "is_empty": false}})),
                &points
            ),
            vec![4, 5, 6, 7, 8]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": {"key": "r", "is_null": false}})),
                &points
            ),
            vec![2, 3, 4, 5, 6, 7, 8]
        );
        // Through arrays: empty only when every reached value is empty.
        assert!(!check(
            json!({"must": {"is_empty": {"key": "a[].b"}}}),
            json!({"a": [{"b": 1}, {"b": []}]})
        ));
        assert!(check(
            json!({"must": {"is_empty": {"key": "a[].b"}}}),
            json!({"a": [{"b": null}, {"c": 1}]})
        ));
        assert!(check(
            json!({"must": {"is_null": {"key": "a[].b"}}}),
            json!({"a": [{"b": 1}, {"b": null}]})
        ));
    }

    #[test]
    fn has_id_checks_the_point_id() {
        let uuid: PointId = "550e8400-e29b-41d4-a716-446655440000".parse().unwrap();
        let f =
            filter(json!({"must": {"has_id": [5, 1, "550e8400-e29b-41d4-a716-446655440000", 1]}}));
        let empty = Payload::new();
        assert!(f.check(PointId::Num(1), &empty));
        assert!(f.check(PointId::Num(5), &empty));
        assert!(f.check(uuid, &empty));
        assert!(!f.check(PointId::Num(2), &empty));
        let Some(conditions) = &f.must else {
            panic!("no must")
        };
        let Condition::HasId(has_id) = &conditions[0] else {
            panic!("not has_id")
        };
        assert_eq!(has_id.ids(), &[PointId::Num(1), PointId::Num(5), uuid]);
    }

    #[test]
    fn nested_conditions_apply_to_one_element_at_a_time() {
        let dinosaurs = [
            json!({"dinosaur": "t-rex", "diet": [{"food": "leaves", "likes": false}, {"food": "meat", "likes": true}]}),
            json!({"dinosaur": "diplodocus", "diet": [{"food": "leaves", "likes": true}, {"food": "meat", "likes": false}]}),
            json!({"dinosaur": "lone", "diet": {"food": "meat", "likes": true}}),
            json!({"dinosaur": "none"}),
        ];
        let nested = filter(
            json!({"must": [{"nested": {"key": "diet", "filter": {"must": [
                {"key": "food", "match": {"value": "meat"}},
                {"key": "likes", "match": {"value": true}}
            ]}}}]}),
        );
        assert_eq!(passing(&nested, &dinosaurs), vec![1]);
        // The same conditions without `nested` match across elements.
        let flat = filter(json!({"must": [
            {"key": "diet[].food", "match": {"value": "meat"}},
            {"key": "diet[].likes", "match": {"value": true}}
        ]}));
        assert_eq!(passing(&flat, &dinosaurs), vec![1, 2]);
        // `has_id` inside `nested` never matches (and `validate` rejects it).
        let with_id = filter(
            json!({"must": {"nested": {"key": "diet", "filter": {"must": {"has_id": [1]}}}}}),
        );
        assert_eq!(passing(&with_id, &dinosaurs), Vec::<u64>::new());
        // An empty inner filter matches any point with at least one object element.
        let any = filter(json!({"must": {"nested": {"key": "diet", "filter": {}}}}));
        assert_eq!(passing(&any, &dinosaurs), vec![1, 2]);
    }

    #[test]
    fn clauses_combine_like_qdrant() {
        let points = [
            json!({"city": "London", "color": "red"}),
            json!({"city": "London", "color": "green"}),
            json!({"city": "Moscow", "color": "red"}),
            json!({"city": "Berlin", "color": "blue", "size": "xl"}),
        ];
        let london = json!({"key": "city", "match": {"value": "London"}});
        let red = json!({"key": "color", "match": {"value": "red"}});
        let xl = json!({"key": "size", "match": {"value": "xl"}});
        assert_eq!(
            passing(&filter(json!({"must": [london, red]})), &points),
            vec![1]
        );
        assert_eq!(
            passing(&filter(json!({"should": [london, red]})), &points),
            vec![1, 2, 3]
        );
        assert_eq!(
            passing(&filter(json!({"must_not": [london, red]})), &points),
            vec![4]
        );
        assert_eq!(
            passing(
                &filter(json!({"must": [london], "must_not": [red]})),
                &points
            ),
            vec![2]
        );
        assert_eq!(
            passing(
                &filter(json!({"must_not": [{"must": [london, red]}]})),
                &points
            ),
            vec![2, 3, 4]
        );
        let min2 = filter(json!({"min_should": {"conditions": [london, red, xl], "min_count": 2}}));
        assert_eq!(passing(&min2, &points), vec![1]);
        let min0 = filter(json!({"min_should": {"conditions": [london], "min_count": 0}}));
        assert_eq!(passing(&min0, &points), vec![1, 2, 3, 4]);
        let impossible = filter(json!({"min_should": {"conditions": [], "min_count": 1}}));
        assert_eq!(passing(&impossible, &points), Vec::<u64>::new());
        // As in Qdrant's condition checker: an empty `should` is an OR of nothing.
        assert_eq!(
            passing(&filter(json!({"should": []})), &points),
            Vec::<u64>::new()
        );
        assert_eq!(
            passing(&filter(json!({"must": [{}]})), &points),
            vec![1, 2, 3, 4]
        );
        // Several checks in one field condition: any of them.
        let either = filter(
            json!({"must": {"key": "city", "match": {"value": "Berlin"}, "values_count": {"gt": 5}}}),
        );
        assert_eq!(passing(&either, &points), vec![4]);
    }

    // ---- properties --------------------------------------------------------------------------

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            (-3i64..4).prop_map(Value::from),
            prop_oneof![Just(1.0f64), Just(-0.5), Just(2.5)].prop_map(Value::from),
            prop_oneof![Just("x"), Just("y"), Just("xy"), Just("")].prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(prop_oneof![Just("a"), Just("b")], inner, 0..2)
                    .prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )),
            ]
        })
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        prop::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("c")],
            arb_value(),
            0..3,
        )
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("a.a"),
            Just("a[]"),
            Just("a[].b"),
            Just("b[0]"),
            Just("c")
        ]
        .prop_map(String::from)
    }

    fn arb_leaf_condition() -> impl Strategy<Value = Value> {
        let match_kind = prop_oneof![
            (-3i64..4).prop_map(|n| json!({"value": n})),
            prop_oneof![Just("x"), Just("y")].prop_map(|s| json!({"value": s})),
            any::<bool>().prop_map(|b| json!({"value": b})),
            Just(json!({"text": "x"})),
            Just(json!({"text_any": "y z"})),
            Just(json!({"any": ["x", "xy"]})),
            Just(json!({"any": [1, 2]})),
            Just(json!({"except": ["x"]})),
            Just(json!({"except": [0, 1]})),
        ];
        prop_oneof![
            (arb_key(), match_kind).prop_map(|(k, m)| json!({"key": k, "match": m})),
            (arb_key(), -3.0f64..3.0, -3.0f64..3.0)
                .prop_map(|(k, lo, hi)| json!({"key": k, "range": {"gte": lo, "lt": hi}})),
            (arb_key(), 0usize..3).prop_map(|(k, n)| json!({"key": k, "values_count": {"gte": n}})),
            (arb_key(), any::<bool>()).prop_map(|(k, b)| json!({"key": k, "is_empty": b})),
            arb_key().prop_map(|k| json!({"is_empty": {"key": k}})),
            arb_key().prop_map(|k| json!({"is_null": {"key": k}})),
            prop::collection::vec(0u64..4, 0..3).prop_map(|ids| json!({"has_id": ids})),
        ]
    }

    fn arb_condition() -> impl Strategy<Value = Value> {
        arb_leaf_condition().prop_recursive(2, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(|cs| json!({"must": cs})),
                prop::collection::vec(inner.clone(), 0..3).prop_map(|cs| json!({"should": cs})),
                prop::collection::vec(inner.clone(), 0..3).prop_map(|cs| json!({"must_not": cs})),
                (prop::collection::vec(inner.clone(), 0..3), 0usize..3)
                    .prop_map(|(cs, n)| json!({"min_should": {"conditions": cs, "min_count": n}})),
                inner.prop_map(|c| json!({"nested": {"key": "a", "filter": {"must": [c]}}})),
            ]
        })
    }

    fn condition(value: Value) -> Condition {
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    proptest! {
        #[test]
        fn must_not_is_the_negation_of_must(c in arb_condition(), p in arb_payload(), id in 0u64..4) {
            let must = filter(json!({"must": [c.clone()]}));
            let must_not = filter(json!({"must_not": [c]}));
            let id = PointId::Num(id);
            prop_assert_eq!(must_not.check(id, &p), !must.check(id, &p));
        }

        #[test]
        fn should_is_the_or_of_its_conditions(cs in prop::collection::vec(arb_condition(), 1..4), p in arb_payload(), id in 0u64..4) {
            let id = PointId::Num(id);
            let any = cs.iter().any(|c| condition(c.clone()).check(id, &p));
            prop_assert_eq!(filter(json!({"should": cs})).check(id, &p), any);
        }

        #[test]
        fn must_is_the_and_of_its_conditions(cs in prop::collection::vec(arb_condition(), 0..4), p in arb_payload(), id in 0u64..4) {
            let id = PointId::Num(id);
            let all = cs.iter().all(|c| condition(c.clone()).check(id, &p));
            prop_assert_eq!(filter(json!({"must": cs})).check(id, &p), all);
        }

        #[test]
        fn min_should_counts_matching_conditions(cs in prop::collection::vec(arb_condition(), 0..4), n in 0usize..5, p in arb_payload(), id in 0u64..4) {
            let id = PointId::Num(id);
            let hits = cs.iter().filter(|c| condition((*c).clone()).check(id, &p)).count();
            let f = filter(json!({"min_should": {"conditions": cs, "min_count": n}}));
            prop_assert_eq!(f.check(id, &p), hits >= n);
        }

        #[test]
        fn serialised_filters_read_back_identically(c in arb_condition(), p in arb_payload(), id in 0u64..4) {
            let original = filter(json!({"must": [c]}));
            let text = serde_json::to_string(&original).unwrap();
            let again: Filter = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&again, &original);
            let id = PointId::Num(id);
            prop_assert_eq!(again.check(id, &p), original.check(id, &p));
        }

        #[test]
        fn except_is_any_value_outside_the_list(words in prop::collection::vec(prop_oneof![Just("x"), Just("y"), Just("z")], 0..4), list in prop::collection::vec(prop_oneof![Just("x"), Just("y")], 0..3)) {
            let p = payload(json!({"w": words}));
            let f = filter(json!({"must": {"key": "w", "match": {"except": list}}}));
            let expected = words.iter().any(|w| !list.contains(w));
            prop_assert_eq!(f.check(PointId::Num(0), &p), expected);
        }
    }
}
