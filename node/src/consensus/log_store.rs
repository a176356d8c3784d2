//! The durable Raft log of the cluster-metadata group: log entries by index, the vote, the
//! committed log id and the last purged log id, in one redb database (`raft-log.redb` in the
//! consensus directory).
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before the
//! method returns or its flush callback fires, which is what Raft's safety rests on: a vote or
//! an acknowledged entry must survive `kill -9`. Entries are stored as JSON; they carry small
//! metadata operations, and JSON keeps the file readable when debugging a cluster.
//!
//! This module owns only that file. It knows nothing of what the entries mean.

// openraft's storage traits fix the error type (`StorageError`, about 200 bytes); boxing it in
// the helpers here would only unbox it again at every trait method.
#![allow(clippy::result_large_err)]

use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::type_config::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The log file's name inside the consensus directory.
pub const LOG_FILE: &str = "raft-log.redb";

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

/// The Raft log store. Cloning is cheap and shares the database; a clone serves as the log
/// reader that openraft hands to its replication tasks.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

fn encode<T: Serialize>(value: &T, subject: ErrorSubject<NodeId>) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| io_error(subject, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    subject: ErrorSubject<NodeId>,
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| io_error(subject, ErrorVerb::Read, e))
}

/// Runs blocking database work (fsyncs, B-tree reads) off the async executor threads.
async fn blocking<T, F>(subject: ErrorSubject<NodeId>, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_error(subject, ErrorVerb::Write, e))?
}

/// The memory redb may hold for the log's pages, in bytes (redb's default is 1 GiB). Entries
/// are read back mostly right after they are written, by replication and apply.
const CACHE_BYTES: usize = 8 << 20;

impl LogStore {
    /// Opens (or creates) the log in `dir`. Blocking; call it at startup.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        let err = |e: &dyn Display| io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(LOG_FILE))
            .map_err(|e| err(&e))?;
        // Create the tables up front so that readers never meet "table does not exist".
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(LOGS).map_err(|e| err(&e))?;
        txn.open_table(META).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn read_meta<T: DeserializeOwned>(
        db: &Database,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let err = |e: &dyn Display| io_error(subject.clone(), ErrorVerb::Read, e);
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(META).map_err(|e| err(&e))?;
        match table.get(key).map_err(|e| err(&e))? {
            Some(value) => decode(value.value(), subject.clone()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes one metadata value and commits durably.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = encode(value, subject.clone())?;
        let db = self.db.clone();
        blocking(subject.clone(), move || {
            let err = |e: &dyn Display| io_error(subject.clone(), ErrorVerb::Write, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            {
                let mut table = txn.open_table(META).map_err(|e| err(&e))?;
                table.insert(key, bytes.as_slice()).map_err(|e| err(&e))?;
            }
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }
}

/// `[start, end)` of a range of log indexes; `end` is `None` when unbounded.
fn index_span<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.checked_add(1),
        Bound::Excluded(i) => Some(*i),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_span(&range);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let err = |e: &dyn Display| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(LOGS).map_err(|e| err(&e))?;
            let rows = match end {
                Some(end) => table.range(start..end),
                None => table.range(start..),
            }
            .map_err(|e| err(&e))?;
            let mut entries = Vec::new();
            for row in rows {
                let (index, value) = row.map_err(|e| err(&e))?;
                entries.push(decode(
                    value.value(),
                    ErrorSubject::LogIndex(index.value()),
                )?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let last_purged_log_id: Option<LogId> =
                LogStore::read_meta(&db, LAST_PURGED_KEY, ErrorSubject::Logs)?;
            let err = |e: &dyn Display| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(LOGS).map_err(|e| err(&e))?;
            let last = match table.last().map_err(|e| err(&e))? {
                Some((index, value)) => {
                    let entry: Entry =
                        decode(value.value(), ErrorSubject::LogIndex(index.value()))?;
                    Some(*entry.get_log_id())
                }
                None => None,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id: last.or(last_purged_log_id),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE_KEY, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Vote, move || {
            LogStore::read_meta(&db, VOTE_KEY, ErrorSubject::Vote)
        })
        .await
    }

    /// Saved so that a restarted peer re-applies every committed entry at once, instead of
    /// serving a state machine that lags behind what it had already applied.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED_KEY, &committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Store, move || {
            let committed: Option<Option<LogId>> =
                LogStore::read_meta(&db, COMMITTED_KEY, ErrorSubject::Store)?;
            Ok(committed.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            rows.push((log_id.index, encode(&entry, ErrorSubject::Log(log_id))?));
        }
        let db = self.db.clone();
        let written = blocking(ErrorSubject::Logs, move || {
            let err = |e: &dyn Display| io_error(ErrorSubject::Logs, ErrorVerb::Write, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            {
                let mut table = txn.open_table(LOGS).map_err(|e| err(&e))?;
                for (index, bytes) in &rows {
                    table.insert(index, bytes.as_slice()).map_err(|e| err(&e))?;
                }
            }
            // Immediate durability (redb's default): the commit returns after the fsync.
            txn.commit().map_err(|e| err(&e))
        })
        .await;
        // The callback tells openraft the entries are on disk, so it fires only after commit.
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let err = |e: &dyn Display| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            {
                let mut table = txn.open_table(LOGS).map_err(|e| err(&e))?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(|e| err(&e))?;
            }
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = encode(&log_id, ErrorSubject::Logs)?;
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let err = |e: &dyn Display| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            {
                // One transaction: the purge marker and the deletion land together, so
                // `get_log_state` never sees entries missing without knowing they were purged.
                let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
                meta.insert(LAST_PURGED_KEY, purged.as_slice())
                    .map_err(|e| err(&e))?;
                let mut table = txn.open_table(LOGS).map_err(|e| err(&e))?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| err(&e))?;
            }
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }
}
