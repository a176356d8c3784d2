//! The model of acknowledged writes for a collection with every vector kind: a named dense
//! vector (`dense`), a sparse vector (`sparse`) and a multivector (`multi`), each optional.
//!
//! The transfer and resharding tests write through a single sequential client, so the writes
//! the node acknowledged say exactly what every replica must hold once writing stops. This
//! module owns the pieces those tests share:
//!
//! - the collection's vector configuration and the value of every vector, derived from the
//!   point id and a version, so a read can be checked without storing what was sent;
//! - [`Write`]: upserts, deletes, `PUT points/vectors` and `POST points/vectors/delete`, as
//!   values that know their REST request;
//! - [`Model`]: per point, every state the acknowledged writes allow (one, unless a write
//!   failed: a failed write is not acknowledged, so it may or may not have taken effect);
//! - [`Writer`]: a bounded background writer that mixes all four kinds of write;
//! - [`matches_model`]: a whole collection, every named vector of every point, against the
//!   model.
//!
//! It never decides what a test expects from a cluster (which replicas, which stages): the
//! tests do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::rest_client::{Client, Method, PointId, UpdateResult};

/// Dimensions of the `dense` vector (Euclid).
pub const DENSE_DIM: usize = 8;
/// Dimensions of each row of the `multi` vector (Cosine, max_sim).
pub const MULTI_DIM: usize = 4;
/// Floats read back may differ from what was sent by this much (Cosine rows are normalised
/// by the node, in `f32`).
const TOLERANCE: f32 = 1e-3;

