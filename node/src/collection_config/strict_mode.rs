//! Qdrant's `strict_mode_config` (v1.18): the limits a collection sets on the requests it
//! serves. This module owns the type, its validation and how it is read back from storage;
//! the checks that enforce it live in `api::rest::strict_mode`.
//!
//! Every limit applies only while `enabled` is `true`; a config with `enabled` absent or
//! `false` is stored and reported, and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A collection's strict mode, in Qdrant's JSON shape. Unknown fields are refused, so a
/// misspelt limit is an error instead of a limit silently not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrictModeConfig {
    /// Whether the limits below are enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Largest `limit` a read may ask for (a grouped read: `limit * group_size`; a distance
    /// matrix: `sample * limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_query_limit: Option<usize>,
    /// Largest `timeout` (seconds) a request may give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout: Option<usize>,
    /// `false`: read filters may only use payload keys with a fitting payload index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unindexed_filtering_retrieve: Option<bool>,
    /// `false`: filters of updates (delete, payload changes by filter) may only use payload
    /// keys with a fitting payload index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unindexed_filtering_update: Option<bool>,
    /// Largest `params.hnsw_ef` of a search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_max_hnsw_ef: Option<usize>,
    /// `false`: exact (full-scan) searches and exact counts are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_allow_exact: Option<bool>,
    /// Largest `params.quantization.oversampling` of a search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_max_oversampling: Option<f64>,
    /// Most points in one upsert or vector update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert_max_batchsize: Option<usize>,
    /// Most searches in one batch request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_max_batchsize: Option<usize>,
    /// Writes that add vectors are refused once the collection's vectors take this many
    /// bytes (estimated; replicas not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_collection_vector_size_bytes: Option<usize>,
    /// Read cost units per minute on each peer (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_rate_limit: Option<usize>,
    /// Written points per minute on each peer (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_rate_limit: Option<usize>,
    /// Writes that add payload are refused once the collection's payloads take this many
    /// bytes (estimated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_collection_payload_size_bytes: Option<usize>,
    /// Writes that add points are refused once the collection holds this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_points_count: Option<usize>,
    /// Most conditions in one filter, nested ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_max_conditions: Option<usize>,
    /// Largest condition input (values of a `match.any` / `match.except`, ids of a `has_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_max_size: Option<usize>,
    /// Per multivector name: most sub-vectors in one written multivector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivector_config: Option<BTreeMap<String, StrictModeMultivector>>,
    /// Per sparse vector name: most non-zero entries in one written sparse vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_config: Option<BTreeMap<String, StrictModeSparse>>,
    /// Most payload indexes the collection may declare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_index_count: Option<usize>,
    /// Writes that add data are refused while this process's resident memory is at or above
    /// this percentage (1-100) of the machine's (or the cgroup's) memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_resident_memory_percent: Option<u8>,
    /// Writes that add data are refused while the file system holding the node's data is
    /// filled to this percentage (1-100) or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_usage_percent: Option<u8>,
}

/// The strict mode of one multivector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrictModeMultivector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vectors: Option<usize>,
}

/// The strict mode of one sparse vector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrictModeSparse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl StrictModeConfig {
    /// Whether the limits apply (`enabled: true`).
    pub fn is_enabled(&self) -> bool {
        self.enabled == Some(true)
    }

    /// Qdrant's ranges: a limit that would refuse everything (`0` where Qdrant requires at
    /// least 1) or a percentage outside 1-100 is an error naming the field.
    ///
    /// Checked where a client sets the configuration (create, update), never when a stored
    /// one is read or the cluster log replayed: a configuration accepted before this type
    /// existed must apply the same way after an upgrade.
    pub fn validate(&self) -> Result<(), String> {
        let at_least_one = [
            ("max_query_limit", self.max_query_limit),
            ("max_timeout", self.max_timeout),
            ("read_rate_limit", self.read_rate_limit),
            ("write_rate_limit", self.write_rate_limit),
            ("max_points_count", self.max_points_count),
        ];
        for (field, value) in at_least_one {
            if value == Some(0) {
                return Err(format!(
                    "strict_mode_config.{field}: value 0 invalid, must be 1 or larger"
                ));
            }
        }
        for (name, m) in self.multivector_config.iter().flatten() {
            if m.max_vectors == Some(0) {
                return Err(format!(
                    "strict_mode_config.multivector_config.{name}.max_vectors: value 0 invalid, \
                     must be 1 or larger"
                ));
            }
        }
        for (name, s) in self.sparse_config.iter().flatten() {
            if s.max_length == Some(0) {
                return Err(format!(
                    "strict_mode_config.sparse_config.{name}.max_length: value 0 invalid, must \
                     be 1 or larger"
                ));
            }
        }
        let percentages = [
            (
                "max_resident_memory_percent",
                self.max_resident_memory_percent,
            ),
            ("max_disk_usage_percent", self.max_disk_usage_percent),
        ];
        for (field, value) in percentages {
            if let Some(v) = value
                && !(1..=100).contains(&v)
            {
                return Err(format!(
                    "strict_mode_config.{field}: value {v} invalid, must be from 1 to 100"
                ));
            }
        }
        Ok(())
    }
}

