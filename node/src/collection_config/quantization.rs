//! `quantization_config` as Qdrant reads it: scalar int8 quantization is applied (sealed
//! segments keep codes, see `index::quantization`); product and binary are accepted and
//! stored, and searches use the original vectors for them.

use serde_json::Value;

/// Qdrant's scalar quantization settings of one vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarQuantization {
    /// The share of values (in `[0.5, 1]`) the code range covers, centred on the median;
    /// `None` covers every value (Qdrant's default).
    pub quantile: Option<f32>,
    /// Keep the codes on the heap even when the vector is `on_disk` (Qdrant's `always_ram`).
    pub always_ram: bool,
}

/// A `quantization_config` as Qdrant reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantization {
    Scalar(ScalarQuantization),
    /// Accepted and stored; searches use the original vectors.
    Product,
    /// Accepted and stored; searches use the original vectors.
    Binary,
}

impl Quantization {
    /// Parses a `quantization_config` object. Errors (for the API's 400) name the field:
    /// a scalar `type` other than `int8`, a `quantile` outside `[0.5, 1]`, a product
    /// `compression` Qdrant does not have, or not exactly one of `scalar`, `product`, `binary`.
    pub fn parse(value: &Value) -> Result<Quantization, String> {
        let Value::Object(map) = value else {
            return Err("quantization_config must be an object".into());
        };
        let mut entries = map.iter();
        let (Some((kind, body)), None) = (entries.next(), entries.next()) else {
            return Err(
                "quantization_config must hold exactly one of `scalar`, `product`, `binary`".into(),
            );
        };
        let body = body
            .as_object()
            .ok_or_else(|| format!("quantization_config.{kind} must be an object"))?;
        let always_ram = match body.get("always_ram") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(format!(
                    "quantization_config.{kind}.always_ram must be a bool"
                ));
            }
        };
        match kind.as_str() {
            "scalar" => {
                match body.get("type").and_then(Value::as_str) {
                    Some("int8") => {}
                    _ => return Err("quantization_config.scalar.type must be \"int8\"".into()),
                }
                let quantile = match body.get("quantile") {
                    None | Some(Value::Null) => None,
                    Some(q) => {
                        let q = q.as_f64().filter(|q| (0.5..=1.0).contains(q)).ok_or(
                            "quantization_config.scalar.quantile must be between 0.5 and 1",
                        )?;
                        Some(q as f32)
                    }
                };
                Ok(Quantization::Scalar(ScalarQuantization {
                    quantile,
                    always_ram,
                }))
            }
            "product" => match body.get("compression").and_then(Value::as_str) {
                Some("x4" | "x8" | "x16" | "x32" | "x64") => Ok(Quantization::Product),
                _ => Err(
                    "quantization_config.product.compression must be one of x4, x8, x16, x32, x64"
                        .into(),
                ),
            },
            "binary" => Ok(Quantization::Binary),
            other => Err(format!(
                "quantization_config: unknown quantization `{other}` (scalar, product or binary)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_parse_as_qdrant_reads_them() {
        assert_eq!(
            Quantization::parse(&json!({"scalar": {"type": "int8"}})).unwrap(),
            Quantization::Scalar(ScalarQuantization {
                quantile: None,
                always_ram: false
            })
        );
        assert_eq!(
            Quantization::parse(
                &json!({"scalar": {"type": "int8", "quantile": 0.99, "always_ram": true}})
            )
            .unwrap(),
            Quantization::Scalar(ScalarQuantization {
                quantile: Some(0.99),
                always_ram: true
            })
        );
        assert_eq!(
            Quantization::parse(&json!({"product": {"compression": "x16"}})).unwrap(),
            Quantization::Product
        );
        assert_eq!(
            Quantization::parse(&json!({"binary": {"always_ram": true}})).unwrap(),
            Quantization::Binary
        );
        for bad in [
            json!({"scalar": {"type": "int4"}}),
            json!({"scalar": {"type": "int8", "quantile": 0.2}}),
            json!({"scalar": {"type": "int8", "always_ram": "yes"}}),
            json!({"product": {"compression": "x3"}}),
            json!({"scalar": {"type": "int8"}, "binary": {}}),
            json!({}),
            json!({"turbo": {}}),
            json!(3),
        ] {
            assert!(Quantization::parse(&bad).is_err(), "{bad}");
        }
    }
}
