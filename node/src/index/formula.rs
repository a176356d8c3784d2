//! Qdrant's score-boosting formulas: the `{"formula": <expression>, "defaults": {...}}` query of
//! the query API, parsed from its REST JSON form and evaluated for one point at a time.
//!
//! This module follows Qdrant 1.18's formula semantics, as its reference implementation
//! (qdrant-client's local mode, `hybrid/formula.py`) and Qdrant's own scorer define them. It owns
//! the expression grammar, the resolution of variables (prefetch scores, payload values and the
//! formula's defaults) and the arithmetic; it knows nothing about prefetches, shards or storage:
//! the caller hands it one point's id, payload, vectors and prefetch scores.
//!
//! Semantics (see the tests for each):
//! - A number is a constant. `"$score"` (≡ `"$score[0]"`) and `"$score[i]"` are the point's score
//!   in prefetch `i`, else the default given for that variable, else 0. Any other string is a
//!   payload key: the value there (a single value, or an array of one value), else the default
//!   for the key; it must be a number (not a bool).
//! - Any filter condition is 1 when the point matches it and 0 otherwise.
//! - `mult` stops at the first zero factor and `div` at a zero numerator, without evaluating the
//!   rest; dividing by zero gives `by_zero_default`, or an error without one.
//! - `sqrt`, `pow`, `exp`, `log10`, `ln` and `div` fail on a result that is not a finite
//!   number, as does a final value that does not fit an `f32`.
//! - `geo_distance` is the haversine distance in metres; `datetime` and `datetime_key` are POSIX
//!   timestamps in seconds (a datetime without a zone is UTC).
//! - `lin_decay`, `exp_decay` and `gauss_decay` take `x`, `target` (default 0), `midpoint` (in
//!   (0, 1), default 0.5) and `scale` (positive, default 1), and equal `midpoint` where
//!   `|x - target| == scale`.
//!
//! Evaluation is done in `f64` and the result cast to `f32`, as Qdrant does. Parsing bounds an
//! expression's depth and size, so evaluating one visits at most [`MAX_NODES`] expressions.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::index::filter::{Condition, Filter, HasVector, parse_datetime_micros};
use crate::index::geo::{GeoPoint, geo_distance};
use crate::index::payload_path::JsonPath;
use crate::types::{Payload, PointId};

/// The deepest nesting of expressions a formula may have (the root is at depth 1).
pub const MAX_DEPTH: usize = 64;

/// The most expressions (operators, constants, variables and conditions) one formula may hold.
pub const MAX_NODES: usize = 1024;

/// The score of a point that is not in a prefetch's results, when no default is given.
const DEFAULT_SCORE: f64 = 0.0;
const DEFAULT_DECAY_TARGET: f64 = 0.0;
const DEFAULT_DECAY_MIDPOINT: f64 = 0.5;
const DEFAULT_DECAY_SCALE: f64 = 1.0;

/// The operators of the expression grammar, each the single key of its JSON object.
const OPERATORS: [&str; 16] = [
    "mult",
    "sum",
    "neg",
    "abs",
    "div",
    "sqrt",
    "pow",
    "exp",
    "log10",
    "ln",
    "geo_distance",
    "datetime",
    "datetime_key",
    "lin_decay",
    "exp_decay",
    "gauss_decay",
];

/// The keys that make an object a filter condition rather than an operator.
const CONDITION_KEYS: [&str; 10] = [
    "key",
    "is_empty",
    "is_null",
    "has_id",
    "nested",
    "has_vector",
    "must",
    "should",
    "must_not",
    "min_should",
];

/// A parsed formula: the expression tree and the defaults of its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    expression: Expr,
    /// Defaults of `$score[i]`, by prefetch index. A default that is not a number is left out
    /// (Qdrant then uses score 0).
    score_defaults: HashMap<usize, f64>,
    /// Defaults of payload variables, by key.
    payload_defaults: HashMap<JsonPath, Value>,
}

/// One node of the expression tree.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Constant(f64),
    /// The point's score in prefetch `i`.
    Score(usize),
    /// A number in the payload.
    Payload(JsonPath),
    /// A condition, kept as a filter with that one `must` condition.
    Condition(Box<Filter>),
    GeoDistance {
        origin: GeoPoint,
        to: JsonPath,
    },
    /// A datetime constant, already as seconds since the epoch.
    Datetime(f64),
    /// A datetime in the payload.
    DatetimeKey(JsonPath),
    Mult(Vec<Expr>),
    Sum(Vec<Expr>),
    Neg(Box<Expr>),
    Abs(Box<Expr>),
    Div {
        left: Box<Expr>,
        right: Box<Expr>,
        by_zero_default: Option<f64>,
    },
    Sqrt(Box<Expr>),
    Pow {
        base: Box<Expr>,
        exponent: Box<Expr>,
    },
    Exp(Box<Expr>),
    Log10(Box<Expr>),
    Ln(Box<Expr>),
    Decay {
        kind: DecayKind,
        x: Box<Expr>,
        target: Option<Box<Expr>>,
        /// The constant part of the decay function, from `midpoint` and `scale`.
        lambda: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecayKind {
    Lin,
    Exp,
    Gauss,
}

impl DecayKind {
    fn name(self) -> &'static str {
        match self {
            DecayKind::Lin => "lin_decay",
            DecayKind::Exp => "exp_decay",
            DecayKind::Gauss => "gauss_decay",
        }
    }

    /// The decay's `lambda` for a midpoint and scale that are already checked.
    fn lambda(self, midpoint: f64, scale: f64) -> f64 {
        match self {
            DecayKind::Lin => (1.0 - midpoint) / scale,
            DecayKind::Exp => midpoint.ln() / scale,
            DecayKind::Gauss => midpoint.ln() / (scale * scale),
        }
    }

    /// The decay of `x` around `target`: 1 at the target, `midpoint` at `scale` away, in [0, 1].
    fn apply(self, x: f64, target: f64, lambda: f64) -> f64 {
        match self {
            DecayKind::Lin => (-lambda * (x - target).abs() + 1.0).max(0.0),
            DecayKind::Exp => (lambda * (x - target).abs()).exp(),
            DecayKind::Gauss => {
                let diff = x - target;
                (lambda * diff * diff).exp()
            }
        }
    }
}

/// A variable as written in a formula or as a key of its defaults.
enum Variable {
    Score(usize),
    Payload(JsonPath),
}

