//! Qdrant's payload key paths (`city`, `country.capital`, `cities[].name`, `tags[0]`,
//! `"key with.dots"`): parsing, printing, and the three things the rest of the node does with a
//! path — read the values it points at, delete what it points at, and merge an object into it.
//!
//! This module owns the path grammar and the walking rules only. It knows nothing about filters,
//! indexes or storage; callers hand it a payload and get plain `serde_json` values back.
//!
//! Grammar (the one Qdrant accepts): a path is a key followed by any number of `.key`, `[]` and
//! `[N]` segments. A bare key is one or more letters, digits, `_` or `-`; any other key is written
//! in double quotes (`"a.b"`, `"my key"`), which may not themselves contain `"` or `\`.

use std::fmt;
use std::ops::ControlFlow;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::types::Payload;

/// The largest array index a path may name (Qdrant's paths take any `usize`; no real payload
/// holds an array this long, and a bound keeps path parsing and printing cheap).
pub const MAX_ARRAY_INDEX: usize = 65_535;

/// The deepest nesting a payload may reach through the API, counting the payload object itself
/// as level 1 (so `{"a": {"b": 1}}` is 2 deep). Payloads are stored and logged as JSON text and
/// `serde_json` refuses to read back anything nested 128 deep, so a deeper payload would be
/// acknowledged and then make its WAL entry and its segment unreadable. Qdrant has no explicit
/// bound; its REST parser stops at the same 128 levels for the whole request body, which lets
/// an upserted payload reach about 124. Shoal refuses from 101 levels on, leaving room for the
/// levels an answer or a record wraps around a payload, and counts the levels a `set_payload`
/// key path adds.
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// How deeply `payload` nests (see [`MAX_PAYLOAD_DEPTH`]): 1 for `{}` and `{"a": 1}`, 2 for
/// `{"a": [1]}`. Counting stops at `MAX_PAYLOAD_DEPTH + 1`, so the cost is bounded by the
/// payload's size and the recursion by that depth.
pub fn payload_depth(payload: &Payload) -> usize {
    fn value_depth(value: &Value, budget: usize) -> usize {
        if budget == 0 {
            return 0;
        }
        let below = |children: &mut dyn Iterator<Item = &Value>| {
            children
                .map(|c| value_depth(c, budget - 1))
                .max()
                .unwrap_or(0)
        };
        match value {
            Value::Object(map) => 1 + below(&mut map.values()),
            Value::Array(items) => 1 + below(&mut items.iter()),
            _ => 0,
        }
    }
    1 + payload
        .values()
        .map(|v| value_depth(v, MAX_PAYLOAD_DEPTH))
        .max()
        .unwrap_or(0)
}

/// `{"n": {"n": ... 1}}`: a payload `depth` levels deep (see [`payload_depth`]), for tests of
/// [`MAX_PAYLOAD_DEPTH`].
#[cfg(test)]
pub fn nested_payload(depth: usize) -> Payload {
    let mut value = Value::from(1);
    for _ in 1..depth {
        value = Value::Object(Payload::from_iter([("n".to_string(), value)]));
    }
    Payload::from_iter([("n".to_string(), value)])
}

/// One step of a path after its first key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// `.key`: the member `key` of an object.
    Key(String),
    /// `[N]`: element `N` of an array.
    Index(usize),
    /// `[]`: every element of an array.
    EachElement,
}

/// A parsed payload key path. Always starts with a key: `[0]` alone is not a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    head: String,
    tail: Vec<PathSegment>,
}

impl JsonPath {
    /// The top-level payload key the path starts at.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The segments after the first key.
    pub fn tail(&self) -> &[PathSegment] {
        &self.tail
    }