/// One of the collection's named vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Dense,
    Sparse,
    Multi,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Dense, Kind::Sparse, Kind::Multi];

    /// The vector's name in the collection.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dense => "dense",
            Kind::Sparse => "sparse",
            Kind::Multi => "multi",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Kind::Dense => 0x0d,
            Kind::Sparse => 0x5a,
            Kind::Multi => 0x3c,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `vectors` and `sparse_vectors` of a collection create request (Qdrant's REST shape), to
/// merge with the test's sharding settings. `sparse_idf` sets the sparse vector's `idf`
/// modifier, which changes scoring only: stored values stay as sent.
pub fn collection_config(sparse_idf: bool) -> Map<String, Value> {
    let sparse = if sparse_idf {
        json!({"modifier": "idf"})
    } else {
        json!({})
    };
    let config = json!({
        "vectors": {
            "dense": {"size": DENSE_DIM, "distance": "Euclid"},
            "multi": {
                "size": MULTI_DIM,
                "distance": "Cosine",
                "multivector_config": {"comparator": "max_sim"},
            },
        },
        "sparse_vectors": {"sparse": sparse},
    });
    match config {
        Value::Object(map) => map,
        _ => unreachable!("a json! object literal"),
    }
}

/// [`collection_config`] with `settings` (an object: shard number, replication…) added.
pub fn collection_body(sparse_idf: bool, settings: Value) -> Value {
    let mut body = collection_config(sparse_idf);
    if let Value::Object(extra) = settings {
        body.extend(extra);
    }
    Value::Object(body)
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash(id: u64, v: u64, kind: Kind, i: u64) -> u64 {
    mix(id.wrapping_mul(1_000_003) ^ v.wrapping_mul(7919) ^ (kind.salt() << 56) ^ (i << 40))
}

/// The `dense` vector of point `id` at version `v`: pseudo-random, so exact-search ties do not
/// occur. Every component, here and in the other kinds, is a multiple of 1/16 or 1/64: exact in
/// `f32`, and short in the JSON of a request, which goes through `f64` (a tenth would print
/// with 17 digits and double the size of every upload).
pub fn dense(id: u64, v: u64) -> Vec<f32> {
    (0..DENSE_DIM as u64)
        .map(|d| (hash(id, v, Kind::Dense, d) % 16_000) as f32 / 16.0)
        .collect()
}

/// The `sparse` vector of point `id` at version `v`: 1 to 6 distinct indices, in no particular
/// order, with non-zero values that `f32` holds exactly.
pub fn sparse(id: u64, v: u64) -> Vec<(u32, f32)> {
    let n = 1 + hash(id, v, Kind::Sparse, 0) % 6;
    let mut seen = BTreeSet::new();
    (1..=n)
        .map(|i| hash(id, v, Kind::Sparse, i))
        .filter(|h| seen.insert(h % 5000))
        .map(|h| {
            let magnitude = ((h >> 16) % 1000 + 1) as f32 / 64.0;
            let value = if (h >> 40).is_multiple_of(3) {
                -magnitude
            } else {
                magnitude
            };
            ((h % 5000) as u32, value)
        })
        .collect()
}

/// The `multi` vector of point `id` at version `v`, as sent: 1 to 3 rows with positive
/// components (never a zero row, which Cosine cannot normalise).
pub fn multi(id: u64, v: u64) -> Vec<Vec<f32>> {
    let rows = 1 + hash(id, v, Kind::Multi, 0) % 3;
    (0..rows)
        .map(|r| {
            (0..MULTI_DIM as u64)
                .map(|d| ((hash(id, v, Kind::Multi, 1 + r * 16 + d) % 256) + 1) as f32 / 16.0)
                .collect()
        })
        .collect()
}

/// Whether an upsert of point `id` at version `v` carries the `kind` vector: most do, about
/// one in eight carries none of `sparse` and `multi`, a few carry no vector at all.
pub fn has_vector(id: u64, v: u64, kind: Kind) -> bool {
    let h = mix(id.wrapping_mul(31) ^ v.wrapping_mul(0x51ed) ^ 0xa11);
    match kind {
        Kind::Dense => !h.is_multiple_of(8),
        Kind::Sparse => !(h >> 8).is_multiple_of(4),
        Kind::Multi => !(h >> 16).is_multiple_of(3),
    }
}

/// The JSON of vector `kind` of point `id` at version `v`, as a request carries it.
fn vector_json(id: u64, v: u64, kind: Kind) -> Value {
    match kind {
        Kind::Dense => json!(dense(id, v)),
        Kind::Sparse => {
            let (indices, values): (Vec<u32>, Vec<f32>) = sparse(id, v).into_iter().unzip();
            json!({"indices": indices, "values": values})
        }
        Kind::Multi => json!(multi(id, v)),
    }
}

/// What a point holds: the version its payload was written at and, per named vector it has,
/// the version that vector was last set at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PointState {
    pub v: u64,
    pub vectors: BTreeMap<Kind, u64>,
}

impl PointState {
    /// What an upsert of `id` at version `v` leaves.
    pub fn upserted(id: u64, v: u64) -> Self {
        Self {
            v,
            vectors: Kind::ALL
                .into_iter()
                .filter(|k| has_vector(id, v, *k))
                .map(|k| (k, v))
                .collect(),
        }
    }
}

impl fmt::Display for PointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{v {}", self.v)?;
        for kind in Kind::ALL {
            match self.vectors.get(&kind) {
                Some(v) => write!(f, ", {kind}@{v}")?,
                None => write!(f, ", no {kind}")?,
            }
        }
        f.write_str("}")
    }
}

fn describe(state: &Option<PointState>) -> String {
    state
        .as_ref()
        .map_or_else(|| "absent".to_owned(), ToString::to_string)
}

/// One write request.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// `PUT points`: each id at version `v` (vectors as [`has_vector`] says, payload `{"v": v}`
    /// plus the fields of `payload`).
    Upsert {
        ids: Vec<u64>,
        v: u64,
        payload: Map<String, Value>,
    },
    /// `POST points/delete` by ids.
    Delete { ids: Vec<u64> },
    /// `PUT points/vectors`: `kinds` of each (existing) point set to their value at version `v`.
    UpdateVectors {
        ids: Vec<u64>,
        kinds: Vec<Kind>,
        v: u64,
    },
    /// `POST points/vectors/delete`: `kinds` removed from each (existing) point.
    DeleteVectors { ids: Vec<u64>, kinds: Vec<Kind> },
}

impl Write {
    pub fn upsert(ids: impl IntoIterator<Item = u64>, v: u64) -> Self {
        Write::Upsert {
            ids: ids.into_iter().collect(),
            v,
            payload: Map::new(),
        }
    }