/// Reads the stored `strict_mode_config` of a collection. Before the type existed, the field
/// held whatever JSON the create request carried, so a stored value may have fields this type
/// refuses: those are dropped (with a warning naming them) instead of failing to load the
/// collection, and a value that is not an object at all reads as no strict mode.
pub fn from_stored<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<StrictModeConfig>, D::Error> {
    Ok(lenient(Value::deserialize(deserializer)?))
}

fn lenient(value: Value) -> Option<StrictModeConfig> {
    if value.is_null() {
        return None;
    }
    if let Ok(config) = serde_json::from_value::<StrictModeConfig>(value.clone()) {
        return Some(config);
    }
    let Value::Object(map) = value else {
        tracing::warn!(stored = %value, "stored strict_mode_config is not an object; ignored");
        return None;
    };
    let (kept, dropped): (
        serde_json::Map<String, Value>,
        serde_json::Map<String, Value>,
    ) = map.into_iter().partition(|(k, v)| {
        let one = serde_json::Map::from_iter([(k.clone(), v.clone())]);
        serde_json::from_value::<StrictModeConfig>(Value::Object(one)).is_ok()
    });
    let dropped: Vec<&String> = dropped.keys().collect();
    tracing::warn!(
        ?dropped,
        "stored strict_mode_config has fields Shoal does not know or cannot read; they are ignored"
    );
    serde_json::from_value(Value::Object(kept)).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<StrictModeConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn every_field_of_qdrant_1_18_round_trips() {
        let full = json!({
            "enabled": true,
            "max_query_limit": 10,
            "max_timeout": 2,
            "unindexed_filtering_retrieve": false,
            "unindexed_filtering_update": false,
            "search_max_hnsw_ef": 3,
            "search_allow_exact": false,
            "search_max_oversampling": 1.5,
            "upsert_max_batchsize": 5,
            "search_max_batchsize": 6,
            "max_collection_vector_size_bytes": 240,
            "read_rate_limit": 7,
            "write_rate_limit": 8,
            "max_collection_payload_size_bytes": 9000,
            "max_points_count": 11,
            "filter_max_conditions": 12,
            "condition_max_size": 13,
            "multivector_config": {"colbert": {"max_vectors": 5}},
            "sparse_config": {"text": {"max_length": 4}},
            "max_payload_index_count": 2,
            "max_resident_memory_percent": 90,
            "max_disk_usage_percent": 95,
        });
        let config = parse(full.clone()).unwrap();
        assert!(config.is_enabled());
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(serde_json::to_value(&config).unwrap(), full);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse(json!({"enabled": true, "max_query_limt": 3})).unwrap_err();
        assert!(e.contains("max_query_limt"), "{e}");
        let e = parse(json!({"sparse_config": {"s": {"max_len": 3}}})).unwrap_err();
        assert!(e.contains("max_len"), "{e}");
    }

    #[test]
    fn absent_fields_are_not_reported() {
        let config = parse(json!({"enabled": false})).unwrap();
        assert!(!config.is_enabled());
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({"enabled": false})
        );
        assert!(!parse(json!({})).unwrap().is_enabled());
    }

    #[test]
    fn validation_follows_qdrant_ranges() {
        for field in [
            "max_query_limit",
            "max_timeout",
            "read_rate_limit",
            "write_rate_limit",
            "max_points_count",
        ] {
            let e = parse(json!({ field: 0 })).unwrap().validate().unwrap_err();
            assert!(e.contains(field) && e.contains("1 or larger"), "{e}");
            assert_eq!(parse(json!({ field: 1 })).unwrap().validate(), Ok(()));
        }
        // Zero is a valid limit where Qdrant allows it: no payload index at all, no condition.
        for field in [
            "max_payload_index_count",
            "filter_max_conditions",
            "condition_max_size",
            "upsert_max_batchsize",
            "search_max_hnsw_ef",
        ] {
            assert_eq!(parse(json!({ field: 0 })).unwrap().validate(), Ok(()));
        }
        let bad = [
            json!({"multivector_config": {"m": {"max_vectors": 0}}}),
            json!({"sparse_config": {"s": {"max_length": 0}}}),
            json!({"max_resident_memory_percent": 0}),
            json!({"max_disk_usage_percent": 101}),
        ];
        for v in bad {
            assert!(parse(v.clone()).unwrap().validate().is_err(), "{v}");
        }
        assert!(parse(json!({"max_query_limit": -1})).is_err());
    }

    #[test]
    fn stored_values_load_leniently() {
        #[derive(Deserialize)]
        struct Holder {
            #[serde(default, deserialize_with = "from_stored")]
            strict: Option<StrictModeConfig>,
        }
        let load = |v: Value| serde_json::from_value::<Holder>(v).unwrap().strict;
        assert_eq!(load(json!({})), None);
        assert_eq!(load(json!({"strict": null})), None);
        assert_eq!(load(json!({"strict": "yes"})), None);
        let kept = load(json!({"strict": {
            "enabled": true,
            "max_query_limit": 4,
            "max_timeout": "soon",
            "some_future_field": 1,
        }}))
        .unwrap();
        assert!(kept.is_enabled());
        assert_eq!(kept.max_query_limit, Some(4));
        assert_eq!(kept.max_timeout, None);
    }
}