/// Reads `$score`, `$score[i]` or a payload key.
fn parse_variable(text: &str) -> Result<Variable, String> {
    let Some(reserved) = text.strip_prefix('$') else {
        return text
            .parse()
            .map(Variable::Payload)
            .map_err(|e| format!("invalid variable `{text}`: {e}"));
    };
    let Some(index) = reserved.strip_prefix("score") else {
        return Err(format!(
            "unknown reserved variable `{text}`: the only one is `$score` (or `$score[N]` for \
             prefetch N)"
        ));
    };
    if index.is_empty() {
        return Ok(Variable::Score(0));
    }
    index
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .map(Variable::Score)
        .ok_or_else(|| {
            format!(
                "invalid score variable `{text}`: expected `$score` or `$score[N]`, with N the \
                 index of a prefetch"
            )
        })
}

impl Formula {
    /// Parses `{"formula": <expr>, "defaults": {...}}`'s two parts.
    ///
    /// Rejects unknown operators, malformed variables and conditions, decay parameters out of
    /// range, invalid datetimes and origins, defaults whose key is not a variable, and
    /// expressions nested deeper than [`MAX_DEPTH`] or holding more than [`MAX_NODES`] nodes.
    pub fn parse(
        expression: &Value,
        defaults: Option<&Map<String, Value>>,
    ) -> Result<Formula, String> {
        let mut parser = Parser {
            nodes: 0,
            path: String::from("formula"),
        };
        let expression = parser.expr(expression, 1)?;
        let mut score_defaults = HashMap::new();
        let mut payload_defaults = HashMap::new();
        for (key, value) in defaults.into_iter().flatten() {
            match parse_variable(key) {
                Ok(Variable::Score(index)) => {
                    if let Some(score) = value.as_f64() {
                        score_defaults.insert(index, score);
                    }
                }
                Ok(Variable::Payload(path)) => {
                    payload_defaults.insert(path, value.clone());
                }
                Err(e) => return Err(format!("invalid formula defaults: {e}")),
            }
        }
        Ok(Formula {
            expression,
            score_defaults,
            payload_defaults,
        })
    }

    /// Evaluates for one point: `scores[i]` is the point's score in prefetch i (None when the
    /// point is not in that prefetch's results).
    ///
    /// Errors when a payload variable has no usable value, or when a step or the final score is
    /// not a finite number; the message says which, in Qdrant's words.
    pub fn evaluate(
        &self,
        id: PointId,
        payload: &Payload,
        has_vector: HasVector<'_>,
        scores: &[Option<f32>],
    ) -> Result<f32, String> {
        let point = PointContext {
            formula: self,
            id,
            payload,
            has_vector,
            scores,
        };
        let value = point.eval(&self.expression)?;
        let score = value as f32;
        if score.is_finite() {
            Ok(score)
        } else {
            Err(non_finite(format_args!("{value:?} as f32 = {score:?}")))
        }
    }

    /// What the formula reads from payloads, in expression order (defaults aside): for callers
    /// that check payload indexes, such as strict mode.
    pub fn payload_uses(&self) -> Vec<PayloadUse<'_>> {
        let mut out = Vec::new();
        self.expression.payload_uses(&mut out);
        out
    }
}