    /// A short name for counting writes by kind.
    pub fn label(&self) -> &'static str {
        match self {
            Write::Upsert { .. } => "upsert",
            Write::Delete { .. } => "delete",
            Write::UpdateVectors { .. } => "update_vectors",
            Write::DeleteVectors { .. } => "delete_vectors",
        }
    }

    fn ids(&self) -> &[u64] {
        match self {
            Write::Upsert { ids, .. }
            | Write::Delete { ids }
            | Write::UpdateVectors { ids, .. }
            | Write::DeleteVectors { ids, .. } => ids,
        }
    }

    /// Method, path (with `wait=true`) and body of the request.
    pub fn request(&self, name: &str) -> (Method, String, Value) {
        let names =
            |kinds: &[Kind]| -> Vec<&'static str> { kinds.iter().map(|k| k.name()).collect() };
        match self {
            Write::Upsert { ids, v, payload } => {
                let points: Vec<Value> = ids
                    .iter()
                    .map(|&id| {
                        let vectors: Map<String, Value> = Kind::ALL
                            .into_iter()
                            .filter(|k| has_vector(id, *v, *k))
                            .map(|k| (k.name().to_owned(), vector_json(id, *v, k)))
                            .collect();
                        let mut payload = payload.clone();
                        payload.insert("v".into(), json!(v));
                        json!({"id": id, "vector": vectors, "payload": payload})
                    })
                    .collect();
                (
                    Method::Put,
                    format!("/collections/{name}/points?wait=true"),
                    json!({ "points": points }),
                )
            }
            Write::Delete { ids } => (
                Method::Post,
                format!("/collections/{name}/points/delete?wait=true"),
                json!({ "points": ids }),
            ),
            Write::UpdateVectors { ids, kinds, v } => {
                let points: Vec<Value> = ids
                    .iter()
                    .map(|&id| {
                        let vectors: Map<String, Value> = kinds
                            .iter()
                            .map(|k| (k.name().to_owned(), vector_json(id, *v, *k)))
                            .collect();
                        json!({"id": id, "vector": vectors})
                    })
                    .collect();
                (
                    Method::Put,
                    format!("/collections/{name}/points/vectors?wait=true"),
                    json!({ "points": points }),
                )
            }
            Write::DeleteVectors { ids, kinds } => (
                Method::Post,
                format!("/collections/{name}/points/vectors/delete?wait=true"),
                json!({"points": ids, "vector": names(kinds)}),
            ),
        }
    }

    /// Sends the request; `Ok` only when the node acknowledged it (`status: completed`).
    pub fn send(&self, client: &Client, name: &str) -> Result<()> {
        let (method, path, body) = self.request(name);
        let result: UpdateResult = client.call(method, &path, Some(&body))?;
        ensure!(
            result.is_completed(),
            "{} {path} with wait=true answered status `{}`, not `completed`",
            self.label(),
            result.status
        );
        Ok(())
    }

    /// What this write leaves of a point that was in `state` before it.
    fn apply(&self, id: u64, state: &Option<PointState>) -> Option<PointState> {
        match self {
            Write::Upsert { v, .. } => Some(PointState::upserted(id, *v)),
            Write::Delete { .. } => None,
            Write::UpdateVectors { kinds, v, .. } => state.clone().map(|mut s| {
                s.vectors.extend(kinds.iter().map(|k| (*k, *v)));
                s
            }),
            Write::DeleteVectors { kinds, .. } => state.clone().map(|mut s| {
                for k in kinds {
                    s.vectors.remove(k);
                }
                s
            }),
        }
    }
}

