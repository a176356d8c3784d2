//! What a read returns besides ids: Qdrant's `with_payload` (all, none, or only / all but some
//! keys) and `with_vector` (all, none, or some named vectors), and cutting a stored payload down
//! to what `with_payload` asked for.
//!
//! This module owns the request shapes and the projection of one payload. It does not read
//! storage and knows nothing about how vectors are stored; it only answers which names are wanted.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::index::payload_path::{JsonPath, PathSegment};
use crate::types::Payload;

/// Qdrant's `WithPayloadInterface`: `true`, `false`, `["key", "a.b"]`, `{"include": [...]}` or
/// `{"exclude": [...]}`.
///
/// The default is `None`, Qdrant's default for search-like requests; `scroll` and point
/// retrieval default to `All` in Qdrant, so their handlers use `unwrap_or(WithPayload::All)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WithPayload {
    /// `true`: the whole payload.
    All,
    /// `false`: no payload.
    #[default]
    None,
    /// A list of keys, or `{"include": [...]}`: only the values at these paths (with the objects
    /// and arrays that lead to them).
    Include(Vec<JsonPath>),
    /// `{"exclude": [...]}`: everything except the values at these paths.
    Exclude(Vec<JsonPath>),
}

impl WithPayload {
    /// Whether the response carries a payload at all.
    pub fn is_requested(&self) -> bool {
        !matches!(self, WithPayload::None)
    }

    /// The part of `payload` to return, or `None` when payloads were not requested.
    pub fn select(&self, payload: &Payload) -> Option<Payload> {
        match self {
            WithPayload::None => None,
            WithPayload::All => Some(payload.clone()),
            WithPayload::Include(paths) => Some(include(payload, paths)),
            WithPayload::Exclude(paths) => {
                let mut kept = payload.clone();
                for path in paths {
                    path.remove(&mut kept);
                }
                Some(kept)
            }
        }
    }
}

/// Keeps what the paths reach. Objects and arrays on the way to a selected value are kept (even
/// when nothing under them is selected, as Qdrant does); `[]` keeps every element, `[N]` only
/// element `N`; a scalar met before the path ends is kept whole.
fn include(payload: &Payload, paths: &[JsonPath]) -> Payload {
    let mut out = Payload::new();
    for (key, value) in payload {
        let tails: Vec<&[PathSegment]> = paths
            .iter()
            .filter(|p| p.head() == key)
            .map(JsonPath::tail)
            .collect();
        if !tails.is_empty() {
            out.insert(key.clone(), prune(value, &tails));
        }
    }
    out
}

fn prune(value: &Value, tails: &[&[PathSegment]]) -> Value {
    if tails.iter().any(|tail| tail.is_empty()) {
        return value.clone();
    }
    let step = |wanted: &dyn Fn(&PathSegment) -> bool| -> Vec<&[PathSegment]> {
        tails
            .iter()
            .filter_map(|tail| tail.split_first())
            .filter(|(first, _)| wanted(first))
            .map(|(_, rest)| rest)
            .collect()
    };
    match value {
        Value::Object(map) => {
            let mut out = Payload::new();
            for (key, child) in map {
                let sub = step(&|s| matches!(s, PathSegment::Key(k) if k == key));
                if !sub.is_empty() {
                    out.insert(key.clone(), prune(child, &sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, child) in items.iter().enumerate() {
                let sub = step(&|s| {
                    matches!(s, PathSegment::EachElement)
                        || matches!(s, PathSegment::Index(n) if *n == i)
                });
                if !sub.is_empty() {
                    out.push(prune(child, &sub));
                }
            }
            Value::Array(out)
        }
        scalar => scalar.clone(),
    }
}

impl Serialize for WithPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Exclude<'a> {
            exclude: &'a [JsonPath],
        }
        match self {
            WithPayload::All => serializer.serialize_bool(true),
            WithPayload::None => serializer.serialize_bool(false),
            WithPayload::Include(paths) => paths.serialize(serializer),
            WithPayload::Exclude(paths) => Exclude { exclude: paths }.serialize(serializer),
        }
    }
}

const WITH_PAYLOAD_SHAPES: &str = "`with_payload` must be `true`, `false`, a list of keys, `{\"include\": [keys]}` or `{\"exclude\": [keys]}`";