/// One way a formula reads the payload (see [`Formula::payload_uses`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PayloadUse<'a> {
    /// A number at a key (a payload variable).
    Number(&'a JsonPath),
    /// A geo point at a key (`geo_distance`'s `to`).
    GeoPoint(&'a JsonPath),
    /// A datetime at a key (`datetime_key`).
    Datetime(&'a JsonPath),
    /// A filter condition, kept as a filter with that one `must` condition.
    Condition(&'a Filter),
}

impl Expr {
    fn payload_uses<'a>(&'a self, out: &mut Vec<PayloadUse<'a>>) {
        match self {
            Expr::Constant(_) | Expr::Score(_) | Expr::Datetime(_) => {}
            Expr::Payload(key) => out.push(PayloadUse::Number(key)),
            Expr::Condition(filter) => out.push(PayloadUse::Condition(filter)),
            Expr::GeoDistance { to, .. } => out.push(PayloadUse::GeoPoint(to)),
            Expr::DatetimeKey(key) => out.push(PayloadUse::Datetime(key)),
            Expr::Mult(xs) | Expr::Sum(xs) => xs.iter().for_each(|x| x.payload_uses(out)),
            Expr::Neg(x)
            | Expr::Abs(x)
            | Expr::Sqrt(x)
            | Expr::Exp(x)
            | Expr::Log10(x)
            | Expr::Ln(x) => x.payload_uses(out),
            Expr::Div { left, right, .. } => {
                left.payload_uses(out);
                right.payload_uses(out);
            }
            Expr::Pow { base, exponent } => {
                base.payload_uses(out);
                exponent.payload_uses(out);
            }
            Expr::Decay { x, target, .. } => {
                x.payload_uses(out);
                if let Some(t) = target {
                    t.payload_uses(out);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Walks the JSON form once, counting nodes and remembering where it is for error messages.
struct Parser {
    nodes: usize,
    /// Where the expression being parsed sits, like `formula.sum[1].div.left`.
    path: String,
}

impl Parser {
    fn error(&self, reason: impl fmt::Display) -> String {
        format!("invalid formula at `{}`: {reason}", self.path)
    }

    /// Parses the expression at `suffix` (appended to the current path) one level deeper.
    fn child(
        &mut self,
        suffix: fmt::Arguments<'_>,
        value: &Value,
        depth: usize,
    ) -> Result<Expr, String> {
        let len = self.path.len();
        fmt::Write::write_fmt(&mut self.path, suffix).map_err(|e| e.to_string())?;
        let result = self.expr(value, depth + 1);
        self.path.truncate(len);
        result
    }

    fn boxed(
        &mut self,
        suffix: fmt::Arguments<'_>,
        value: &Value,
        depth: usize,
    ) -> Result<Box<Expr>, String> {
        self.child(suffix, value, depth).map(Box::new)
    }

    fn expr(&mut self, value: &Value, depth: usize) -> Result<Expr, String> {
        if depth > MAX_DEPTH {
            return Err(self.error(format_args!(
                "the formula is nested more than {MAX_DEPTH} levels deep"
            )));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.error(format_args!(
                "the formula has more than {MAX_NODES} expressions"
            )));
        }
        match value {
            Value::Number(n) => n
                .as_f64()
                .map(Expr::Constant)
                .ok_or_else(|| self.error(format_args!("`{n}` is not a usable number"))),
            Value::String(s) => match parse_variable(s).map_err(|e| self.error(e))? {
                Variable::Score(index) => Ok(Expr::Score(index)),
                Variable::Payload(path) => Ok(Expr::Payload(path)),
            },
            Value::Object(map) => self.object(value, map, depth),
            Value::Null | Value::Bool(_) | Value::Array(_) => Err(self.error(format_args!(
                "expected an expression (a number, a variable such as `$score` or a payload key, \
                 a condition or an operator object), got {}",
                describe(value)
            ))),
        }
    }

    /// An operator object or a condition; `value` is the object `map` again, as JSON.
    fn object(
        &mut self,
        value: &Value,
        map: &Map<String, Value>,
        depth: usize,
    ) -> Result<Expr, String> {
        let operator = map.keys().find(|k| OPERATORS.contains(&k.as_str()));
        match operator {
            Some(op) if map.len() == 1 => self.operator(op, &map[op], depth),
            Some(op) => {
                let others: Vec<&str> =
                    map.keys().map(String::as_str).filter(|k| k != op).collect();
                Err(self.error(format_args!(
                    "`{op}` must be the only field of its object, found also {others:?}"
                )))
            }
            None if map.is_empty() || map.keys().any(|k| CONDITION_KEYS.contains(&k.as_str())) => {
                self.condition(value)
            }
            None => {
                let fields: Vec<&str> = map.keys().map(String::as_str).collect();
                Err(self.error(format_args!(
                    "unknown expression with fields {fields:?}: expected a condition or one of \
                     the operators {}",
                    OPERATORS.join(", ")
                )))
            }
        }
    }

    fn condition(&self, value: &Value) -> Result<Expr, String> {
        let condition = Condition::deserialize(value)
            .map_err(|e| self.error(format_args!("invalid condition: {e}")))?;
        let filter = Filter {
            must: Some(vec![condition]),
            ..Filter::default()
        };
        filter.validate().map_err(|e| {
            let reason = e.strip_prefix("`must` condition 0: ").unwrap_or(&e);
            self.error(format_args!("invalid condition: {reason}"))
        })?;
        Ok(Expr::Condition(Box::new(filter)))
    }

    fn operator(&mut self, op: &str, arg: &Value, depth: usize) -> Result<Expr, String> {
        Ok(match op {
            "mult" | "sum" => {
                let Value::Array(items) = arg else {
                    return Err(self.error(format_args!(
                        "`{op}` takes an array of expressions, got {}",
                        describe(arg)
                    )));
                };
                let parsed = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.child(format_args!(".{op}[{i}]"), item, depth))
                    .collect::<Result<Vec<_>, _>>()?;
                if op == "mult" {
                    Expr::Mult(parsed)
                } else {
                    Expr::Sum(parsed)
                }
            }
            "neg" => Expr::Neg(self.boxed(format_args!(".neg"), arg, depth)?),
            "abs" => Expr::Abs(self.boxed(format_args!(".abs"), arg, depth)?),
            "sqrt" => Expr::Sqrt(self.boxed(format_args!(".sqrt"), arg, depth)?),
            "exp" => Expr::Exp(self.boxed(format_args!(".exp"), arg, depth)?),
            "log10" => Expr::Log10(self.boxed(format_args!(".log10"), arg, depth)?),
            "ln" => Expr::Ln(self.boxed(format_args!(".ln"), arg, depth)?),
            "div" => {
                let params = self.params(op, arg, &["left", "right"], &["by_zero_default"])?;
                Expr::Div {
                    left: self.boxed(format_args!(".div.left"), required(params, "left"), depth)?,
                    right: self.boxed(
                        format_args!(".div.right"),
                        required(params, "right"),
                        depth,
                    )?,
                    by_zero_default: self.optional_number(op, params, "by_zero_default")?,
                }
            }
            "pow" => {
                let params = self.params(op, arg, &["base", "exponent"], &[])?;
                Expr::Pow {
                    base: self.boxed(format_args!(".pow.base"), required(params, "base"), depth)?,
                    exponent: self.boxed(
                        format_args!(".pow.exponent"),
                        required(params, "exponent"),
                        depth,
                    )?,
                }
            }
            "geo_distance" => {
                let params = self.params(op, arg, &["origin", "to"], &[])?;
                let origin = GeoPoint::deserialize(required(params, "origin")).map_err(|e| {
                    self.error(format_args!(
                        "`geo_distance.origin` must be a geo point {{\"lon\": .., \"lat\": ..}}: {e}"
                    ))
                })?;
                if !(-180.0..=180.0).contains(&origin.lon) || !(-90.0..=90.0).contains(&origin.lat)
                {
                    return Err(self.error(format_args!(
                        "`geo_distance.origin`: longitude must be in [-180, 180] and latitude in \
                         [-90, 90], got ({}, {})",
                        origin.lon, origin.lat
                    )));
                }
                Expr::GeoDistance {
                    origin,
                    to: self.key(op, required(params, "to"), "geo_distance.to")?,
                }
            }
            "datetime" => {
                let Value::String(text) = arg else {
                    return Err(self.error(format_args!(
                        "`datetime` takes a datetime string, got {}",
                        describe(arg)
                    )));
                };
                let micros = parse_datetime_micros(text).ok_or_else(|| {
                    self.error(format_args!(
                        "`{text}` is not a datetime: expected RFC 3339, like \
                         `2023-02-08T10:49:00Z`, `2023-02-08 10:49:00+01:00` or `2023-02-08`"
                    ))
                })?;
                Expr::Datetime(micros_to_seconds(micros))
            }
            "datetime_key" => Expr::DatetimeKey(self.key(op, arg, "datetime_key")?),
            "lin_decay" => self.decay(DecayKind::Lin, arg, depth)?,
            "exp_decay" => self.decay(DecayKind::Exp, arg, depth)?,
            "gauss_decay" => self.decay(DecayKind::Gauss, arg, depth)?,
            other => return Err(self.error(format_args!("unknown operator `{other}`"))),
        })
    }

    fn decay(&mut self, kind: DecayKind, arg: &Value, depth: usize) -> Result<Expr, String> {
        let name = kind.name();
        let params = self.params(name, arg, &["x"], &["target", "midpoint", "scale"])?;
        let midpoint = self
            .optional_number(name, params, "midpoint")?
            .unwrap_or(DEFAULT_DECAY_MIDPOINT);
        if midpoint <= 0.0 || midpoint >= 1.0 {
            return Err(self.error(format_args!(
                "`{name}.midpoint` must be between 0 and 1 (exclusive), got {midpoint}"
            )));
        }
        let scale = self
            .optional_number(name, params, "scale")?
            .unwrap_or(DEFAULT_DECAY_SCALE);
        if scale <= 0.0 {
            return Err(self.error(format_args!(
                "`{name}.scale` must be a positive number, got {scale}"
            )));
        }
        let x = self.boxed(format_args!(".{name}.x"), required(params, "x"), depth)?;
        let target = match params.get("target") {
            None | Some(Value::Null) => None,
            Some(target) => Some(self.boxed(format_args!(".{name}.target"), target, depth)?),
        };
        Ok(Expr::Decay {
            kind,
            x,
            target,
            lambda: kind.lambda(midpoint, scale),
        })
    }

    /// The object of an operator's parameters, checked to hold every `required` field and no
    /// field outside `required` and `optional`.
    fn params<'v>(
        &self,
        op: &str,
        arg: &'v Value,
        required: &[&str],
        optional: &[&str],
    ) -> Result<&'v Map<String, Value>, String> {
        let Value::Object(map) = arg else {
            return Err(self.error(format_args!(
                "`{op}` takes an object with {}, got {}",
                fields_list(required, optional),
                describe(arg)
            )));
        };
        if let Some(missing) = required.iter().find(|f| !map.contains_key(**f)) {
            return Err(self.error(format_args!(
                "`{op}` is missing `{missing}`: it takes {}",
                fields_list(required, optional)
            )));
        }
        if let Some(unknown) = map
            .keys()
            .find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
        {
            return Err(self.error(format_args!(
                "unknown field `{op}.{unknown}`: `{op}` takes {}",
                fields_list(required, optional)
            )));
        }
        Ok(map)
    }

    fn optional_number(
        &self,
        op: &str,
        params: &Map<String, Value>,
        field: &str,
    ) -> Result<Option<f64>, String> {
        match params.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| {
                self.error(format_args!("`{op}.{field}`: `{n}` is not a usable number"))
            }),
            Some(other) => Err(self.error(format_args!(
                "`{op}.{field}` must be a number, got {}",
                describe(other)
            ))),
        }
    }

    fn key(&self, op: &str, value: &Value, what: &str) -> Result<JsonPath, String> {
        let Value::String(text) = value else {
            return Err(self.error(format_args!(
                "`{what}` must be a payload key, got {}",
                describe(value)
            )));
        };
        text.parse()
            .map_err(|e| self.error(format_args!("`{op}`: {e}")))
    }
}

/// A field [`Parser::params`] has checked is present.
fn required<'v>(params: &'v Map<String, Value>, field: &str) -> &'v Value {
    params.get(field).unwrap_or(&Value::Null)
}