    /// Calls `visit` with every value the path reaches, without flattening: for `tags` on
    /// `{"tags": ["a", "b"]}` it sees the array once. Stops early when `visit` breaks. Conditions
    /// that care about arrays as such (`is_empty`, `is_null`, `values_count`, `nested`) use this.
    pub fn try_for_each_raw<'a, B>(
        &self,
        payload: &'a Payload,
        visit: &mut impl FnMut(&'a Value) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        match payload.get(&self.head) {
            Some(value) => walk(value, &self.tail, visit),
            None => ControlFlow::Continue(()),
        }
    }

    /// Like [`JsonPath::try_for_each_raw`], but an array reached at the end of the path is
    /// replaced by its elements (one level only): `city` on `{"city": ["Berlin", "London"]}`
    /// visits both strings. This is what value conditions (`match`, `range`) look at.
    pub fn try_for_each_value<'a, B>(
        &self,
        payload: &'a Payload,
        visit: &mut impl FnMut(&'a Value) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        self.try_for_each_raw(payload, &mut |value| match value {
            Value::Array(items) => items.iter().try_for_each(&mut *visit),
            other => visit(other),
        })
    }

    /// Whether any value at the path (flattened as in [`JsonPath::values`]) satisfies `pred`.
    pub fn any_value<'a>(
        &self,
        payload: &'a Payload,
        mut pred: impl FnMut(&'a Value) -> bool,
    ) -> bool {
        self.try_for_each_value(payload, &mut |value| {
            if pred(value) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
    }

    /// Every value at the path, with a final array flattened one level. Missing keys, indexes
    /// out of range and steps into the wrong kind of value (`.key` on an array, `[]` on an
    /// object) contribute nothing.
    pub fn values<'a>(&self, payload: &'a Payload) -> Vec<&'a Value> {
        let mut out = Vec::new();
        let _ = self.try_for_each_value(payload, &mut |value| {
            out.push(value);
            ControlFlow::<()>::Continue(())
        });
        out
    }

    /// Every value at the path, without flattening a final array.
    pub fn raw_values<'a>(&self, payload: &'a Payload) -> Vec<&'a Value> {
        let mut out = Vec::new();
        let _ = self.try_for_each_raw(payload, &mut |value| {
            out.push(value);
            ControlFlow::<()>::Continue(())
        });
        out
    }

    /// Deletes what the path points at (`delete_payload` with `keys`): a final `.key` removes the
    /// member, a final `[]` empties the array, a final `[N]` changes nothing (as in Qdrant). Nothing is created on the way; a path that reaches nothing changes nothing.
    pub fn remove(&self, payload: &mut Payload) {
        let Some((last, before)) = self.tail.split_last() else {
            payload.remove(&self.head);
            return;
        };
        if let Some(value) = payload.get_mut(&self.head) {
            remove_in(value, before, last);
        }
    }

    /// The deepest a payload can become when [`JsonPath::set`] puts `value` at this path: the
    /// root, one level per step after the first key, and `value`'s own depth (what the
    /// merge keeps of the old payload is no deeper than the old payload).
    pub fn depth_with(&self, value: &Payload) -> usize {
        1 + self.tail.len() + payload_depth(value)
    }

    /// Merges `value` into the object(s) the path points at (`set_payload` with `key`), as Qdrant
    /// does: missing keys and non-object values on the way are replaced by objects, `[N]` descends
    /// into element `N` of an existing array (and changes nothing past its end), `[]` merges into
    /// every element of an existing array; `[N]` or `[]` where there is no array leaves an empty
    /// array there.
    pub fn set(&self, payload: &mut Payload, value: Payload) {
        let slot = payload.entry(self.head.clone()).or_insert(Value::Null);
        set_in(slot, &self.tail, &value);
    }
}

fn walk<'a, B>(
    value: &'a Value,
    rest: &[PathSegment],
    visit: &mut impl FnMut(&'a Value) -> ControlFlow<B>,
) -> ControlFlow<B> {
    let Some((segment, rest)) = rest.split_first() else {
        return visit(value);
    };
    match (segment, value) {
        (PathSegment::Key(key), Value::Object(map)) => match map.get(key) {
            Some(child) => walk(child, rest, visit),
            None => ControlFlow::Continue(()),
        },
        (PathSegment::Index(index), Value::Array(items)) => match items.get(*index) {
            Some(child) => walk(child, rest, visit),
            None => ControlFlow::Continue(()),
        },
        (PathSegment::EachElement, Value::Array(items)) => {
            items.iter().try_for_each(|child| walk(child, rest, visit))
        }
        _ => ControlFlow::Continue(()),
    }
}