fn read_paths(value: Value) -> Result<Vec<JsonPath>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "{WITH_PAYLOAD_SHAPES}, got a non-list where keys were expected"
        ));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(text) => text.parse::<JsonPath>(),
            other => Err(format!(
                "`with_payload` keys must be strings, got `{other}`"
            )),
        })
        .collect()
}

impl<'de> Deserialize<'de> for WithPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parsed = match Value::deserialize(deserializer)? {
            Value::Bool(true) => Ok(WithPayload::All),
            Value::Bool(false) => Ok(WithPayload::None),
            list @ Value::Array(_) => read_paths(list).map(WithPayload::Include),
            Value::Object(mut map) if map.len() == 1 => {
                match (map.remove("include"), map.remove("exclude")) {
                    (Some(keys), None) => read_paths(keys).map(WithPayload::Include),
                    (None, Some(keys)) => read_paths(keys).map(WithPayload::Exclude),
                    _ => Err(format!(
                        "{WITH_PAYLOAD_SHAPES}, got an object with other fields"
                    )),
                }
            }
            other => Err(format!("{WITH_PAYLOAD_SHAPES}, got `{other}`")),
        };
        parsed.map_err(D::Error::custom)
    }
}

/// Qdrant's `with_vector`: `true`, `false` or a list of vector names. The default is `None`,
/// Qdrant's default everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WithVector {
    /// `true`: every vector of the point.
    All,
    /// `false`: no vectors.
    #[default]
    None,
    /// Only the vectors with these names (the unnamed default vector is `""`).
    Named(Vec<String>),
}

impl WithVector {
    /// Whether any vector is returned.
    pub fn is_requested(&self) -> bool {
        match self {
            WithVector::All => true,
            WithVector::None => false,
            WithVector::Named(names) => !names.is_empty(),
        }
    }