fn fields_list(required: &[&str], optional: &[&str]) -> String {
    let mut list: Vec<String> = required.iter().map(|f| format!("`{f}`")).collect();
    list.extend(optional.iter().map(|f| format!("optional `{f}`")));
    list.join(", ")
}

/// A short description of a JSON value's kind, for error messages (never the whole value).
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn micros_to_seconds(micros: i64) -> f64 {
    // Exact for ±285 years around 1970 (53-bit mantissa); one correctly rounded division after.
    micros as f64 / 1_000_000.0
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

fn non_finite(expression: impl fmt::Display) -> String {
    format!("The expression {expression} produced a non-finite number")
}

/// `value` if finite, else the non-finite error for `expression`.
fn finite(value: f64, expression: impl FnOnce() -> String) -> Result<f64, String> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(non_finite(expression()))
    }
}

/// A payload variable that holds a value of the wrong kind.
fn type_error(key: &JsonPath, expected: &str, reason: impl fmt::Display) -> String {
    format!(
        "Expected {expected} value for {key} in the payload and/or in the formula defaults. \
         Error: {reason}"
    )
}

/// A payload variable with no value in the payload nor in the defaults.
fn missing(key: &JsonPath, expected: &str) -> String {
    type_error(
        key,
        expected,
        format_args!("No value found for {key} in the payload nor the formula defaults"),
    )
}

/// What a payload variable resolves to.
enum Found<'a> {
    /// One value (an array of one value counts as that value).
    One(&'a Value),
    /// Several values, which no variable accepts.
    Many,
}

/// Everything one evaluation reads.
struct PointContext<'a> {
    formula: &'a Formula,
    id: PointId,
    payload: &'a Payload,
    has_vector: HasVector<'a>,
    scores: &'a [Option<f32>],
}

impl<'a> PointContext<'a> {
    fn eval(&self, expr: &Expr) -> Result<f64, String> {
        match expr {
            Expr::Constant(c) => Ok(*c),
            Expr::Score(index) => Ok(self.score(*index)),
            Expr::Payload(key) => self.number(key),
            Expr::Condition(filter) => Ok(
                if filter.check_point(self.id, self.payload, self.has_vector) {
                    1.0
                } else {
                    0.0
                },
            ),
            Expr::GeoDistance { origin, to } => {
                let destination = match self.lookup(to) {
                    None => return Err(missing(to, "geo point")),
                    Some(Found::One(value)) => GeoPoint::from_value(value),
                    Some(Found::Many) => None,
                };
                destination
                    .map(|destination| geo_distance(*origin, destination))
                    .ok_or_else(|| {
                        type_error(
                            to,
                            "geo point",
                            "Value is not a geo point (an object with numeric `lon` and `lat`)",
                        )
                    })
            }
            Expr::Datetime(seconds) => Ok(*seconds),
            Expr::DatetimeKey(key) => self.datetime(key),
            Expr::Mult(factors) => {
                let mut product = 1.0;
                for factor in factors {
                    let value = self.eval(factor)?;
                    if value == 0.0 {
                        return Ok(0.0);
                    }
                    product *= value;
                }
                Ok(product)
            }
            Expr::Sum(terms) => terms
                .iter()
                .try_fold(0.0, |acc, term| Ok(acc + self.eval(term)?)),
            Expr::Neg(inner) => Ok(-self.eval(inner)?),
            Expr::Abs(inner) => Ok(self.eval(inner)?.abs()),
            Expr::Div {
                left,
                right,
                by_zero_default,
            } => {
                let left = self.eval(left)?;
                if left == 0.0 {
                    return Ok(0.0);
                }
                let right = self.eval(right)?;
                if right == 0.0
                    && let Some(default) = by_zero_default
                {
                    return Ok(*default);
                }
                let quotient = left / right;
                finite(quotient, || format!("{left:?}/{right:?} = {quotient:?}"))
            }
            Expr::Sqrt(inner) => {
                let value = self.eval(inner)?;
                let root = value.sqrt();
                finite(root, || format!("√{value:?} = {root:?}"))
            }
            Expr::Pow { base, exponent } => {
                let base = self.eval(base)?;
                let exponent = self.eval(exponent)?;
                let power = base.powf(exponent);
                finite(power, || format!("{base:?}^{exponent:?} = {power:?}"))
            }
            Expr::Exp(inner) => {
                let value = self.eval(inner)?;
                let exp = value.exp();
                finite(exp, || format!("exp({value:?}) = {exp:?}"))
            }
            Expr::Log10(inner) => {
                let value = self.eval(inner)?;
                let log = value.log10();
                finite(log, || format!("log10({value:?}) = {log:?}"))
            }
            Expr::Ln(inner) => {
                let value = self.eval(inner)?;
                let log = value.ln();
                finite(log, || format!("ln({value:?}) = {log:?}"))
            }
            Expr::Decay {
                kind,
                x,
                target,
                lambda,
            } => {
                let x = self.eval(x)?;
                let target = match target {
                    Some(target) => self.eval(target)?,
                    None => DEFAULT_DECAY_TARGET,
                };
                Ok(kind.apply(x, target, *lambda))
            }
        }
    }