/// Per point, every state the writes allow (`None`: absent). A point the model does not know
/// was never written and must be absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    points: BTreeMap<u64, BTreeSet<Option<PointState>>>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// The states `id` may be in.
    pub fn possible(&self, id: u64) -> BTreeSet<Option<PointState>> {
        self.points
            .get(&id)
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([None]))
    }

    /// Whether `id` exists whatever the failed writes did: only such points are given to
    /// `points/vectors` writes, which the node refuses (404) for a missing point.
    pub fn surely_present(&self, id: u64) -> bool {
        self.points
            .get(&id)
            .is_some_and(|s| s.iter().all(Option::is_some))
    }

    /// The outcome of `write`: when acknowledged, every point it names is in what the write
    /// made of it; when not, the write may or may not have taken effect on each point.
    pub fn record(&mut self, write: &Write, acknowledged: bool) {
        for &id in write.ids() {
            let before = self.possible(id);
            let mut after: BTreeSet<Option<PointState>> =
                before.iter().map(|s| write.apply(id, s)).collect();
            let now = if acknowledged {
                // A `points/vectors` write is refused for a missing point: its acknowledgement
                // says the point existed (if the model disagrees, the comparison will tell).
                if matches!(
                    write,
                    Write::UpdateVectors { .. } | Write::DeleteVectors { .. }
                ) && after.iter().any(Option::is_some)
                {
                    after.retain(Option::is_some);
                }
                after
            } else {
                before.union(&after).cloned().collect()
            };
            if now == BTreeSet::from([None]) {
                self.points.remove(&id);
            } else {
                self.points.insert(id, now);
            }
        }
    }

    /// How many points the collection may hold: from the points present in every allowed
    /// state to those present in some.
    pub fn count_range(&self) -> RangeInclusive<u64> {
        let surely = self
            .points
            .values()
            .filter(|s| s.iter().all(Option::is_some))
            .count();
        let maybe = self
            .points
            .values()
            .filter(|s| s.iter().any(Option::is_some))
            .count();
        surely as u64..=maybe as u64
    }

    /// Whether a failed write left any point in more than one possible state.
    pub fn is_exact(&self) -> bool {
        self.points.values().all(|s| s.len() == 1)
    }
}

/// [`Write::send`], recording the outcome in `model` whatever it was.
pub fn apply(client: &Client, name: &str, model: &mut Model, write: &Write) -> Result<()> {
    let sent = write.send(client, name);
    model.record(write, sent.is_ok());
    sent
}

/// Upserts `ids` at version 0 in batches of 1000, each point's payload `{"v": 0}` plus the
/// fields of `payload`. Every batch must be acknowledged.
pub fn load(
    client: &Client,
    name: &str,
    ids: Range<u64>,
    payload: &Map<String, Value>,
    model: &mut Model,
) -> Result<()> {
    let all: Vec<u64> = ids.collect();
    for chunk in all.chunks(1000) {
        let write = Write::Upsert {
            ids: chunk.to_vec(),
            v: 0,
            payload: payload.clone(),
        };
        apply(client, name, model, &write)
            .with_context(|| format!("loading points into `{name}`"))?;
    }
    Ok(())
}

/// A point as scroll returns it, read straight into the shapes compared here: a
/// `serde_json::Value` per point costs more than the comparison itself in a debug build.
#[derive(Debug, Deserialize)]
struct ReadPoint {
    id: PointId,
    #[serde(default)]
    payload: Option<ReadPayload>,
    #[serde(default)]
    vector: Option<ReadVectors>,
}

#[derive(Debug, Deserialize)]
struct ReadPayload {
    #[serde(default)]
    v: Option<u64>,
}

/// The named vectors of a point: any other name, or an unnamed vector, fails the read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadVectors {
    #[serde(default)]
    dense: Option<Vec<f32>>,
    #[serde(default)]
    sparse: Option<ReadSparse>,
    #[serde(default)]
    multi: Option<Vec<Vec<f32>>>,
}

