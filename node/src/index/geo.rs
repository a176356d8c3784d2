//! Geo conditions of payload filters (`geo_radius`, `geo_bounding_box`, `geo_polygon`) over
//! payload values `{"lon": .., "lat": ..}`, with the semantics of Qdrant's reference
//! implementation (qdrant-client's local mode): haversine distances on a sphere of mean Earth
//! radius, strict inequalities on boxes and circles, and polygon boundaries outside the
//! exterior ring but inside a hole.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Mean Earth radius in metres (the value Qdrant uses).
const MEAN_EARTH_RADIUS: f64 = 6_371_008.8;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    pub lon: f64,
    pub lat: f64,
}

impl GeoPoint {
    /// A payload value that is a geo point: an object with numeric `lon` and `lat`.
    pub fn from_value(value: &Value) -> Option<GeoPoint> {
        let obj = value.as_object()?;
        Some(GeoPoint {
            lon: obj.get("lon")?.as_f64()?,
            lat: obj.get("lat")?.as_f64()?,
        })
    }

    fn check(&self, what: &str) -> Result<(), String> {
        if !(-180.0..=180.0).contains(&self.lon) || !(-90.0..=90.0).contains(&self.lat) {
            return Err(format!(
                "{what}: longitude must be in [-180, 180] and latitude in [-90, 90], got ({}, {})",
                self.lon, self.lat
            ));
        }
        Ok(())
    }
}

/// Great-circle distance in metres between two points (haversine).
pub fn geo_distance(a: GeoPoint, b: GeoPoint) -> f64 {
    let (lon1, lat1, lon2, lat2) = (
        a.lon.to_radians(),
        a.lat.to_radians(),
        b.lon.to_radians(),
        b.lat.to_radians(),
    );
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * MEAN_EARTH_RADIUS * h.sqrt().asin()
}

/// `{"center": {"lon", "lat"}, "radius": metres}`: points closer than `radius`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoRadius {
    pub center: GeoPoint,
    pub radius: f64,
}

/// `{"top_left": .., "bottom_right": ..}`: points strictly inside; a box whose left edge is
/// east of its right edge crosses the antimeridian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoBoundingBox {
    pub top_left: GeoPoint,
    pub bottom_right: GeoPoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoLineString {
    pub points: Vec<GeoPoint>,
}

/// `{"exterior": {"points": [...]}, "interiors": [...]}`: points inside the exterior ring and
/// in no interior ring (hole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoPolygon {
    pub exterior: GeoLineString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interiors: Option<Vec<GeoLineString>>,
}

/// Most points in one polygon ring.
const MAX_RING_POINTS: usize = 10_000;

impl GeoRadius {
    pub fn validate(&self) -> Result<(), String> {
        self.center.check("geo_radius center")?;
        if !(self.radius.is_finite() && self.radius >= 0.0) {
            return Err("geo_radius radius must be a non-negative number of metres".into());
        }
        Ok(())
    }

    pub fn contains(&self, p: GeoPoint) -> bool {
        geo_distance(p, self.center) < self.radius
    }
}

impl GeoBoundingBox {
    pub fn validate(&self) -> Result<(), String> {
        self.top_left.check("geo_bounding_box top_left")?;
        self.bottom_right.check("geo_bounding_box bottom_right")
    }

    pub fn contains(&self, p: GeoPoint) -> bool {
        let (left, right) = (self.top_left.lon, self.bottom_right.lon);
        let lon_ok = if left > right {
            p.lon > left || p.lon < right
        } else {
            left < p.lon && p.lon < right
        };
        lon_ok && self.top_left.lat > p.lat && p.lat > self.bottom_right.lat
    }
}

impl GeoPolygon {
    pub fn validate(&self) -> Result<(), String> {
        for ring in std::iter::once(&self.exterior).chain(self.interiors.iter().flatten()) {
            if ring.points.len() < 4 {
                return Err("a geo_polygon ring needs at least 4 points".into());
            }
            if ring.points.len() > MAX_RING_POINTS {
                return Err(format!(
                    "a geo_polygon ring has at most {MAX_RING_POINTS} points"
                ));
            }
            if ring.points.first() != ring.points.last() {
                return Err(
                    "a geo_polygon ring must be closed: its first and last points must be equal"
                        .into(),
                );
            }
            for p in &ring.points {
                p.check("geo_polygon point")?;
            }
        }
        Ok(())
    }

    pub fn contains(&self, p: GeoPoint) -> bool {
        in_ring(p, &self.exterior.points, true)
            && !self
                .interiors
                .iter()
                .flatten()
                .any(|hole| in_ring(p, &hole.points, false))
    }
}

/// Ray casting over a ring (closed or not), with a point on the boundary counting as inside
/// unless `ignore_boundary` (then outside), as in Qdrant's reference implementation.
fn in_ring(p: GeoPoint, ring: &[GeoPoint], ignore_boundary: bool) -> bool {
    let ring = match ring {
        [first, rest @ .., last] if first == last && !rest.is_empty() => &ring[..ring.len() - 1],
        _ => ring,
    };
    if ring.is_empty() {
        return false;
    }
    // (x, y) = (lat, lon), as the reference implementation orders them.
    let (px, py) = (p.lat, p.lon);
    let mut inside = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let (xi, yi, xj, yj) = (ring[i].lat, ring[i].lon, ring[j].lat, ring[j].lon);
        let on_boundary = py * (xi - xj) + yi * (xj - px) + yj * (px - xi) == 0.0
            && (xi - px) * (xj - px) <= 0.0
            && (yi - py) * (yj - py) <= 0.0;
        if on_boundary {
            return !ignore_boundary;
        }
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lon: f64, lat: f64) -> GeoPoint {
        GeoPoint { lon, lat }
    }

    #[test]
    fn distances_match_known_cities() {
        let moscow = p(37.6173, 55.7558);
        let london = p(-0.1278, 51.5074);
        let d = geo_distance(moscow, london);
        assert!((2_400_000.0..2_600_000.0).contains(&d), "{d}");
        assert!(geo_distance(moscow, moscow) < 1.0);
    }

    #[test]
    fn boxes_circles_and_polygons() {
        let bbox = GeoBoundingBox {
            top_left: p(10.0, 50.0),
            bottom_right: p(20.0, 40.0),
        };
        assert!(bbox.contains(p(15.0, 45.0)));
        assert!(!bbox.contains(p(10.0, 45.0)), "edges are outside");
        let across = GeoBoundingBox {
            top_left: p(170.0, 10.0),
            bottom_right: p(-170.0, -10.0),
        };
        assert!(across.contains(p(179.0, 0.0)) && across.contains(p(-179.0, 0.0)));
        assert!(!across.contains(p(0.0, 0.0)));
        let circle = GeoRadius {
            center: p(0.0, 0.0),
            radius: 200_000.0,
        };
        assert!(circle.contains(p(1.0, 1.0)) && !circle.contains(p(2.0, 2.0)));
        let square = |lo: f64, hi: f64| GeoLineString {
            points: vec![p(lo, lo), p(hi, lo), p(hi, hi), p(lo, hi), p(lo, lo)],
        };
        let poly = GeoPolygon {
            exterior: square(0.0, 10.0),
            interiors: Some(vec![square(4.0, 6.0)]),
        };
        poly.validate().unwrap();
        assert!(poly.contains(p(2.0, 2.0)));
        assert!(!poly.contains(p(5.0, 5.0)), "inside the hole");
        assert!(!poly.contains(p(0.0, 5.0)), "on the exterior boundary");
        assert!(!poly.contains(p(11.0, 5.0)));
    }
}
