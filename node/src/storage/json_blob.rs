//! Serde glue for binary formats: a JSON payload travels as a JSON string, because compact
//! binary formats such as postcard cannot carry self-describing `serde_json::Value`s.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::Payload;

pub fn serialize<S: Serializer>(payload: &Payload, serializer: S) -> Result<S::Ok, S::Error> {
    let text = serde_json::to_string(payload).map_err(serde::ser::Error::custom)?;
    text.serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
    let text = String::deserialize(deserializer)?;
    serde_json::from_str(&text).map_err(serde::de::Error::custom)
}