#[derive(Debug, Deserialize)]
struct ReadSparse {
    indices: Vec<u32>,
    values: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct ReadPage {
    points: Vec<ReadPoint>,
    #[serde(default)]
    next_page_offset: Option<PointId>,
}

/// Every point of `name` with payload and vectors, following `next_page_offset` for at most
/// `max_pages` pages.
fn read_all(client: &Client, name: &str, max_pages: usize) -> Result<Vec<(u64, Observed)>> {
    let mut out = Vec::new();
    let mut offset: Option<PointId> = None;
    for _ in 0..max_pages {
        let page: ReadPage = client.call(
            Method::Post,
            &format!("/collections/{name}/points/scroll"),
            Some(&json!({
                "limit": 5000,
                "offset": offset,
                "with_payload": true,
                "with_vector": true,
            })),
        )?;
        for point in page.points {
            out.push(Observed::from_read(point)?);
        }
        match page.next_page_offset {
            Some(next) => offset = Some(next),
            None => return Ok(out),
        }
    }
    bail!("scroll of `{name}` did not finish within {max_pages} pages")
}

/// What a point read back holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub v: u64,
    pub dense: Option<Vec<f32>>,
    /// Index → value.
    pub sparse: Option<BTreeMap<u32, f32>>,
    pub multi: Option<Vec<Vec<f32>>>,
}

impl Observed {
    /// The point's numeric id, payload `v` and named vectors.
    fn from_read(point: ReadPoint) -> Result<(u64, Self)> {
        let id = point
            .id
            .as_num()
            .with_context(|| format!("point {}: not a numeric id", point.id))?;
        let v = point
            .payload
            .and_then(|p| p.v)
            .with_context(|| format!("point {id}: no payload `v`"))?;
        let vectors = point.vector.unwrap_or(ReadVectors {
            dense: None,
            sparse: None,
            multi: None,
        });
        let sparse = match vectors.sparse {
            None => None,
            Some(ReadSparse { indices, values }) => {
                ensure!(
                    indices.len() == values.len(),
                    "point {id}: sparse vector with {} indices and {} values",
                    indices.len(),
                    values.len()
                );
                let map: BTreeMap<u32, f32> = indices.iter().copied().zip(values).collect();
                ensure!(
                    map.len() == indices.len(),
                    "point {id}: repeated sparse indices {indices:?}"
                );
                Some(map)
            }
        };
        Ok((
            id,
            Self {
                v,
                dense: vectors.dense,
                sparse,
                multi: vectors.multi,
            },
        ))
    }

    /// Where this differs from `expected` (empty: it matches), one entry per field.
    pub fn differences(&self, id: u64, expected: &PointState) -> Vec<String> {
        let mut out = Vec::new();
        if self.v != expected.v {
            out.push(format!("payload v {} (expected {})", self.v, expected.v));
        }
        for kind in Kind::ALL {
            let want = expected.vectors.get(&kind).copied();
            let same = match (kind, want) {
                (Kind::Dense, None) => self.dense.is_none(),
                (Kind::Dense, Some(v)) => self
                    .dense
                    .as_ref()
                    .is_some_and(|got| close(got, &dense(id, v))),
                (Kind::Sparse, None) => self.sparse.is_none(),
                (Kind::Sparse, Some(v)) => self.sparse.as_ref().is_some_and(|got| {
                    let want: BTreeMap<u32, f32> = sparse(id, v).into_iter().collect();
                    got.len() == want.len()
                        && got
                            .iter()
                            .zip(&want)
                            .all(|((gi, gv), (wi, wv))| gi == wi && (gv - wv).abs() <= TOLERANCE)
                }),
                (Kind::Multi, None) => self.multi.is_none(),
                (Kind::Multi, Some(v)) => self.multi.as_ref().is_some_and(|got| {
                    let want = multi(id, v);
                    got.len() == want.len()
                        && got.iter().zip(&want).all(|(g, w)| close(g, &normalised(w)))
                }),
            };
            if !same {
                let read = match kind {
                    Kind::Dense => format!("{:?}", self.dense),
                    Kind::Sparse => format!("{:?}", self.sparse),
                    Kind::Multi => format!("{:?}", self.multi),
                };
                let wanted = match (kind, want) {
                    (_, None) => "none".to_owned(),
                    (Kind::Dense, Some(v)) => format!("version {v}: {:?}", dense(id, v)),
                    (Kind::Sparse, Some(v)) => format!(
                        "version {v}: {:?}",
                        sparse(id, v).into_iter().collect::<BTreeMap<_, _>>()
                    ),
                    (Kind::Multi, Some(v)) => format!(
                        "version {v}: {:?}",
                        multi(id, v)
                            .iter()
                            .map(|r| normalised(r))
                            .collect::<Vec<_>>()
                    ),
                };
                out.push(format!("`{kind}` read {read}, expected {wanted}"));
            }
        }
        out
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= TOLERANCE)
}

