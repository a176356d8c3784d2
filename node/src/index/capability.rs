//! Which payload index serves which filter condition (Qdrant's `FieldIndexType`,
//! `schema_capabilities` and `infer_index_from_field_condition`). Shared by strict mode
//! (`unindexed_filtering_*`) and the unindexed-field issue, which must agree on what "indexed"
//! means.

use serde_json::Value;

use crate::collection_config::PayloadIndexEntry;
use crate::index::filter::{AnyVariants, FieldCondition, Match, MatchValue, Range};

/// What a payload index can do for a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    IntMatch,
    IntRange,
    KeywordMatch,
    FloatRange,
    Text,
    TextPhrase,
    BoolMatch,
    UuidMatch,
    UuidRange,
    DatetimeRange,
    Geo,
}

impl Capability {
    pub const ALL: [Capability; 11] = [
        Capability::IntMatch,
        Capability::IntRange,
        Capability::KeywordMatch,
        Capability::FloatRange,
        Capability::Text,
        Capability::TextPhrase,
        Capability::BoolMatch,
        Capability::UuidMatch,
        Capability::UuidRange,
        Capability::DatetimeRange,
        Capability::Geo,
    ];

    /// The index kind that gives it (Qdrant suggests kinds, without their parameters).
    pub fn kind(self) -> &'static str {
        match self {
            Capability::IntMatch | Capability::IntRange => "integer",
            Capability::KeywordMatch => "keyword",
            Capability::FloatRange => "float",
            Capability::Text | Capability::TextPhrase => "text",
            Capability::BoolMatch => "bool",
            Capability::UuidMatch | Capability::UuidRange => "uuid",
            Capability::DatetimeRange => "datetime",
            Capability::Geo => "geo",
        }
    }

    /// The `field_schema` that gives it, as Qdrant names it in its strict mode error.
    pub fn schema_name(self) -> &'static str {
        match self {
            Capability::TextPhrase => "text (with phrase_matching: true)",
            other => other.kind(),
        }
    }
}

/// What a declared index can do: an integer index looks up and ranges unless its `lookup` /
/// `range` parameter is `false`; a text index matches phrases only with
/// `phrase_matching: true`.
pub fn capabilities(entry: &PayloadIndexEntry) -> Vec<Capability> {
    let flag = |name: &str| {
        entry
            .params
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_bool)
    };
    match entry.data_type.as_str() {
        "keyword" => vec![Capability::KeywordMatch],
        "integer" => {
            let mut caps = Vec::new();
            if flag("lookup").unwrap_or(true) {
                caps.push(Capability::IntMatch);
            }
            if flag("range").unwrap_or(true) {
                caps.push(Capability::IntRange);
            }
            caps
        }
        "uuid" => vec![Capability::UuidMatch, Capability::UuidRange],
        "bool" => vec![Capability::BoolMatch],
        "float" => vec![Capability::FloatRange],
        "geo" => vec![Capability::Geo],
        "text" if flag("phrase_matching") == Some(true) => {
            vec![Capability::Text, Capability::TextPhrase]
        }
        "text" => vec![Capability::Text],
        "datetime" => vec![Capability::DatetimeRange],
        _ => Vec::new(),
    }
}

/// The capabilities that would serve a field condition, any one of them; empty when no index
/// can help (an empty `any` / `except` list, for one).
pub fn required(field: &FieldCondition) -> Vec<Capability> {
    let keywords = |strings: &[String]| {
        let mut out = Vec::new();
        if strings.iter().all(|s| uuid::Uuid::parse_str(s).is_ok()) {
            out.push(Capability::UuidMatch);
        }
        out.push(Capability::KeywordMatch);
        out
    };
    let mut wanted = Vec::new();
    if let Some(m) = &field.r#match {
        wanted.extend(match m {
            Match::Value {
                value: MatchValue::Keyword(s),
            } => keywords(std::slice::from_ref(s)),
            Match::Value {
                value: MatchValue::Integer(_),
            } => vec![Capability::IntMatch],
            Match::Value {
                value: MatchValue::Bool(_),
            } => vec![Capability::BoolMatch],
            Match::Text { .. } | Match::TextAny { .. } => vec![Capability::Text],
            Match::Phrase { .. } => vec![Capability::TextPhrase],
            Match::Tokens(t) if t.mode == crate::index::text::TokenMode::Phrase => {
                vec![Capability::TextPhrase]
            }
            Match::Tokens(_) => vec![Capability::Text],
            Match::Any { any: list } | Match::Except { except: list } => match list {
                AnyVariants::Keywords(v) if v.is_empty() => Vec::new(),
                AnyVariants::Integers(v) if v.is_empty() => Vec::new(),
                AnyVariants::Keywords(v) => keywords(v),
                AnyVariants::Integers(_) => vec![Capability::IntMatch],
            },
        });
    }
    match &field.range {
        Some(Range::Datetimes(_)) => wanted.push(Capability::DatetimeRange),
        Some(Range::Numbers(_)) => wanted.extend([Capability::FloatRange, Capability::IntRange]),
        None => {}
    }
    if field.geo_bounding_box.is_some() || field.geo_radius.is_some() || field.geo_polygon.is_some()
    {
        wanted.push(Capability::Geo);
    }
    if field.values_count.is_some() || field.is_empty.is_some() || field.is_null.is_some() {
        wanted.extend(Capability::ALL);
    }
    wanted
}