fn remove_in(value: &mut Value, before: &[PathSegment], last: &PathSegment) {
    if let Some((segment, rest)) = before.split_first() {
        match (segment, value) {
            (PathSegment::Key(key), Value::Object(map)) => {
                if let Some(child) = map.get_mut(key) {
                    remove_in(child, rest, last);
                }
            }
            (PathSegment::Index(index), Value::Array(items)) => {
                if let Some(child) = items.get_mut(*index) {
                    remove_in(child, rest, last);
                }
            }
            (PathSegment::EachElement, Value::Array(items)) => {
                for child in items {
                    remove_in(child, rest, last);
                }
            }
            _ => {}
        }
        return;
    }
    match (last, value) {
        (PathSegment::Key(key), Value::Object(map)) => {
            map.remove(key);
        }
        // Qdrant deletes no array element by index (`a[0]` as the last step changes nothing).
        (PathSegment::Index(_), _) => {}
        (PathSegment::EachElement, Value::Array(items)) => items.clear(),
        _ => {}
    }
}

/// Qdrant's `set_payload` merge: each key of `src` is set in `dest`, and a `null` value
/// removes the key instead; nested values are copied as they are. (Qdrant stores the nulls as
/// sent in one case, right after `clear_payload` when it holds no payload object at all; Shoal
/// treats a cleared payload like any empty one.)
pub fn merge_payload(dest: &mut Payload, src: &Payload) {
    for (key, value) in src {
        if value.is_null() {
            dest.remove(key);
        } else {
            dest.insert(key.clone(), value.clone());
        }
    }
}

fn set_in(dest: &mut Value, rest: &[PathSegment], src: &Payload) {
    let Some((segment, rest)) = rest.split_first() else {
        merge_payload(as_object(dest), src);
        return;
    };
    match segment {
        PathSegment::Key(key) => {
            let slot = as_object(dest).entry(key.clone()).or_insert(Value::Null);
            set_in(slot, rest, src);
        }
        PathSegment::Index(index) => match dest {
            // Past the end: nothing is set (Qdrant does not grow arrays).
            Value::Array(items) => {
                if let Some(item) = items.get_mut(*index) {
                    set_in(item, rest, src);
                }
            }
            other => *other = Value::Array(Vec::new()),
        },
        PathSegment::EachElement => match dest {
            Value::Array(items) => items.iter_mut().for_each(|item| set_in(item, rest, src)),
            other => *other = Value::Array(Vec::new()),
        },
    }
}

/// Turns `value` into an object (replacing whatever it was unless it already is one).
fn as_object(value: &mut Value) -> &mut Payload {
    if !value.is_object() {
        *value = Value::Object(Payload::new());
    }
    match value {
        Value::Object(map) => map,
        // Just made it an object above.
        _ => unreachable!("value was replaced by an object"),
    }
}

fn is_bare_key_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

fn needs_quotes(key: &str) -> bool {
    key.is_empty() || !key.chars().all(is_bare_key_char)
}