/// What the node stores for a Cosine row: the row divided by its length.
fn normalised(row: &[f32]) -> Vec<f32> {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
    row.iter().map(|x| x / norm).collect()
}

/// Every point of `name`, read through `client` with payloads and all vectors, is in a state
/// the model allows, and every point the model says exists is there. The error lists a few
/// points of each kind of mismatch, with what was read and what was expected.
pub fn matches_model(client: &Client, name: &str, model: &Model) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut unexpected = Vec::new();
    let absent = BTreeSet::from([None]);
    for (id, observed) in read_all(client, name, 200)? {
        ensure!(seen.insert(id), "point {id} returned twice");
        let possible = model.points.get(&id).unwrap_or(&absent);
        let allowed: Vec<&PointState> = possible.iter().flatten().collect();
        if allowed.is_empty() {
            unexpected.push(format!("{id} (v {})", observed.v));
            continue;
        }
        if allowed
            .iter()
            .any(|s| observed.differences(id, s).is_empty())
        {
            continue;
        }
        let states: Vec<String> = possible.iter().map(describe).collect();
        wrong.push(format!(
            "point {id}: {} (allowed: {})",
            observed.differences(id, allowed[0]).join("; "),
            states.join(" or ")
        ));
    }
    let missing: Vec<u64> = model
        .points
        .iter()
        .filter(|(id, s)| !seen.contains(id) && !s.contains(&None))
        .map(|(id, _)| *id)
        .collect();
    ensure!(
        wrong.is_empty() && unexpected.is_empty() && missing.is_empty(),
        "`{name}`: {} points read, {:?} expected; {} missing {:?}, {} unexpected {:?}, {} \
         differing:\n{}",
        seen.len(),
        model.count_range(),
        missing.len(),
        &missing[..missing.len().min(5)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    Ok(())
}

/// [`matches_model`] through every client at once: each is a whole scroll, mostly waiting on
/// the node. The error names the node that read wrong.
pub fn all_match_model(clients: &[Client], name: &str, model: &Model) -> Result<()> {
    std::thread::scope(|scope| {
        let reads: Vec<_> = clients
            .iter()
            .map(|client| {
                let read = scope.spawn(move || matches_model(client, name, model));
                (client.base_url(), read)
            })
            .collect();
        for (url, read) in reads {
            read.join()
                .map_err(|_| anyhow!("the read through {url} panicked"))?
                .with_context(|| format!("read through {url}"))?;
        }
        Ok(())
    })
}

/// What a [`Writer`] does, and its bounds.
#[derive(Debug, Clone)]
pub struct WriterPlan {
    /// The ids it writes.
    pub ids: Range<u64>,
    pub max_steps: u64,
    pub max_time: Duration,
    /// Between two writes.
    pub pause: Duration,
}

/// What a writer did.
#[derive(Debug, Clone)]
pub struct Written {
    pub model: Model,
    /// Acknowledged writes by [`Write::label`].
    pub acknowledged: BTreeMap<&'static str, usize>,
    /// Writes that were not acknowledged, by [`Write::label`].
    pub failed: BTreeMap<&'static str, usize>,
    /// The first few failures.
    pub errors: Vec<String>,
}

impl Written {
    pub fn acknowledged_total(&self) -> usize {
        self.acknowledged.values().sum()
    }

    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }
}

/// The vectors a `points/vectors` write of `step` touches: every non-empty combination in turn.
fn kinds_at(step: u64) -> Vec<Kind> {
    let mask = 1 + (step / 2) % 7;
    Kind::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, k)| k)
        .collect()
}

