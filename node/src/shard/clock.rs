//! Clock tags: which updates a replica has applied, stated so that another replica can tell
//! what it missed.
//!
//! Qdrant's scheme (`ClockTag`, `ClockMap`, `RecoveryPoint`), kept in its essentials:
//!
//! - A coordinator sends every update to a shard's replicas with a [`ClockTag`] taken from one
//!   of its clocks for that shard (a [`ClockSet`]): `(peer, clock, tick, token)`. A clock is held
//!   for the whole replicated write, so one clock's ticks reach each replica in order.
//! - Each replica keeps, per clock, the highest tick it applied ([`ClockMap`]) and logs the tag
//!   with the operation in its WAL. A tick it already applied is not applied again
//!   ([`Admission::Duplicate`]); an older one, or the same tick from another coordinator run
//!   (a restarted coordinator starts its clocks again at 0), is refused with the replica's
//!   tick ([`Admission::Behind`]), and the coordinator moves its clock past it and retries.
//! - Writes that reach a replica without a coordinator's tag (a transfer's own stream, a
//!   resharding's points, a direct local write) are tagged with the replica's own *local
//!   clock* (`(replica uid, LOCAL_CLOCK)`), so every WAL record says where it came from.
//! - A replica that takes a full copy of another (a transfer's stream or snapshot) ends by
//!   merging the source's clock map as of the moment forwarding began: from then on it covers
//!   everything the source had. That merge is a WAL record too.
//!
//! A recovering replica reports its clock map as its *recovery point*; the source replays its
//! WAL from the first record the point does not cover (see [`delta_start`]), provided its WAL
//! still reaches back that far ([`WalBase::reaches`]). Shoal differs from Qdrant in one place:
//! a replica that starts receiving a copy freezes its recovery point (the *floor*) until the
//! copy finished, so a copy that fails halfway never claims the updates forwarded to it
//! meanwhile as the whole history.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The clock id of a replica's local clock (never a coordinator's: those count from 0).
pub const LOCAL_CLOCK: u32 = u32::MAX;

/// One clock: a coordinator's `(peer, clock)`, or a replica's local clock `(uid, LOCAL_CLOCK)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClockKey {
    pub peer: u64,
    pub clock: u32,
}

/// The tag of one update: the clock it was sent on, its tick on that clock (from 1), and a
/// random token that tells two updates with the same tick apart (a restarted coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockTag {
    pub peer: u64,
    pub clock: u32,
    pub tick: u64,
    pub token: u64,
}

impl ClockTag {
    pub fn key(&self) -> ClockKey {
        ClockKey {
            peer: self.peer,
            clock: self.clock,
        }
    }
}

/// What a replica does with a tagged update from a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A tick newer than any applied on its clock: apply it.
    Apply,
    /// This very update (tick and token) was applied already: acknowledge, apply nothing.
    Duplicate,
    /// An older tick, or the same tick of another update: refused; the replica's clock is at
    /// this tick, the coordinator must tick past it.
    Behind(u64),
}

/// Per clock, the highest tick applied (with its token). Serialized as a list of tags, so it
/// travels as JSON and postcard alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<ClockTag>", into = "Vec<ClockTag>")]
pub struct ClockMap {
    clocks: BTreeMap<ClockKey, (u64, u64)>,
}

impl From<Vec<ClockTag>> for ClockMap {
    fn from(tags: Vec<ClockTag>) -> ClockMap {
        let mut map = ClockMap::default();
        for tag in tags {
            map.advance(&tag);
        }
        map
    }
}

impl From<ClockMap> for Vec<ClockTag> {
    fn from(map: ClockMap) -> Vec<ClockTag> {
        map.tags().collect()
    }
}