struct Parser<'s> {
    text: &'s str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn error(&self, reason: impl fmt::Display) -> String {
        format!("invalid payload key `{}`: {reason}", self.text)
    }

    fn key(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('"') => {
                let start = self.pos + 1;
                let Some(len) = self.text[start..].find(['"', '\\']) else {
                    return Err(self.error(format!(
                        "the quoted key starting at position {} has no closing `\"`",
                        self.pos
                    )));
                };
                if self.text[start + len..].starts_with('\\') {
                    return Err(self.error(format!(
                        "quoted keys may not contain `\\` (position {})",
                        start + len
                    )));
                }
                self.pos = start + len + 1;
                Ok(self.text[start..start + len].to_string())
            }
            _ => {
                let rest = &self.text[self.pos..];
                let len = rest.find(|c| !is_bare_key_char(c)).unwrap_or(rest.len());
                if len == 0 {
                    return Err(match self.peek() {
                        None | Some('.') | Some('[') => self.error(format!(
                            "empty key at position {}; keys other than letters, digits, `_` \
                             and `-` must be quoted, like `\"my key\"`",
                            self.pos
                        )),
                        Some(c) => self.error(format!(
                            "unexpected `{c}` at position {}; keys other than letters, digits, \
                             `_` and `-` must be quoted, like `\"my key\"`",
                            self.pos
                        )),
                    });
                }
                self.pos += len;
                Ok(rest[..len].to_string())
            }
        }
    }

    fn index(&mut self) -> Result<PathSegment, String> {
        // Called with `self.pos` on the `[`.
        let open = self.pos;
        let rest = &self.text[open + 1..];
        let Some(close) = rest.find(']') else {
            return Err(self.error(format!("the `[` at position {open} is never closed")));
        };
        self.pos = open + 1 + close + 1;
        let inside = &rest[..close];
        if inside.is_empty() {
            return Ok(PathSegment::EachElement);
        }
        let bad = || {
            self.error(format!(
                "`[{inside}]` at position {open} must be `[]` or an array index from 0 to \
                 {MAX_ARRAY_INDEX}"
            ))
        };
        if !inside.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match inside.parse::<usize>() {
            Ok(index) if index <= MAX_ARRAY_INDEX => Ok(PathSegment::Index(index)),
            _ => Err(bad()),
        }
    }
}

impl FromStr for JsonPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err("invalid payload key ``: the key is empty".to_string());
        }
        let mut parser = Parser { text, pos: 0 };
        let head = parser.key()?;
        let mut tail = Vec::new();
        while let Some(c) = parser.peek() {
            match c {
                '.' => {
                    parser.pos += 1;
                    tail.push(PathSegment::Key(parser.key()?));
                }
                '[' => tail.push(parser.index()?),
                other => {
                    return Err(parser.error(format!(
                        "unexpected `{other}` at position {}; expected `.`, `[` or the end",
                        parser.pos
                    )));
                }
            }
        }
        Ok(JsonPath { head, tail })
    }
}