/// The write of step `step`: in every 8 steps, four upserts of 20 points, two updates of
/// named vectors of up to 10 points, one delete of 5 points and one delete of named vectors of
/// up to 10 points. The `points/vectors` writes name only points that surely exist. `None`
/// when no point in `ids` surely exists.
pub fn write_at(step: u64, ids: &Range<u64>, model: &Model) -> Option<Write> {
    let span = ids.end - ids.start;
    let at = |k: u64| ids.start + (step.wrapping_mul(7919) + k * 101) % span;
    // The first points at or after a pseudo-random id (wrapping) that surely exist: ids picked
    // at random would mostly miss in a sparsely filled range.
    let existing = || -> Vec<u64> {
        let from = at(0);
        model
            .points
            .range(from..ids.end)
            .chain(model.points.range(ids.start..from))
            .filter(|(_, s)| s.iter().all(Option::is_some))
            .map(|(id, _)| *id)
            .take(10)
            .collect()
    };
    let write = match step % 8 {
        0 => Write::Delete {
            ids: (0..5).map(at).collect(),
        },
        2 | 6 => Write::UpdateVectors {
            ids: existing(),
            kinds: kinds_at(step),
            v: step,
        },
        4 => Write::DeleteVectors {
            ids: existing(),
            kinds: kinds_at(step),
        },
        _ => Write::upsert((0..20).map(at), step),
    };
    (!write.ids().is_empty()).then_some(write)
}

/// A sequential writer in the background, through one client, until stopped or bounded. Only
/// acknowledged writes enter the model as certain.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Written>>,
}