impl ClockMap {
    /// The highest tick applied on `key` (0 for a clock never seen).
    pub fn tick(&self, key: ClockKey) -> u64 {
        self.clocks.get(&key).map_or(0, |c| c.0)
    }

    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.clocks.len()
    }

    /// Every clock as the tag of its highest tick.
    pub fn tags(&self) -> impl Iterator<Item = ClockTag> + '_ {
        self.clocks.iter().map(|(k, &(tick, token))| ClockTag {
            peer: k.peer,
            clock: k.clock,
            tick,
            token,
        })
    }

    /// Whether a coordinator's update with `tag` is applied here (see [`Admission`]).
    pub fn admit(&self, tag: &ClockTag) -> Admission {
        match self.clocks.get(&tag.key()) {
            None => Admission::Apply,
            Some(&(tick, _)) if tag.tick > tick => Admission::Apply,
            Some(&(tick, token)) if tag.tick == tick && tag.token == token => Admission::Duplicate,
            Some(&(tick, _)) => Admission::Behind(tick),
        }
    }

    /// Records that the update tagged `tag` was applied (a clock never goes back).
    pub fn advance(&mut self, tag: &ClockTag) {
        let entry = self.clocks.entry(tag.key()).or_insert((0, 0));
        if tag.tick > entry.0 {
            *entry = (tag.tick, tag.token);
        }
    }

    /// Takes every clock of `other` that is ahead of this map's.
    pub fn merge(&mut self, other: &ClockMap) {
        for tag in other.tags() {
            self.advance(&tag);
        }
    }

    /// Keeps only the clocks `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(ClockKey) -> bool) {
        self.clocks.retain(|k, _| keep(*k));
    }

    /// Whether this map has applied every tick `other` has, on every clock but `except`.
    pub fn covers(&self, other: &ClockMap, except: Option<ClockKey>) -> bool {
        other
            .clocks
            .iter()
            .all(|(k, &(tick, _))| Some(*k) == except || self.tick(*k) >= tick)
    }
}

/// What a replica's WAL no longer holds: the clocks of every record dropped from its front
/// (and of the copies merged before them), and whether any of its own local records among
/// them came after the last merge. Kept with each flush; only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalBase {
    pub clocks: ClockMap,
    /// A dropped local record was not followed by a dropped merge: a replica that never
    /// copied from this one cannot have it.
    pub local_after_merge: bool,
}

impl WalBase {
    /// Takes a record dropped from the front of the WAL into account.
    pub fn fold(&mut self, entry: &WalMark<'_>, own_local: ClockKey) {
        match entry {
            WalMark::Op(Some(tag)) => {
                self.clocks.advance(tag);
                if tag.key() == own_local {
                    self.local_after_merge = true;
                }
            }
            WalMark::Op(None) => self.local_after_merge = true,
            WalMark::Merge(clocks) => {
                self.clocks.merge(clocks);
                self.local_after_merge = false;
            }
            WalMark::FreshCopy | WalMark::Other => {}
        }
    }

    /// Whether a replica at recovery point `point` can be brought up to date from the WAL
    /// alone: it holds everything the dropped records did.
    pub fn reaches(&self, point: &ClockMap, own_local: ClockKey) -> bool {
        point.covers(&self.clocks, Some(own_local))
            && (!self.local_after_merge || point.tick(own_local) >= self.clocks.tick(own_local))
    }
}