    /// The point's score in prefetch `index`, else its numeric default, else 0.
    fn score(&self, index: usize) -> f64 {
        self.scores
            .get(index)
            .copied()
            .flatten()
            .map(f64::from)
            .or_else(|| self.formula.score_defaults.get(&index).copied())
            .unwrap_or(DEFAULT_SCORE)
    }

    /// The value of a payload variable: the payload's (a final array is read element by
    /// element), else the default's; one value, or an array of one value, is that value. A
    /// default of `null` or `[]` counts as no default, as in Qdrant's local mode.
    fn lookup(&self, key: &JsonPath) -> Option<Found<'a>> {
        let mut first = None;
        let several = key
            .try_for_each_value(self.payload, &mut |value| {
                if first.is_none() {
                    first = Some(value);
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            })
            .is_break();
        match (first, several) {
            (_, true) => return Some(Found::Many),
            (Some(value), false) => return Some(Found::One(value)),
            (None, false) => {}
        }
        match self.formula.payload_defaults.get(key)? {
            Value::Null => None,
            Value::Array(items) => match items.as_slice() {
                [] => None,
                [one] => Some(Found::One(one)),
                _ => Some(Found::Many),
            },
            other => Some(Found::One(other)),
        }
    }

    fn number(&self, key: &JsonPath) -> Result<f64, String> {
        match self.lookup(key) {
            None => Err(missing(key, "number")),
            // `as_f64` is `None` for booleans, which are not numbers here.
            Some(Found::One(value)) => value
                .as_f64()
                .ok_or_else(|| type_error(key, "number", "Value is not a number")),
            Some(Found::Many) => Err(type_error(key, "number", "Value is not a number")),
        }
    }