impl Writer {
    pub fn start(client: Client, name: &str, model: Model, plan: WriterPlan) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_owned();
        let handle = std::thread::spawn(move || {
            let mut written = Written {
                model,
                acknowledged: BTreeMap::new(),
                failed: BTreeMap::new(),
                errors: Vec::new(),
            };
            let deadline = Instant::now() + plan.max_time;
            let mut step = 1u64;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline && step < plan.max_steps
            {
                if let Some(write) = write_at(step, &plan.ids, &written.model) {
                    match apply(&client, &name, &mut written.model, &write) {
                        Ok(()) => *written.acknowledged.entry(write.label()).or_default() += 1,
                        Err(e) => {
                            *written.failed.entry(write.label()).or_default() += 1;
                            if written.errors.len() < 3 {
                                written
                                    .errors
                                    .push(format!("step {step}, {}: {e:#}", write.label()));
                            }
                        }
                    }
                }
                step += 1;
                if !plan.pause.is_zero() {
                    std::thread::sleep(plan.pause);
                }
            }
            written
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .ok_or_else(|| anyhow!("the writer was already joined"))?
            .join()
            .map_err(|_| anyhow!("the writer panicked"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_vectors_are_well_formed() {
        for id in 0..500 {
            for v in [0, 1, 17] {
                let s = sparse(id, v);
                let indices: BTreeSet<u32> = s.iter().map(|(i, _)| *i).collect();
                assert!(!s.is_empty() && indices.len() == s.len());
                assert!(s.iter().all(|(_, x)| *x != 0.0));
                let m = multi(id, v);
                assert!((1..=3).contains(&m.len()));
                assert!(
                    m.iter()
                        .all(|r| r.len() == MULTI_DIM && r.iter().all(|x| *x > 0.0))
                );
                assert_eq!(dense(id, v).len(), DENSE_DIM);
            }
        }
        // Every kind is sometimes missing, and present most of the time.
        for kind in Kind::ALL {
            let present = (0..1000).filter(|id| has_vector(*id, 3, kind)).count();
            assert!((500..1000).contains(&present), "{kind}: {present}");
        }
    }

    #[test]
    fn model_tracks_acknowledged_and_failed_writes() {
        let mut m = Model::new();
        m.record(&Write::upsert([1, 2], 5), true);
        assert!(m.surely_present(1) && m.is_exact());
        let update = Write::UpdateVectors {
            ids: vec![1],
            kinds: vec![Kind::Sparse],
            v: 6,
        };
        m.record(&update, true);
        let mut want = PointState::upserted(1, 5);
        want.vectors.insert(Kind::Sparse, 6);
        assert_eq!(m.possible(1), BTreeSet::from([Some(want.clone())]));
        // A failed delete of vectors: either state.
        let delete = Write::DeleteVectors {
            ids: vec![1],
            kinds: vec![Kind::Dense, Kind::Sparse],
        };
        m.record(&delete, false);
        assert_eq!(m.possible(1).len(), 2);
        assert!(m.surely_present(1) && !m.is_exact());
        // A failed point delete: present or not.
        m.record(&Write::Delete { ids: vec![2] }, false);
        assert!(!m.surely_present(2));
        assert_eq!(m.count_range(), 1..=2);
        // An acknowledged vector write says the point exists.
        let mut maybe_gone = m.clone();
        maybe_gone.record(&update, true);
        assert!(maybe_gone.possible(2).contains(&None));
        maybe_gone.record(
            &Write::UpdateVectors {
                ids: vec![2],
                kinds: vec![Kind::Dense],
                v: 8,
            },
            true,
        );
        assert!(maybe_gone.surely_present(2));
        // Acknowledged writes settle it.
        m.record(&Write::Delete { ids: vec![2] }, true);
        m.record(&Write::upsert([1], 9), true);
        assert!(m.is_exact());
        assert_eq!(m.count_range(), 1..=1);
        assert_eq!(m.possible(2), BTreeSet::from([None]));
    }

    #[test]
    fn observed_points_compare_by_value_not_by_form() {
        let id = 7;
        let mut state = PointState::upserted(id, 3);
        for k in Kind::ALL {
            state.vectors.insert(k, 3);
        }
        let mut indices: Vec<(u32, f32)> = sparse(id, 3);
        indices.sort_by_key(|(i, _)| *i);
        let (i, v): (Vec<u32>, Vec<f32>) = indices.into_iter().unzip();
        let rows: Vec<Vec<f32>> = multi(id, 3).iter().map(|r| normalised(r)).collect();
        let read: ReadPoint = serde_json::from_value(json!({
            "id": id,
            "payload": {"v": 3, "other": "x"},
            "vector": {"dense": dense(id, 3), "sparse": {"indices": i, "values": v}, "multi": rows},
            "shard_key": null,
        }))
        .unwrap();
        let (read_id, observed) = Observed::from_read(read).unwrap();
        assert_eq!(read_id, id);
        assert_eq!(observed.differences(id, &state), Vec::<String>::new());
        state.vectors.remove(&Kind::Multi);
        state.vectors.insert(Kind::Sparse, 4);
        let diffs = observed.differences(id, &state);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].starts_with("`sparse`") && diffs[1].starts_with("`multi`"));
        // An unnamed vector, or an unknown name, is not what this collection holds.
        for vector in [json!([1.0]), json!({"other": [1.0]})] {
            let read = serde_json::from_value::<ReadPoint>(json!({"id": 1, "vector": vector}));
            assert!(read.is_err());
        }
        let read: ReadPoint =
            serde_json::from_value(json!({"id": 1, "payload": {"v": 2}, "vector": {}})).unwrap();
        let (_, empty) = Observed::from_read(read).unwrap();
        assert!(empty.dense.is_none() && empty.sparse.is_none() && empty.multi.is_none());
    }

    #[test]
    fn the_writer_mixes_every_write() {
        let mut m = Model::new();
        m.record(&Write::upsert(0..1000, 0), true);
        let labels: BTreeSet<&str> = (1..64)
            .filter_map(|s| write_at(s, &(0..1000), &m))
            .map(|w| w.label())
            .collect();
        assert_eq!(labels.len(), 4, "{labels:?}");
        let kinds: BTreeSet<Vec<Kind>> = (0..64).map(kinds_at).collect();
        assert_eq!(kinds.len(), 7);
        // In a range where few points exist, the vector writes still find them.
        let mut few = Model::new();
        few.record(&Write::upsert([500, 900], 0), true);
        few.record(&Write::Delete { ids: vec![900] }, false);
        for step in [2, 4, 6, 10] {
            let write = write_at(step, &(0..1000), &few).expect("a vector write");
            assert_eq!(write.ids(), &[500][..], "{write:?}");
        }
        assert_eq!(write_at(2, &(0..1000), &Model::new()), None);
    }
}