/// The part of a WAL record that recovery looks at.
#[derive(Debug, Clone, Copy)]
pub enum WalMark<'a> {
    /// An operation with its tag (`None`: written before clock tags existed).
    Op(Option<&'a ClockTag>),
    /// A finished fresh copy merged these clocks.
    Merge(&'a ClockMap),
    /// A fresh copy began: the replica was cleared of the points it held then. Replaying
    /// across it onto another replica would clear only those (see [`LocalShard::wal_delta`]).
    ///
    /// [`LocalShard::wal_delta`]: crate::shard::local_shard::LocalShard::wal_delta
    FreshCopy,
    /// Anything else (a floor being set, a `wal_delta` finished).
    Other,
}

/// The index of the first of `records` (a WAL, oldest first) that a replica at recovery point
/// `point` has not applied, or `None` when it has them all.
///
/// A record tagged by a coordinator is covered when the point's tick on its clock is at least
/// the record's. A local record of the source (`own_local`) is covered when the point reached
/// its tick (it copied from the source after it), or when a later merge in the WAL is covered
/// (the source's state then included it, and the point covers that state). A merge is covered
/// when the point covers its clocks. Records from before clock tags are never covered.
pub fn delta_start(
    records: &[WalMark<'_>],
    point: &ClockMap,
    own_local: ClockKey,
) -> Option<usize> {
    let mut covered_by_later_merge = vec![false; records.len()];
    let mut later = false;
    for (i, mark) in records.iter().enumerate().rev() {
        covered_by_later_merge[i] = later;
        if let WalMark::Merge(clocks) = mark
            && point.covers(clocks, Some(own_local))
        {
            later = true;
        }
    }
    records.iter().enumerate().position(|(i, mark)| match mark {
        WalMark::Op(Some(tag)) if tag.key() == own_local => {
            point.tick(own_local) < tag.tick && !covered_by_later_merge[i]
        }
        WalMark::Op(Some(tag)) => point.tick(tag.key()) < tag.tick,
        WalMark::Op(None) => !covered_by_later_merge[i],
        WalMark::Merge(clocks) => !point.covers(clocks, Some(own_local)),
        WalMark::FreshCopy | WalMark::Other => false,
    })
}

/// A coordinator's clocks for one shard. A clock is held for the whole replicated write, so
/// concurrent writes take different clocks (the set grows to the highest concurrency seen).
/// In memory only: a restarted coordinator starts at tick 0 and is moved on by the replicas'
/// [`Admission::Behind`] answers.
///
/// A clock whose last write did not reach every replica it was sent to (a replica failed, the
/// write was abandoned halfway) is never used again: its slot gets a new clock id. Otherwise a
/// replica that missed tick `t` could take tick `t + 1` (before it learns it is `Dead`) and its
/// clock map would claim `t` too, hiding the gap from a later `wal_delta`.
#[derive(Debug, Default)]
pub struct ClockSet {
    clocks: parking_lot::Mutex<ClockSlots>,
}

#[derive(Debug, Default)]
struct ClockSlots {
    slots: Vec<(u32, Arc<tokio::sync::Mutex<u64>>)>,
    next_id: u32,
}

impl ClockSlots {
    fn fresh(&mut self) -> (u32, Arc<tokio::sync::Mutex<u64>>) {
        let id = self.next_id;
        // Never `LOCAL_CLOCK`: four billion retired clocks on one peer and shard first.
        self.next_id = (self.next_id + 1) % LOCAL_CLOCK;
        (id, Arc::new(tokio::sync::Mutex::new(0)))
    }
}

/// A clock taken from a [`ClockSet`], released when dropped: for reuse once
/// [`HeldClock::completed`] was called, retired otherwise.
#[derive(Debug)]
pub struct HeldClock {
    set: Arc<ClockSet>,
    slot: usize,
    peer: u64,
    clock: u32,
    tick: Option<tokio::sync::OwnedMutexGuard<u64>>,
    completed: bool,
}

impl ClockSet {
    /// Takes a free clock (a new one when all are in use). Never waits.
    pub fn take(self: &Arc<Self>, peer: u64) -> HeldClock {
        let mut clocks = self.clocks.lock();
        let free = clocks
            .slots
            .iter()
            .enumerate()
            .find_map(|(i, (id, clock))| Some((i, *id, Arc::clone(clock).try_lock_owned().ok()?)));
        let (slot, clock, tick) = match free {
            Some(found) => found,
            None => {
                let (id, clock) = clocks.fresh();
                let tick = Arc::clone(&clock)
                    .try_lock_owned()
                    .expect("a new clock is free");
                clocks.slots.push((id, clock));
                (clocks.slots.len() - 1, id, tick)
            }
        };
        HeldClock {
            set: Arc::clone(self),
            slot,
            peer,
            clock,
            tick: Some(tick),
            completed: false,
        }
    }
}

impl HeldClock {
    /// The tag of the next update on this clock.
    pub fn next_tag(&mut self) -> ClockTag {
        let tick = self.tick.as_mut().expect("held until dropped");
        **tick += 1;
        ClockTag {
            peer: self.peer,
            clock: self.clock,
            tick: **tick,
            token: rand::random(),
        }
    }

    /// Moves the clock to at least `tick` (a replica answered [`Admission::Behind`]).
    pub fn advance_to(&mut self, tick: u64) {
        let held = self.tick.as_mut().expect("held until dropped");
        **held = (**held).max(tick);
    }

    /// Every replica the last tag was sent to applied it: the clock may be used again.
    pub fn completed(&mut self) {
        self.completed = true;
    }
}

impl Drop for HeldClock {
    fn drop(&mut self) {
        if !self.completed {
            let mut clocks = self.set.clocks.lock();
            let fresh = clocks.fresh();
            if let Some(slot) = clocks.slots.get_mut(self.slot) {
                *slot = fresh;
            }
        }
        // The guard goes last: no one takes the retired clock meanwhile.
        self.tick.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(peer: u64, clock: u32, tick: u64, token: u64) -> ClockTag {
        ClockTag {
            peer,
            clock,
            tick,
            token,
        }
    }

    const OWN: ClockKey = ClockKey {
        peer: 99,
        clock: LOCAL_CLOCK,
    };

    #[test]
    fn admission_applies_new_ticks_once_and_refuses_old_ones() {
        let mut map = ClockMap::default();
        assert_eq!(map.admit(&tag(1, 0, 1, 7)), Admission::Apply);
        map.advance(&tag(1, 0, 1, 7));
        assert_eq!(map.admit(&tag(1, 0, 1, 7)), Admission::Duplicate);
        // Same tick, another update (a restarted coordinator): refused with the tick.
        assert_eq!(map.admit(&tag(1, 0, 1, 8)), Admission::Behind(1));
        map.advance(&tag(1, 0, 5, 9));
        assert_eq!(map.admit(&tag(1, 0, 3, 9)), Admission::Behind(5));
        assert_eq!(map.admit(&tag(1, 0, 6, 1)), Admission::Apply);
        // Other clocks are independent.
        assert_eq!(map.admit(&tag(1, 1, 1, 1)), Admission::Apply);
        assert_eq!(map.admit(&tag(2, 0, 1, 1)), Admission::Apply);
        // A clock never goes back.
        map.advance(&tag(1, 0, 2, 2));
        assert_eq!(map.tick(ClockKey { peer: 1, clock: 0 }), 5);
    }

    #[test]
    fn a_clock_map_survives_json_and_postcard() {
        let mut map = ClockMap::default();
        map.advance(&tag(1, 0, 4, 11));
        map.advance(&tag(u64::MAX, LOCAL_CLOCK, 9, 12));
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<ClockMap>(&json).unwrap(), map);
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert_eq!(postcard::from_bytes::<ClockMap>(&bytes).unwrap(), map);
    }

    #[test]
    fn the_delta_starts_at_the_first_record_the_point_lacks() {
        let t = [
            tag(1, 0, 1, 0),
            tag(2, 0, 1, 0),
            tag(1, 0, 2, 0),
            tag(2, 0, 2, 0),
        ];
        let marks: Vec<WalMark> = t.iter().map(|t| WalMark::Op(Some(t))).collect();
        let mut point = ClockMap::default();
        assert_eq!(delta_start(&marks, &point, OWN), Some(0));
        point.advance(&t[0]);
        assert_eq!(delta_start(&marks, &point, OWN), Some(1));
        // The replica applied (2,0,1) and (1,0,2) but missed (1,0,... ) nothing else: the
        // first gap decides, later records are replayed even where covered.
        point.advance(&t[2]);
        assert_eq!(delta_start(&marks, &point, OWN), Some(1));
        point.advance(&t[3]);
        assert_eq!(delta_start(&marks, &point, OWN), None);
    }

    #[test]
    fn local_records_are_covered_only_by_a_covered_later_merge_or_their_own_tick() {
        let local = [
            tag(OWN.peer, OWN.clock, 1, 0),
            tag(OWN.peer, OWN.clock, 2, 0),
        ];
        let coordinator = tag(1, 0, 10, 0);
        let mut merged = ClockMap::default();
        merged.advance(&coordinator);
        let after = tag(1, 0, 11, 0);
        let marks = [
            WalMark::Op(Some(&local[0])),
            WalMark::Op(Some(&local[1])),
            WalMark::Merge(&merged),
            WalMark::Op(Some(&after)),
        ];
        // A replica that never saw clock (1, 0) up to 10 needs the copy too.
        assert_eq!(delta_start(&marks, &ClockMap::default(), OWN), Some(0));
        // One that covers the merge lacks only the later record.
        let mut point = ClockMap::default();
        point.advance(&coordinator);
        assert_eq!(delta_start(&marks, &point, OWN), Some(3));
        // A local record after the last merge is never covered by someone who did not copy
        // from the source after it.
        let late_local = tag(OWN.peer, OWN.clock, 3, 0);
        let marks = [WalMark::Merge(&merged), WalMark::Op(Some(&late_local))];
        assert_eq!(delta_start(&marks, &point, OWN), Some(1));
        point.advance(&late_local);
        assert_eq!(delta_start(&marks, &point, OWN), None);
        // Untagged (older) records count as local ones without a tick.
        let marks = [WalMark::Op(None), WalMark::Merge(&merged)];
        assert_eq!(
            delta_start(&marks, &ClockMap::from(vec![coordinator]), OWN),
            None
        );
        assert_eq!(delta_start(&marks, &ClockMap::default(), OWN), Some(0));
    }

    #[test]
    fn the_wal_reaches_a_point_only_if_the_point_holds_what_was_dropped() {
        let mut base = WalBase::default();
        let point = ClockMap::from(vec![tag(1, 0, 5, 0)]);
        assert!(base.reaches(&point, OWN));
        base.fold(&WalMark::Op(Some(&tag(1, 0, 5, 0))), OWN);
        assert!(base.reaches(&point, OWN));
        base.fold(&WalMark::Op(Some(&tag(1, 0, 6, 0))), OWN);
        assert!(!base.reaches(&point, OWN));
        assert!(base.reaches(&ClockMap::from(vec![tag(1, 0, 6, 0)]), OWN));
        // A dropped local record: only a point that copied from here after it is reached...
        let point = ClockMap::from(vec![tag(1, 0, 6, 0)]);
        base.fold(&WalMark::Op(Some(&tag(OWN.peer, OWN.clock, 1, 0))), OWN);
        assert!(!base.reaches(&point, OWN));
        let copied = ClockMap::from(vec![tag(1, 0, 6, 0), tag(OWN.peer, OWN.clock, 1, 0)]);
        assert!(base.reaches(&copied, OWN));
        // ...until a dropped merge says the state after it is what the merged clocks say.
        base.fold(&WalMark::Merge(&ClockMap::from(vec![tag(1, 0, 6, 0)])), OWN);
        assert!(base.reaches(&point, OWN));
    }

    #[tokio::test]
    async fn concurrent_writes_take_different_clocks_and_ticks_increase() {
        let set = Arc::new(ClockSet::default());
        let mut a = set.take(3);
        let mut b = set.take(3);
        let (ta, tb) = (a.next_tag(), b.next_tag());
        assert_ne!(ta.clock, tb.clock);
        assert_eq!((ta.tick, tb.tick), (1, 1));
        a.advance_to(10);
        assert_eq!(a.next_tag().tick, 11);
        a.completed();
        drop(a);
        // The released clock is taken again and goes on from where it was.
        let mut again = set.take(3);
        let next = again.next_tag();
        assert_eq!((next.clock, next.tick), (ta.clock, 12));
        // A write that did not complete everywhere retires its clock: the slot's next user
        // gets a clock id never used before.
        drop(again);
        let mut after = set.take(3);
        let next = after.next_tag();
        assert_eq!(next.tick, 1);
        assert!(next.clock != ta.clock && next.clock != tb.clock);
    }
}