    fn datetime(&self, key: &JsonPath) -> Result<f64, String> {
        match self.lookup(key) {
            None => Err(missing(key, "datetime")),
            Some(Found::One(Value::String(text))) => parse_datetime_micros(text)
                .map(micros_to_seconds)
                .ok_or_else(|| {
                    type_error(
                        key,
                        "datetime",
                        format_args!("`{text}` is not in a supported date/time format"),
                    )
                }),
            Some(_) => Err(type_error(key, "datetime", "Value is not a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn formula(expression: Value) -> Formula {
        Formula::parse(&expression, None).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    fn formula_with(expression: Value, defaults: Value) -> Formula {
        let Value::Object(defaults) = defaults else {
            panic!("defaults must be an object")
        };
        Formula::parse(&expression, Some(&defaults)).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    fn parse_err(expression: Value) -> String {
        match Formula::parse(&expression, None) {
            Ok(parsed) => panic!("{expression} parsed as {parsed:?}"),
            Err(e) => e,
        }
    }

    fn payload(value: Value) -> Payload {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn no_vectors(_: &str) -> bool {
        false
    }

    /// Evaluates for point 1 with this payload and prefetch scores.
    fn eval_with(f: &Formula, p: Value, scores: &[Option<f32>]) -> Result<f32, String> {
        f.evaluate(PointId::Num(1), &payload(p), &no_vectors, scores)
    }

    fn eval(expression: Value) -> f32 {
        eval_with(&formula(expression.clone()), json!({}), &[])
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    #[test]
    fn payload_uses_list_every_key_the_formula_reads() {
        let f = formula(json!({"sum": [
            "$score",
            {"mult": ["price", {"key": "city", "match": {"value": "Berlin"}}]},
            {"geo_distance": {"origin": {"lat": 1.0, "lon": 2.0}, "to": "loc"}},
            {"gauss_decay": {"x": {"datetime_key": "updated"}, "target": {"neg": "base"}}},
            {"div": {"left": 1, "right": {"pow": {"base": "a.b", "exponent": 2}}}},
        ]}));
        let keys: Vec<String> = f
            .payload_uses()
            .iter()
            .map(|u| match u {
                PayloadUse::Number(k) => format!("number {k}"),
                PayloadUse::GeoPoint(k) => format!("geo {k}"),
                PayloadUse::Datetime(k) => format!("datetime {k}"),
                PayloadUse::Condition(c) => format!("condition {c}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "number price",
                r#"condition {"must":[{"key":"city","match":{"value":"Berlin"}}]}"#,
                "geo loc",
                "datetime updated",
                "number base",
                "number a.b",
            ]
        );
        assert!(
            formula(json!({"sum": ["$score", 1]}))
                .payload_uses()
                .is_empty()
        );
    }

    fn eval_err(f: &Formula, p: Value) -> String {
        match eval_with(f, p, &[]) {
            Ok(score) => panic!("{f:?} evaluated to {score}"),
            Err(e) => e,
        }
    }

    fn assert_close(actual: f32, expected: f64) {
        let tolerance = expected.abs().max(1.0) * 1e-6;
        assert!(
            (f64::from(actual) - expected).abs() <= tolerance,
            "{actual} != {expected}"
        );
    }

    #[test]
    fn constants_and_arithmetic() {
        assert_eq!(eval(json!(2.5)), 2.5);
        assert_eq!(eval(json!(-3)), -3.0);
        assert_eq!(eval(json!({"sum": [1, 2, 3.5]})), 6.5);
        assert_eq!(eval(json!({"sum": []})), 0.0);
        assert_eq!(eval(json!({"mult": [2, 3, 0.5]})), 3.0);
        assert_eq!(eval(json!({"mult": []})), 1.0);
        assert_eq!(eval(json!({"neg": 4})), -4.0);
        assert_eq!(eval(json!({"abs": -4})), 4.0);
        assert_eq!(eval(json!({"abs": {"neg": {"abs": -1.5}}})), 1.5);
        assert_eq!(eval(json!({"div": {"left": 7, "right": 2}})), 3.5);
        assert_eq!(eval(json!({"sqrt": 16})), 4.0);
        assert_eq!(eval(json!({"pow": {"base": 2, "exponent": 10}})), 1024.0);
        assert_eq!(eval(json!({"pow": {"base": -2, "exponent": 3}})), -8.0);
        assert_eq!(eval(json!({"pow": {"base": 0, "exponent": 0.5}})), 0.0);
        assert_close(eval(json!({"exp": 1})), std::f64::consts::E);
        assert_close(eval(json!({"log10": 1000})), 3.0);
        assert_close(eval(json!({"ln": {"exp": 2}})), 2.0);
    }

    #[test]
    fn mult_and_div_stop_at_zero_without_evaluating_the_rest() {
        // The missing variable after the zero would be an error if it were evaluated.
        assert_eq!(eval(json!({"mult": [1, 0, "missing"]})), 0.0);
        assert_eq!(eval(json!({"div": {"left": 0, "right": "missing"}})), 0.0);
        assert_eq!(eval(json!({"div": {"left": 0, "right": 0}})), 0.0);
        let f = formula(json!({"mult": [1, "missing", 0]}));
        assert!(eval_err(&f, json!({})).contains("No value found for missing"));
    }

    #[test]
    fn division_by_zero_uses_the_default_or_fails() {
        assert_eq!(
            eval(json!({"div": {"left": 1, "right": 0, "by_zero_default": 0.25}})),
            0.25
        );
        assert_eq!(
            eval(json!({"div": {"left": 1, "right": 2, "by_zero_default": 0.25}})),
            0.5
        );
        // A null default is no default.
        let f = formula(json!({"div": {"left": 1, "right": 0, "by_zero_default": null}}));
        assert!(eval_err(&f, json!({})).contains("produced a non-finite number"));
    }

    #[test]
    fn non_finite_steps_fail_with_qdrants_message() {
        for (expression, detail) in [
            (json!({"div": {"left": 1, "right": 0}}), "1.0/0.0 = inf"),
            (
                json!({"div": {"left": 1, "right": {"neg": 0}}}),
                "1.0/-0.0 = -inf",
            ),
            (json!({"sqrt": -1}), "√-1.0 = NaN"),
            (
                json!({"pow": {"base": -2, "exponent": 0.5}}),
                "-2.0^0.5 = NaN",
            ),
            (
                json!({"pow": {"base": 0, "exponent": -1}}),
                "0.0^-1.0 = inf",
            ),
            (json!({"exp": 1000}), "exp(1000.0) = inf"),
            (json!({"ln": 0}), "ln(0.0) = -inf"),
            (json!({"ln": -1}), "ln(-1.0) = NaN"),
            (json!({"log10": 0}), "log10(0.0) = -inf"),
        ] {
            let err = eval_err(&formula(expression.clone()), json!({}));
            assert_eq!(
                err,
                format!("The expression {detail} produced a non-finite number"),
                "{expression}"
            );
        }
    }

    #[test]
    fn a_result_too_large_for_f32_is_non_finite() {
        let err = eval_err(&formula(json!({"mult": [1e200, 1e200]})), json!({}));
        assert!(err.contains("as f32 = inf"), "{err}");
        assert!(err.contains("produced a non-finite number"), "{err}");
        // Still finite as an f64: only the final cast fails.
        let err = eval_err(&formula(json!({"mult": [1e30, 1e30]})), json!({}));
        assert!(err.contains("produced a non-finite number"), "{err}");
        assert_close(eval(json!({"mult": [1e19, 1e19]})), 1e38);
    }

    #[test]
    fn score_variables_read_prefetch_scores_then_defaults_then_zero() {
        let f = formula(json!({"sum": ["$score", {"mult": [10, "$score[1]"]}]}));
        assert_eq!(eval_with(&f, json!({}), &[Some(0.5), Some(2.0)]), Ok(20.5));
        assert_eq!(eval_with(&f, json!({}), &[Some(0.5)]), Ok(0.5));
        assert_eq!(eval_with(&f, json!({}), &[None, Some(1.0)]), Ok(10.0));
        assert_eq!(eval_with(&f, json!({}), &[]), Ok(0.0));
        assert_eq!(
            eval_with(&formula(json!("$score[0]")), json!({}), &[Some(0.75)]),
            Ok(0.75)
        );

        let with_defaults = formula_with(
            json!({"sum": ["$score", {"mult": [10, "$score[1]"]}]}),
            json!({"$score": 0.25, "$score[1]": 3}),
        );
        assert_eq!(eval_with(&with_defaults, json!({}), &[]), Ok(30.25));
        assert_eq!(
            eval_with(&with_defaults, json!({}), &[Some(1.0), None]),
            Ok(31.0)
        );
        // `$score[0]` and `$score` name the same variable, in defaults too.
        let zero = formula_with(json!("$score"), json!({"$score[0]": 0.5}));
        assert_eq!(eval_with(&zero, json!({}), &[]), Ok(0.5));
        // A default that is not a number is ignored (Qdrant uses 0).
        let odd = formula_with(json!("$score[2]"), json!({"$score[2]": "high"}));
        assert_eq!(eval_with(&odd, json!({}), &[]), Ok(0.0));
    }

    #[test]
    fn payload_variables_read_the_path_then_defaults() {
        let f = formula_with(
            json!({"sum": ["price", "nested.rating"]}),
            json!({"nested.rating": 4}),
        );
        assert_eq!(
            eval_with(&f, json!({"price": 10, "nested": {"rating": 2.5}}), &[]),
            Ok(12.5)
        );
        assert_eq!(eval_with(&f, json!({"price": 10}), &[]), Ok(14.0));
        // A single-element array is its element; an empty array counts as missing.
        assert_eq!(
            eval_with(&f, json!({"price": [3], "nested": {"rating": []}}), &[]),
            Ok(7.0)
        );
        // Paths through arrays of objects.
        let items = formula(json!("items[].n"));
        assert_eq!(
            eval_with(&items, json!({"items": [{"n": 1.5}, {"m": 1}]}), &[]),
            Ok(1.5)
        );
        assert_eq!(
            eval_with(&formula(json!("xs[1]")), json!({"xs": [1, 2, 3]}), &[]),
            Ok(2.0)
        );
        // Defaults: `[x]` is x; null and `[]` are no default.
        let listed = formula_with(json!("a"), json!({"a": [6]}));
        assert_eq!(eval_with(&listed, json!({}), &[]), Ok(6.0));
        for empty in [json!(null), json!([])] {
            let f = formula_with(json!("a"), json!({ "a": empty }));
            assert!(eval_err(&f, json!({})).contains("No value found for a"));
        }
    }

    #[test]
    fn payload_variables_must_be_numbers() {
        let f = formula_with(json!("v"), json!({"v": 1}));
        let expected = "Expected number value for v in the payload and/or in the formula \
                        defaults. Error: Value is not a number";
        for bad in [
            json!("text"),
            json!(true),
            json!(null),
            json!([1, 2]),
            json!({"k": 1}),
            json!([null]),
        ] {
            assert_eq!(eval_err(&f, json!({ "v": bad })), expected, "{bad}");
        }
        let bad_default = formula_with(json!("v"), json!({"v": "x"}));
        assert_eq!(eval_err(&bad_default, json!({})), expected);
    }

    #[test]
    fn missing_payload_variables_name_the_key() {
        let err = eval_err(&formula(json!({"sum": [1, "a.b"]})), json!({"a": {}}));
        assert_eq!(
            err,
            "Expected number value for a.b in the payload and/or in the formula defaults. \
             Error: No value found for a.b in the payload nor the formula defaults"
        );
    }

    #[test]
    fn conditions_are_one_or_zero() {
        let f = formula(json!({"sum": [
            {"key": "tag", "match": {"any": ["h1", "h2"]}},
            {"mult": [10, {"has_id": [1]}]},
            {"mult": [100, {"must_not": [{"key": "tag", "match": {"value": "p"}}]}]},
            {"mult": [1000, {"has_vector": "image"}]},
        ]}));
        assert_eq!(eval_with(&f, json!({"tag": "h1"}), &[]), Ok(111.0));
        assert_eq!(eval_with(&f, json!({"tag": "p"}), &[]), Ok(10.0));
        let on_point_2 = f.evaluate(
            PointId::Num(2),
            &payload(json!({"tag": "h3"})),
            &|name| name == "image",
            &[],
        );
        assert_eq!(on_point_2, Ok(1100.0));
        // `{}` is the empty filter, which every point matches.
        assert_eq!(eval(json!({})), 1.0);
        assert_eq!(eval(json!({"is_empty": {"key": "nothing"}})), 1.0);
    }

    #[test]
    fn bad_conditions_are_rejected() {
        let err = parse_err(json!({"key": "a"}));
        assert!(err.contains("invalid condition"), "{err}");
        assert!(err.contains("checks nothing"), "{err}");
        let err = parse_err(json!({"nested": {"key": "a", "filter": {"must": [{"has_id": [1]}]}}}));
        assert!(
            err.contains("`has_id` cannot be used inside `nested`"),
            "{err}"
        );
    }

    #[test]
    fn decays_have_known_values() {
        let params = json!({"x": 5, "target": 3, "scale": 4, "midpoint": 0.5});
        assert_close(eval(json!({ "lin_decay": params })), 0.75);
        // 0.5^(1/2) and 0.5^(1/4).
        assert_close(
            eval(json!({ "exp_decay": params })),
            std::f64::consts::FRAC_1_SQRT_2,
        );
        assert_close(eval(json!({ "gauss_decay": params })), 0.8408964152537145);
        // At `scale` from the target, every decay equals the midpoint.
        for kind in ["lin_decay", "exp_decay", "gauss_decay"] {
            let at_scale = json!({ kind: {"x": -2, "target": 1, "scale": 3, "midpoint": 0.2} });
            assert_close(eval(at_scale), 0.2);
            let at_target = json!({ kind: {"x": 7, "target": 7} });
            assert_eq!(eval(at_target), 1.0, "{kind}");
        }
        // Defaults: target 0, midpoint 0.5, scale 1.
        assert_close(eval(json!({"exp_decay": {"x": 2}})), 0.25);
        assert_close(eval(json!({"lin_decay": {"x": 0.5, "target": null}})), 0.75);
        // Linear decay bottoms out at zero.
        assert_eq!(eval(json!({"lin_decay": {"x": 10}})), 0.0);
        // qdrant-client's local mode gives 0.03630780547701015.
        assert_close(
            eval(json!({"gauss_decay": {"x": 0.3, "scale": 0.25, "midpoint": 0.1}})),
            0.03630780547701015,
        );
    }

    #[test]
    fn decay_parameters_are_checked_when_parsing() {
        for midpoint in [0.0, 1.0, -0.5, 1.5] {
            let err = parse_err(json!({"lin_decay": {"x": 1, "midpoint": midpoint}}));
            assert!(err.contains("midpoint` must be between 0 and 1"), "{err}");
        }
        for scale in [0.0, -1.0] {
            let err = parse_err(json!({"gauss_decay": {"x": 1, "scale": scale}}));
            assert!(err.contains("scale` must be a positive number"), "{err}");
        }
        let err = parse_err(json!({"exp_decay": {"target": 1}}));
        assert!(err.contains("`exp_decay` is missing `x`"), "{err}");
        let err = parse_err(json!({"exp_decay": {"x": 1, "midpont": 0.3}}));
        assert!(err.contains("unknown field `exp_decay.midpont`"), "{err}");
        let err = parse_err(json!({"exp_decay": {"x": 1, "scale": "big"}}));
        assert!(err.contains("`exp_decay.scale` must be a number"), "{err}");
    }

    #[test]
    fn geo_distance_is_haversine_metres() {
        let f = formula_with(
            json!({"geo_distance": {"origin": {"lon": 13.4050, "lat": 52.5200}, "to": "city.geo"}}),
            json!({"city.geo": {"lon": 0.4, "lat": 0.5}}),
        );
        // Berlin to Paris, as qdrant-client's local mode computes it.
        let paris = json!({"city": {"geo": {"lon": 2.3522, "lat": 48.8566}}});
        assert_close(
            eval_with(&f, paris, &[]).unwrap_or(f32::NAN),
            877464.5379215094,
        );
        let berlin = json!({"city": {"geo": [{"lon": 13.4050, "lat": 52.5200}]}});
        assert_eq!(eval_with(&f, berlin, &[]), Ok(0.0));
        // The default applies when the payload has no point.
        let from_default = eval_with(&f, json!({}), &[]).unwrap_or(f32::NAN);
        assert!(from_default > 5_000_000.0, "{from_default}");

        let err = eval_err(&f, json!({"city": {"geo": "Paris"}}));
        assert!(
            err.starts_with(
                "Expected geo point value for city.geo in the payload and/or in the formula defaults"
            ),
            "{err}"
        );
        let no_default =
            formula(json!({"geo_distance": {"origin": {"lon": 0, "lat": 0}, "to": "g"}}));
        assert!(eval_err(&no_default, json!({})).contains("No value found for g"));

        let err = parse_err(json!({"geo_distance": {"origin": {"lon": 200, "lat": 0}, "to": "g"}}));
        assert!(err.contains("longitude must be in [-180, 180]"), "{err}");
        let err = parse_err(json!({"geo_distance": {"origin": {"lon": 0}, "to": "g"}}));
        assert!(err.contains("must be a geo point"), "{err}");
    }

    #[test]
    fn datetimes_are_epoch_seconds() {
        assert_eq!(
            eval(json!({"datetime": "2024-01-01T00:00:00Z"})),
            1_704_067_200.0
        );
        assert_eq!(
            eval(json!({"datetime": "1970-01-01T00:00:01.5+01:00"})),
            -3598.5
        );
        assert_eq!(eval(json!({"datetime": "1970-01-02"})), 86_400.0);
        // Differences keep sub-second precision before the cast to f32.
        let age = formula(
            json!({"sum": [{"datetime_key": "d"}, {"neg": {"datetime": "2000-03-04T03:06:07Z"}}]}),
        );
        let age = eval_with(&age, json!({"d": "2000-03-04 05:06:07.123456+0200"}), &[]);
        assert_close(age.unwrap_or(f32::NAN), 0.123456);
        let key = formula_with(
            json!({"datetime_key": "d"}),
            json!({"d": "1970-01-01T00:01:00"}),
        );
        assert_eq!(eval_with(&key, json!({}), &[]), Ok(60.0));
        assert_eq!(
            eval_with(&key, json!({"d": ["1970-01-01T00:00:02Z"]}), &[]),
            Ok(2.0)
        );
        for bad in [
            json!("yesterday"),
            json!(5),
            json!(["1970-01-01", "1970-01-02"]),
        ] {
            let err = eval_err(&key, json!({ "d": bad }));
            assert!(
                err.starts_with(
                    "Expected datetime value for d in the payload and/or in the formula defaults"
                ),
                "{err}"
            );
        }
        let err = parse_err(json!({"datetime": "2024-13-01"}));
        assert!(err.contains("is not a datetime"), "{err}");
        let err = parse_err(json!({"datetime": 5}));
        assert!(err.contains("`datetime` takes a datetime string"), "{err}");
    }

    #[test]
    fn variables_are_checked_when_parsing() {
        for bad in [
            "$score[x]",
            "$score[]",
            "$score[1][2]",
            "$score.a",
            "$scores",
            "$score[-1]",
        ] {
            let err = parse_err(json!(bad));
            assert!(err.contains("invalid score variable"), "{bad}: {err}");
        }
        let err = parse_err(json!("$other"));
        assert!(err.contains("unknown reserved variable `$other`"), "{err}");
        let err = parse_err(json!("a..b"));
        assert!(err.contains("invalid variable `a..b`"), "{err}");
        let err = parse_err(json!({"datetime_key": "a b"}));
        assert!(err.contains("invalid payload key"), "{err}");
        let Value::Object(defaults) = json!({"$bogus": 1}) else {
            unreachable!()
        };
        let err = Formula::parse(&json!(1), Some(&defaults)).unwrap_err();
        assert!(err.contains("invalid formula defaults"), "{err}");
    }

    #[test]
    fn bad_shapes_are_rejected_with_their_location() {
        let err = parse_err(json!({"sum": [1, {"max": [1, 2]}]}));
        assert!(
            err.starts_with("invalid formula at `formula.sum[1]`"),
            "{err}"
        );
        assert!(
            err.contains("unknown expression with fields [\"max\"]"),
            "{err}"
        );
        let err = parse_err(json!({"div": {"left": 1, "right": {"ln": true}}}));
        assert!(
            err.starts_with("invalid formula at `formula.div.right.ln`"),
            "{err}"
        );
        assert!(err.contains("got a boolean"), "{err}");
        let err = parse_err(json!({"sum": 1}));
        assert!(err.contains("`sum` takes an array of expressions"), "{err}");
        let err = parse_err(json!({"neg": 1, "abs": 2}));
        assert!(err.contains("must be the only field"), "{err}");
        let err = parse_err(json!({"div": {"left": 1}}));
        assert!(err.contains("`div` is missing `right`"), "{err}");
        let err = parse_err(json!({"pow": [2, 3]}));
        assert!(
            err.contains("`pow` takes an object with `base`, `exponent`"),
            "{err}"
        );
        for bad in [json!(null), json!(true), json!([1])] {
            let err = parse_err(bad.clone());
            assert!(err.contains("expected an expression"), "{bad}: {err}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = json!(1);
        for _ in 1..MAX_DEPTH {
            deep = json!({ "neg": deep });
        }
        assert_eq!(eval(deep.clone()), -1.0, "{MAX_DEPTH} levels are fine");
        let err = parse_err(json!({ "neg": deep }));
        assert!(err.contains("nested more than 64 levels deep"), "{err}");

        let wide = json!({ "sum": vec![1; MAX_NODES - 1] });
        assert_eq!(eval(wide), (MAX_NODES - 1) as f32);
        let err = parse_err(json!({ "sum": vec![1; MAX_NODES] }));
        assert!(err.contains("more than 1024 expressions"), "{err}");
    }

    #[test]
    fn a_realistic_boosting_formula() {
        // Qdrant's documentation example: boost by tag and decay by distance to the user.
        let f = formula_with(
            json!({"sum": [
                "$score",
                {"mult": [0.5, {"key": "tag", "match": {"any": ["h1", "h2"]}}]},
                {"gauss_decay": {
                    "x": {"geo_distance": {"origin": {"lat": 52.504043, "lon": 13.393236}, "to": "geo.location"}},
                    "scale": 5000
                }}
            ]}),
            json!({"geo.location": {"lat": 48.137154, "lon": 11.576124}}),
        );
        let here =
            json!({"tag": ["h1"], "geo": {"location": {"lat": 52.504043, "lon": 13.393236}}});
        assert_eq!(eval_with(&f, here, &[Some(0.25)]), Ok(1.75));
        let munich = eval_with(&f, json!({"tag": "p"}), &[Some(0.25)]);
        assert_eq!(
            munich,
            Ok(0.25),
            "Munich is far enough for the decay to vanish"
        );
    }
}
