//! The background work of a shard: the optimizer (indexing and vacuuming segments) and the
//! periodic flush. Both are tokio tasks that hand the blocking work to blocking threads and end
//! when the shard is cancelled.

use std::sync::Arc;
use std::time::Duration;

use crate::shard::local_shard::{IndexBuilder, LocalShard};

/// Starts the optimizer and flusher of `shard`. They stop on [`LocalShard::cancel`].
pub fn spawn(shard: Arc<LocalShard>, builder: Arc<IndexBuilder>) {
    tokio::spawn(optimize_loop(Arc::clone(&shard), builder));
    tokio::spawn(flush_loop(shard));
}

async fn optimize_loop(shard: Arc<LocalShard>, builder: Arc<IndexBuilder>) {
    loop {
        loop {
            let (s, b) = (Arc::clone(&shard), Arc::clone(&builder));
            match tokio::task::spawn_blocking(move || s.optimize_step(&b)).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, dir = %shard.dir().display(), "optimizer step panicked");
                    break;
                }
            }
        }
        if shard.is_cancelled() {
            return;
        }
        // Woken by writes; the timeout also retries after a failed or cancelled step.
        let _ = tokio::time::timeout(Duration::from_secs(5), shard.wake_optimizer.notified()).await;
        if shard.is_cancelled() {
            return;
        }
    }
}

async fn flush_loop(shard: Arc<LocalShard>) {
    // Durability does not wait for it (every write is in the WAL first): the period only
    // bounds how much WAL a restart replays. It is read again every second, so a changed
    // `flush_interval_sec` applies without a restart.
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shard.is_cancelled() {
            return;
        }
        let period = Duration::from_secs(shard.config().optimizer_config.flush_interval_sec.max(1));
        if last.elapsed() < period {
            continue;
        }
        let s = Arc::clone(&shard);
        match tokio::task::spawn_blocking(move || s.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, dir = %shard.dir().display(), "flush failed; will retry")
            }
            Err(e) => tracing::error!(error = %e, "flush task panicked"),
        }
        last = tokio::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::collection_config::CollectionConfig;
    use crate::shard::operations::{PointWrite, UpdateRequest};
    use crate::storage::wal::SyncMode;
    use crate::types::{Distance, Payload, PointId};

    /// A `flush_interval_sec` changed on a live collection applies without a restart (it used
    /// to be read once, when the flusher started).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shorter_flush_interval_applies_to_a_running_shard() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CollectionConfig::single_dense(2, Distance::Dot);
        config.optimizer_config.flush_interval_sec = 3600;
        let shard =
            Arc::new(LocalShard::open(dir.path(), Arc::new(config.clone()), SyncMode::Os).unwrap());
        spawn(Arc::clone(&shard), Arc::new(IndexBuilder::new(1)));
        let write = vec![PointWrite::dense(
            PointId::Num(1),
            vec![1.0, 0.0],
            Payload::new(),
        )];
        shard.update(UpdateRequest::Upsert(write)).unwrap();
        let written = shard.stats().last_seq;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            shard.stats().flushed_seq < written,
            "not flushed within the hour's period"
        );
        config.optimizer_config.flush_interval_sec = 1;
        shard.set_config(Arc::new(config));
        // `set_config` flushes once by itself; the next write shows the flusher's new period.
        let write = vec![PointWrite::dense(
            PointId::Num(2),
            vec![0.0, 1.0],
            Payload::new(),
        )];
        shard.update(UpdateRequest::Upsert(write)).unwrap();
        let written = shard.stats().last_seq;
        let started = Instant::now();
        while shard.stats().flushed_seq < written && started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shard.cancel();
        assert!(
            shard.stats().flushed_seq >= written,
            "flushed within 20 s of a 1 s period"
        );
    }
}