fn write_key(f: &mut fmt::Formatter<'_>, key: &str) -> fmt::Result {
    if needs_quotes(key) {
        write!(f, "\"{key}\"")
    } else {
        f.write_str(key)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, &self.head)?;
        for segment in &self.tail {
            match segment {
                PathSegment::Key(key) => {
                    f.write_str(".")?;
                    write_key(f, key)?;
                }
                PathSegment::Index(index) => write!(f, "[{index}]")?,
                PathSegment::EachElement => f.write_str("[]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> JsonPath {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn payload(value: Value) -> Payload {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn parses_every_segment_kind() {
        let parsed = path(r#"a.b-c_1[].d[12]."x.y z".é"#);
        assert_eq!(parsed.head(), "a");
        assert_eq!(
            parsed.tail(),
            &[
                PathSegment::Key("b-c_1".into()),
                PathSegment::EachElement,
                PathSegment::Key("d".into()),
                PathSegment::Index(12),
                PathSegment::Key("x.y z".into()),
                PathSegment::Key("é".into()),
            ]
        );
        assert_eq!(path(r#""a b""#).head(), "a b");
        assert_eq!(
            path("tags[0][1]").tail(),
            &[PathSegment::Index(0), PathSegment::Index(1)]
        );
    }

    #[test]
    fn rejects_malformed_paths_with_a_reason() {
        for (bad, needle) in [
            ("", "empty"),
            (".a", "empty key at position 0"),
            ("a.", "empty key at position 2"),
            ("a..b", "empty key at position 2"),
            ("[0]", "empty key at position 0"),
            ("a[", "never closed"),
            ("a[x]", "must be `[]` or an array index"),
            ("a[-1]", "must be `[]` or an array index"),
            (
                "a[99999999999999999999999]",
                "must be `[]` or an array index",
            ),
            ("a[65536]", "must be `[]` or an array index"),
            ("a b", "unexpected ` ` at position 1"),
            ("a.b c", "unexpected ` `"),
            ("a]", "unexpected `]`"),
            ("a.$b", "unexpected `$`"),
            (r#"a."b"#, "no closing"),
            (r#""a\"b""#, "may not contain"),
            (r#"a"b""#, "unexpected `\"`"),
        ] {
            let err = bad.parse::<JsonPath>().expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(err.contains("invalid payload key"), "{bad}: {err}");
        }
    }

    #[test]
    fn prints_back_to_a_parseable_string() {
        for text in [
            "a",
            "a.b.c",
            "a[].b",
            "a[0].b",
            r#""a.b"[3]."c d""#,
            "x[][]",
        ] {
            assert_eq!(path(text).to_string(), text);
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let parsed: JsonPath = serde_json::from_value(json!("a[].b")).unwrap();
        assert_eq!(parsed, path("a[].b"));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), json!("a[].b"));
        let err = serde_json::from_value::<JsonPath>(json!("a..b")).unwrap_err();
        assert!(err.to_string().contains("empty key"), "{err}");
        assert!(serde_json::from_value::<JsonPath>(json!(3)).is_err());
    }

    #[test]
    fn values_follow_qdrant_walking_rules() {
        let p = payload(json!({
            "city": ["Berlin", "London"],
            "country": {"name": "Germany", "cities": [
                {"name": "Berlin", "sights": ["Reichstag", "Zoo"]},
                {"name": "Munich"},
                {"sights": "Marienplatz"},
                5
            ]},
            "matrix": [[1, 2], [3]],
            "nothing": null
        }));
        let strings =
            |text: &str| -> Vec<Value> { path(text).values(&p).into_iter().cloned().collect() };
        assert_eq!(strings("city"), vec![json!("Berlin"), json!("London")]);
        assert_eq!(strings("country.name"), vec![json!("Germany")]);
        assert_eq!(
            strings("country.cities[].name"),
            vec![json!("Berlin"), json!("Munich")]
        );
        assert_eq!(
            strings("country.cities[].sights"),
            vec![json!("Reichstag"), json!("Zoo"), json!("Marienplatz")]
        );
        assert_eq!(strings("country.cities[1].name"), vec![json!("Munich")]);
        assert_eq!(strings("country.cities[9].name"), Vec::<Value>::new());
        // No implicit walk into arrays: `.name` on an array reaches nothing.
        assert_eq!(strings("country.cities.name"), Vec::<Value>::new());
        assert_eq!(strings("city[1]"), vec![json!("London")]);
        assert_eq!(strings("city.x"), Vec::<Value>::new());
        assert_eq!(strings("missing"), Vec::<Value>::new());
        assert_eq!(strings("nothing"), vec![Value::Null]);
        // Only one level of flattening.
        assert_eq!(strings("matrix"), vec![json!([1, 2]), json!([3])]);
        assert_eq!(strings("matrix[]"), vec![json!(1), json!(2), json!(3)]);
        // Raw values keep the final array.
        assert_eq!(
            path("city").raw_values(&p),
            vec![&json!(["Berlin", "London"])]
        );
    }

    #[test]
    fn any_value_stops_at_the_first_match() {
        let p = payload(json!({"n": [1, 2, 3, 4]}));
        let mut seen = 0;
        assert!(path("n").any_value(&p, |v| {
            seen += 1;
            v == &json!(2)
        }));
        assert_eq!(seen, 2);
        assert!(!path("n").any_value(&p, |v| v == &json!(9)));
    }

    #[test]
    fn remove_deletes_nested_keys_and_arrays_but_no_element_by_index() {
        let mut p = payload(json!({
            "a": 1,
            "b": {"c": 2, "d": {"e": [1, 2, 3], "f": [{"g": 1, "h": 2}, {"g": 3}]}}
        }));
        path("b.c").remove(&mut p);
        path("b.d.e[1]").remove(&mut p);
        path("b.d.f[].g").remove(&mut p);
        path("b.d.missing.deeper").remove(&mut p);
        path("zzz").remove(&mut p);
        path("b.d.e[7]").remove(&mut p);
        assert_eq!(
            Value::Object(p.clone()),
            json!({"a": 1, "b": {"d": {"e": [1, 2, 3], "f": [{"h": 2}, {}]}}})
        );
        path("b.d.f[]").remove(&mut p);
        path("a").remove(&mut p);
        assert_eq!(
            Value::Object(p),
            json!({"b": {"d": {"e": [1, 2, 3], "f": []}}})
        );
    }

    /// Qdrant's `set_payload` merge: a top-level `null` removes the key, nested nulls stay.
    #[test]
    fn merge_payload_removes_keys_set_to_null() {
        let mut p = payload(json!({"k": 1, "x": 2}));
        merge_payload(&mut p, &payload(json!({"k": null, "n": {"inner": null}})));
        assert_eq!(Value::Object(p), json!({"x": 2, "n": {"inner": null}}));
        let mut empty = Payload::new();
        merge_payload(&mut empty, &payload(json!({"k": null, "j": 1})));
        assert_eq!(Value::Object(empty), json!({"j": 1}));
        let mut keyed = payload(json!({"k": {"a": 1, "b": 2}}));
        path("k").set(&mut keyed, payload(json!({"a": null, "c": 3})));
        assert_eq!(Value::Object(keyed), json!({"k": {"b": 2, "c": 3}}));
        let mut fresh = payload(json!({"x": 1}));
        path("new.deep").set(&mut fresh, payload(json!({"a": null})));
        assert_eq!(Value::Object(fresh), json!({"x": 1, "new": {"deep": {}}}));
    }

    #[test]
    fn set_merges_and_creates_objects_on_the_way() {
        let mut p = payload(json!({"a": {"b": [{"c": 1}, {"c": 2}], "keep": true}, "s": 10}));
        path("a").set(&mut p, payload(json!({"x": 1})));
        path("a.b[].c2").set(&mut p, payload(json!({"y": 2})));
        path("a.b[1]").set(&mut p, payload(json!({"c": 5})));
        path("new.deep").set(&mut p, payload(json!({"z": 3})));
        path("s.t").set(&mut p, payload(json!({"w": 4})));
        path("list[2]").set(&mut p, payload(json!({"v": 5})));
        path("a.b[7]").set(&mut p, payload(json!({"past": "end"})));
        path("empty[].q").set(&mut p, payload(json!({"u": 6})));
        assert_eq!(
            Value::Object(p),
            json!({
                "a": {
                    "b": [{"c": 1, "c2": {"y": 2}}, {"c": 5, "c2": {"y": 2}}],
                    "keep": true,
                    "x": 1
                },
                "s": {"t": {"w": 4}},
                "new": {"deep": {"z": 3}},
                "list": [],
                "empty": []
            })
        );
    }

    /// Qdrant's `set_payload` with `key` (as its reference implementation, qdrant-client's local
    /// mode, answers): an index past the end of an array, or into an empty array, sets nothing.
    #[test]
    fn set_with_an_index_past_the_end_changes_nothing() {
        let cases = [
            (
                json!({"nest": [{"a": "100"}]}),
                "nest[1]",
                json!({"d": "404"}),
                json!({"nest": [{"a": "100"}]}),
            ),
            (
                json!({"nest": [{"a": "100"}]}),
                "nest[0]",
                json!({"a": "101"}),
                json!({"nest": [{"a": "101"}]}),
            ),
            (
                json!({"nest": [{"a": [], "b": "2"}]}),
                "nest[0].a[]",
                json!({"a": "1"}),
                json!({"nest": [{"a": [], "b": "2"}]}),
            ),
            (
                json!({"a": []}),
                "a.b[0]",
                json!({}),
                json!({"a": {"b": []}}),
            ),
            (
                json!({"x": [1, 2]}),
                "x[5]",
                json!({"k": 1}),
                json!({"x": [1, 2]}),
            ),
            (
                json!({"a": {"c": [{"d": 1}]}}),
                "a.c[][]",
                json!({"a": 1}),
                json!({"a": {"c": [[]]}}),
            ),
        ];
        for (before, key, set, after) in cases {
            let mut p = payload(before);
            path(key).set(&mut p, payload(set));
            assert_eq!(Value::Object(p), after, "set at {key}");
        }
    }

    #[test]
    fn payload_depth_counts_the_payload_object_and_every_container_below_it() {
        for (doc, depth) in [
            (json!({}), 1),
            (json!({"a": 1, "b": "x"}), 1),
            (json!({"a": []}), 2),
            (json!({"a": [1, {"b": {}}], "c": {}}), 4),
            (json!({"a": {"b": {"c": [[1]]}}}), 5),
        ] {
            assert_eq!(payload_depth(&payload(doc.clone())), depth, "{doc}");
        }
        // Counting stops just past the limit: the answer still says "too deep".
        assert_eq!(
            payload_depth(&nested_payload(MAX_PAYLOAD_DEPTH + 20)),
            MAX_PAYLOAD_DEPTH + 1
        );
    }

    /// A payload at the limit can be written as JSON and read back: the limit sits below
    /// `serde_json`'s recursion limit with room for the few levels a request or record wraps
    /// around a payload.
    #[test]
    fn a_payload_at_the_limit_reads_back_from_json() {
        let doc = nested_payload(MAX_PAYLOAD_DEPTH);
        assert_eq!(payload_depth(&doc), MAX_PAYLOAD_DEPTH);
        let wrapped = json!({"result": {"points": [{"payload": doc}]}});
        let text = serde_json::to_string(&wrapped).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), wrapped);
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_][a-z0-9_-]{0,5}",
            "[a-z .\\[\\]]{0,6}",
            Just(String::new()),
        ]
    }

    fn arb_path() -> impl Strategy<Value = JsonPath> {
        let segment = prop_oneof![
            arb_key().prop_map(PathSegment::Key),
            (0usize..20).prop_map(PathSegment::Index),
            Just(PathSegment::EachElement),
        ];
        (arb_key(), prop::collection::vec(segment, 0..5))
            .prop_map(|(head, tail)| JsonPath { head, tail })
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        let leaf = prop_oneof![Just(json!(1)), Just(json!("x")), Just(Value::Null)];
        let value = leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-c]", value, 0..3).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(p in arb_path()) {
            let text = p.to_string();
            prop_assert_eq!(text.parse::<JsonPath>(), Ok(p), "{}", text);
        }

        /// `depth_with` bounds what `set` makes, whatever the path and the payload it lands in.
        #[test]
        fn set_never_nests_deeper_than_depth_with_says(
            p in arb_path(),
            before in arb_payload(),
            value in arb_payload(),
        ) {
            let mut doc = before.clone();
            p.set(&mut doc, value.clone());
            prop_assert!(
                payload_depth(&doc) <= payload_depth(&before).max(p.depth_with(&value)),
                "{} set at {} in {:?}", Value::Object(value), p, before
            );
        }

        #[test]
        fn parse_never_panics(text in "[a-z0-9.\\[\\]\" \\\\]{0,12}") {
            let _ = text.parse::<JsonPath>();
        }

        #[test]
        fn set_then_read_finds_the_merged_value(keys in prop::collection::vec("[a-z]{1,3}", 1..4), v in any::<i64>()) {
            let text = keys.join(".");
            let p = path(&text);
            let mut doc = payload(json!({"other": 1}));
            p.set(&mut doc, payload(json!({"leaf": v})));
            let leaf = path(&format!("{text}.leaf"));
            let expected = json!(v);
            prop_assert_eq!(leaf.values(&doc), vec![&expected]);
            leaf.remove(&mut doc);
            prop_assert!(leaf.values(&doc).is_empty());
            prop_assert_eq!(doc.get("other"), Some(&json!(1)));
        }
    }
}