    /// Whether the vector called `name` is returned.
    pub fn wants(&self, name: &str) -> bool {
        match self {
            WithVector::All => true,
            WithVector::None => false,
            WithVector::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

impl Serialize for WithVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WithVector::All => serializer.serialize_bool(true),
            WithVector::None => serializer.serialize_bool(false),
            WithVector::Named(names) => names.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for WithVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WithVector;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`with_vector` as `true`, `false` or a list of vector names")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<WithVector, E> {
                Ok(if v { WithVector::All } else { WithVector::None })
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WithVector, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(WithVector::Named(names))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn payload(value: Value) -> Payload {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn with_payload(value: Value) -> WithPayload {
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn paths(texts: &[&str]) -> Vec<JsonPath> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn sample() -> Payload {
        payload(json!({
            "city": "Berlin",
            "country": {"name": "Germany", "code": "DE", "cities": [{"name": "Berlin", "pop": 3.7}, {"name": "Munich", "pop": 1.5}]},
            "tags": ["a", "b", "c"],
            "n": 5
        }))
    }

    #[test]
    fn deserialises_every_qdrant_shape() {
        assert_eq!(with_payload(json!(true)), WithPayload::All);
        assert_eq!(with_payload(json!(false)), WithPayload::None);
        assert_eq!(
            with_payload(json!(["city", "country.name"])),
            WithPayload::Include(paths(&["city", "country.name"]))
        );
        assert_eq!(
            with_payload(json!({"include": ["city"]})),
            WithPayload::Include(paths(&["city"]))
        );
        assert_eq!(
            with_payload(json!({"exclude": ["country.cities[].pop"]})),
            WithPayload::Exclude(paths(&["country.cities[].pop"]))
        );
        assert_eq!(WithPayload::default(), WithPayload::None);

        let v: WithVector = serde_json::from_value(json!(true)).unwrap();
        assert_eq!(v, WithVector::All);
        let v: WithVector = serde_json::from_value(json!(false)).unwrap();
        assert_eq!(v, WithVector::None);
        let v: WithVector = serde_json::from_value(json!(["image", "text"])).unwrap();
        assert_eq!(v, WithVector::Named(vec!["image".into(), "text".into()]));
        assert_eq!(WithVector::default(), WithVector::None);
    }

    #[test]
    fn malformed_shapes_fail_with_a_reason() {
        for (bad, needle) in [
            (json!("yes"), "must be `true`, `false`"),
            (json!(1), "must be `true`, `false`"),
            (json!(null), "must be `true`, `false`"),
            (json!([1]), "keys must be strings"),
            (json!(["a..b"]), "empty key"),
            (json!({"include": "city"}), "non-list"),
            (
                json!({"include": [], "exclude": []}),
                "got `{\"exclude\":[],\"include\":[]}`",
            ),
            (json!({"only": ["a"]}), "other fields"),
            (json!({}), "must be `true`, `false`"),
        ] {
            let err = serde_json::from_value::<WithPayload>(bad.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        for bad in [json!("all"), json!([1]), json!({"a": 1})] {
            let err = serde_json::from_value::<WithVector>(bad.clone())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("with_vector") || err.contains("invalid type"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn serialises_back_to_an_equivalent_shape() {
        for value in [
            json!(true),
            json!(false),
            json!(["a", "b.c"]),
            json!({"exclude": ["x[].y"]}),
        ] {
            assert_eq!(
                serde_json::to_value(with_payload(value.clone())).unwrap(),
                value
            );
        }
        assert_eq!(
            serde_json::to_value(with_payload(json!({"include": ["a"]}))).unwrap(),
            json!(["a"])
        );
        assert_eq!(
            serde_json::to_value(WithVector::Named(vec!["v".into()])).unwrap(),
            json!(["v"])
        );
    }

    #[test]
    fn select_all_none_include_exclude() {
        let p = sample();
        assert_eq!(WithPayload::None.select(&p), None);
        assert_eq!(WithPayload::All.select(&p), Some(p.clone()));
        let only = with_payload(json!(["city", "country.name", "missing", "n.deeper"]))
            .select(&p)
            .unwrap();
        assert_eq!(
            Value::Object(only),
            json!({"city": "Berlin", "country": {"name": "Germany"}, "n": 5})
        );
        let projected = with_payload(json!({"include": ["country.cities[].name", "tags[1]"]}))
            .select(&p)
            .unwrap();
        assert_eq!(
            Value::Object(projected),
            json!({"country": {"cities": [{"name": "Berlin"}, {"name": "Munich"}]}, "tags": ["b"]})
        );
        let merged = with_payload(json!(["country.name", "country.code"]))
            .select(&p)
            .unwrap();
        assert_eq!(
            Value::Object(merged),
            json!({"country": {"name": "Germany", "code": "DE"}})
        );
        let without = with_payload(json!({"exclude": ["country.cities[].pop", "tags", "city"]}))
            .select(&p)
            .unwrap();
        assert_eq!(
            Value::Object(without),
            json!({"country": {"name": "Germany", "code": "DE", "cities": [{"name": "Berlin"}, {"name": "Munich"}]}, "n": 5})
        );
        // Qdrant keeps the containers on the way to a key even when the key is missing.
        let shell = with_payload(json!(["country.nope"])).select(&p).unwrap();
        assert_eq!(Value::Object(shell), json!({"country": {}}));
        assert_eq!(with_payload(json!([])).select(&p), Some(Payload::new()));
    }

    #[test]
    fn with_vector_names() {
        let named = WithVector::Named(vec!["image".into()]);
        assert!(named.wants("image") && !named.wants("text") && named.is_requested());
        assert!(WithVector::All.wants("anything"));
        assert!(!WithVector::None.wants("image") && !WithVector::None.is_requested());
        assert!(!WithVector::Named(vec![]).is_requested());
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
            Just(Value::Null)
        ];
        let value = leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-d]", value, 0..4).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn include_and_exclude_of_top_level_keys_partition_the_payload(p in arb_payload(), keys in prop::collection::btree_set("[a-e]", 0..4)) {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let included = WithPayload::Include(paths(&keys)).select(&p).unwrap();
            let excluded = WithPayload::Exclude(paths(&keys)).select(&p).unwrap();
            for (k, v) in &p {
                let wanted = keys.contains(&k.as_str());
                prop_assert_eq!(included.get(k), wanted.then_some(v));
                prop_assert_eq!(excluded.get(k), (!wanted).then_some(v));
            }
            prop_assert_eq!(included.len() + excluded.len(), p.len());
        }

        #[test]
        fn including_a_path_keeps_exactly_its_values(p in arb_payload(), head in "[a-d]", key in "[a-c]") {
            let path: JsonPath = format!("{head}.{key}").parse().unwrap();
            let selected = WithPayload::Include(vec![path.clone()]).select(&p).unwrap();
            prop_assert_eq!(path.values(&selected), path.values(&p));
            prop_assert!(selected.keys().all(|k| *k == head));
        }
    }
}
