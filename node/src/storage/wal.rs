//! The write-ahead log of one shard.
//!
//! Every update is appended here, with its sequence number, before it is applied or
//! acknowledged. The log lives in a directory of segment files named after the first sequence
//! number they hold (`00000000000000000042.wal`). A record is framed as
//! `[u32 length][u32 crc32][length bytes]`, little endian, so a record torn by a crash is
//! detected on open and cut off; everything before it is intact.
//!
//! The log knows nothing about what the records mean: it stores opaque byte strings.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER_LEN: usize = 8;
/// A record larger than this is taken for corruption rather than trusted.
const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

/// How hard an append tries to reach stable storage before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Handed to the operating system: survives a crash of the process (`kill -9`), not a power
    /// failure. Qdrant's default, too.
    Os,
    /// `fdatasync` after every append: survives power failures, at the cost of a disk flush per
    /// write.
    Fsync,
}

#[derive(Debug)]
struct WalFile {
    first_seq: u64,
    path: PathBuf,
}

/// An append-only, segmented log of `(sequence number, bytes)` records.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    files: Vec<WalFile>,
    active: File,
    active_len: u64,
    /// The sequence number of the last record appended (0 when the log was never written).
    last_seq: u64,
    capacity: u64,
    sync: SyncMode,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    pub data: Vec<u8>,
}

fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting off a torn record at the end of the last
    /// file. `capacity` is the size at which the log starts a new file.
    pub fn open(dir: &Path, capacity: u64, sync: SyncMode) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(first_seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            files.push(WalFile {
                first_seq,
                path: entry.path(),
            });
        }
        files.sort_by_key(|f| f.first_seq);

        let mut last_seq = 0;
        // Only the last file can have a torn tail; earlier files were complete when the log
        // moved on from them.
        if let Some(last) = files.last() {
            let (valid_len, last_in_file) = scan_valid_prefix(&last.path)?;
            let file = OpenOptions::new().write(true).open(&last.path)?;
            if file.metadata()?.len() != valid_len {
                tracing::warn!(path = %last.path.display(), valid_len, "cutting torn tail off the WAL");
                file.set_len(valid_len)?;
                file.sync_data()?;
            }
            last_seq = last_in_file.unwrap_or(last.first_seq.saturating_sub(1));
        }
        if files.is_empty() {
            files.push(WalFile {
                first_seq: 1,
                path: dir.join(file_name(1)),
            });
        }
        let active_path = &files.last().expect("at least one file").path;
        let mut active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(active_path)?;
        let active_len = active.seek(SeekFrom::End(0))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            files,
            active,
            active_len,
            last_seq,
            capacity,
            sync,
        })
    }

    /// The sequence number of the last record in the log.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The lowest sequence number the log can still replay from.
    pub fn first_seq(&self) -> u64 {
        self.files.first().map_or(1, |f| f.first_seq)
    }

    /// Appends a record. `seq` must be larger than every sequence number already in the log.
    /// The record reaches the operating system (or the disk, with [`SyncMode::Fsync`]) before
    /// this returns.
    pub fn append(&mut self, seq: u64, data: &[u8]) -> io::Result<()> {
        assert!(seq > self.last_seq, "WAL sequence numbers must increase");
        // An empty active file takes the record whatever the capacity: rolling would name a
        // second file after the same first record.
        if self.active_len >= self.capacity && self.active_len > 0 {
            self.roll(seq)?;
        }
        let body_len = 8 + data.len();
        let len = u32::try_from(body_len)
            .ok()
            .filter(|len| *len <= MAX_RECORD_LEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "WAL record too large"))?;
        let mut frame = Vec::with_capacity(HEADER_LEN + body_len);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(data);
        let crc = crc32fast::hash(&frame[HEADER_LEN..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        // One write call per record: a crash leaves at most one torn record at the end.
        let written = self.active.write_all(&frame).and_then(|()| {
            if self.sync == SyncMode::Fsync {
                self.active.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // A partly written record must not stay in front of the records that follow it,
            // or the next open would stop reading there and lose them.
            let _ = self.active.set_len(self.active_len);
            return Err(e);
        }
        self.active_len += frame.len() as u64;
        self.last_seq = seq;
        Ok(())
    }

    fn roll(&mut self, next_seq: u64) -> io::Result<()> {
        self.active.sync_data()?;
        let path = self.dir.join(file_name(next_seq));
        self.active = OpenOptions::new().create(true).append(true).open(&path)?;
        self.active_len = 0;
        self.files.push(WalFile {
            first_seq: next_seq,
            path,
        });
        sync_dir(&self.dir)
    }

    /// How many files at the front [`Wal::truncate_through`] drops: whole files whose records
    /// all have sequence numbers `<= seq`, keeping the active file and `retain_closed` closed
    /// files before it.
    fn droppable(&self, seq: u64, retain_closed: usize) -> usize {
        let mut n = 0;
        while self.files.len() - n > 1 + retain_closed && self.files[n + 1].first_seq <= seq + 1 {
            n += 1;
        }
        n
    }

    /// The records that [`Wal::truncate_through`] with the same arguments would drop, oldest
    /// first.
    pub fn dropped_by(&self, seq: u64, retain_closed: usize) -> io::Result<Vec<WalRecord>> {
        let mut out = Vec::new();
        for file in &self.files[..self.droppable(seq, retain_closed)] {
            read_records(&file.path, |record| out.push(record))?;
        }
        Ok(out)
    }

    /// Drops whole files whose records all have sequence numbers `<= seq`: they are covered by
    /// a flush and no longer needed for recovery. Later records are kept, and so are the
    /// `retain_closed` closed files before the active one (Qdrant's `wal_retain_closed`): a
    /// replica that missed their records can still be brought up to date from them (the
    /// `wal_delta` transfer).
    pub fn truncate_through(&mut self, seq: u64, retain_closed: usize) -> io::Result<()> {
        for _ in 0..self.droppable(seq, retain_closed) {
            let file = self.files.remove(0);
            fs::remove_file(&file.path)?;
        }
        Ok(())
    }

    /// Forces everything appended so far to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()
    }

    /// Reads every record with a sequence number `> after`, in order.
    pub fn read_after(&self, after: u64) -> io::Result<Vec<WalRecord>> {
        let mut out = Vec::new();
        for (i, file) in self.files.iter().enumerate() {
            let next_first = self.files.get(i + 1).map(|f| f.first_seq);
            if next_first.is_some_and(|next| next <= after + 1) {
                continue;
            }
            read_records(&file.path, |record| {
                if record.seq > after {
                    out.push(record);
                }
            })?;
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the records of one file, stopping silently at the first torn or corrupt one.
/// Returns the length of the valid prefix.
fn read_records(path: &Path, mut visit: impl FnMut(WalRecord)) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut valid = 0u64;
    let mut header = [0u8; HEADER_LEN];
    loop {
        if !read_exact_or_eof(&mut reader, &mut header)? {
            return Ok(valid);
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if !(8..=MAX_RECORD_LEN).contains(&len) {
            return Ok(valid);
        }
        let mut body = vec![0u8; len as usize];
        if !read_exact_or_eof(&mut reader, &mut body)? || crc32fast::hash(&body) != crc {
            return Ok(valid);
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        body.drain(0..8);
        visit(WalRecord { seq, data: body });
        valid += (HEADER_LEN + len as usize) as u64;
    }
}

fn scan_valid_prefix(path: &Path) -> io::Result<(u64, Option<u64>)> {
    let mut last = None;
    let valid = read_records(path, |r| last = Some(r.seq))?;
    Ok((valid, last))
}

/// Like `read_exact`, but a clean or partial end of file returns `false` instead of an error.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
        wal.read_after(0)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.data))
            .collect()
    }

    #[test]
    fn appends_survive_reopen_and_roll_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 64, SyncMode::Os).unwrap();
        for seq in 1..=20 {
            wal.append(seq, format!("record {seq}").as_bytes()).unwrap();
        }
        assert!(
            wal.files.len() > 1,
            "a small capacity must roll over to new files"
        );
        drop(wal);
        let wal = Wal::open(dir.path(), 64, SyncMode::Os).unwrap();
        assert_eq!(wal.last_seq(), 20);
        let got = records(&wal);
        assert_eq!(got.len(), 20);
        assert_eq!(got[4], (5, b"record 5".to_vec()));
        assert_eq!(wal.read_after(17).unwrap().len(), 3);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
        wal.append(1, b"one").unwrap();
        wal.append(2, b"two").unwrap();
        drop(wal);
        let path = dir.path().join(file_name(1));
        let len = fs::metadata(&path).unwrap().len();
        // Simulate a crash in the middle of the second record.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let mut wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
        assert_eq!(wal.last_seq(), 1);
        wal.append(2, b"two again").unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
        assert_eq!(
            records(&wal),
            vec![(1, b"one".to_vec()), (2, b"two again".to_vec())]
        );
    }

    #[test]
    fn a_flipped_bit_ends_the_log_at_the_record_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
        for seq in 1..=3 {
            wal.append(seq, b"payload").unwrap();
        }
        drop(wal);
        let path = dir.path().join(file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
        assert_eq!(wal.last_seq(), 2);
    }

    #[test]
    fn truncation_keeps_every_record_after_the_flushed_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 40, SyncMode::Os).unwrap();
        for seq in 1..=30 {
            wal.append(seq, b"0123456789").unwrap();
        }
        wal.truncate_through(17, 0).unwrap();
        assert!(wal.first_seq() <= 18);
        let after: Vec<u64> = wal.read_after(17).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(after, (18..=30).collect::<Vec<_>>());
        drop(wal);
        let wal = Wal::open(dir.path(), 40, SyncMode::Os).unwrap();
        assert_eq!(wal.last_seq(), 30);
        assert!(wal.first_seq() <= 18);
    }

    #[test]
    fn truncation_retains_closed_files_and_reports_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        // Two records per file.
        let mut wal = Wal::open(dir.path(), 40, SyncMode::Os).unwrap();
        for seq in 1..=10 {
            wal.append(seq, b"0123456789").unwrap();
        }
        let dropped: Vec<u64> = wal
            .dropped_by(10, 2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        wal.truncate_through(10, 2).unwrap();
        // The active file (9, 10) and two closed ones (5 to 8) stay.
        assert_eq!(dropped, vec![1, 2, 3, 4]);
        assert_eq!(wal.first_seq(), 5);
        assert!(wal.dropped_by(10, 2).unwrap().is_empty());
        // Nothing after the flushed record is dropped, whatever the retention.
        assert_eq!(wal.dropped_by(6, 0).unwrap().len(), 2);
        wal.truncate_through(6, 0).unwrap();
        assert_eq!(wal.first_seq(), 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever prefix of the files survives a crash, reopening yields a prefix of what was
        /// appended, and never a record that was not.
        #[test]
        fn any_cut_yields_a_prefix(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..30), cut in any::<prop::sample::Index>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
            for (i, p) in payloads.iter().enumerate() {
                wal.append(i as u64 + 1, p).unwrap();
            }
            drop(wal);
            let path = dir.path().join(file_name(1));
            let len = fs::metadata(&path).unwrap().len();
            let keep = cut.index(len as usize + 1) as u64;
            OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
            let wal = Wal::open(dir.path(), 1 << 20, SyncMode::Os).unwrap();
            let got = records(&wal);
            prop_assert!(got.len() <= payloads.len());
            for (i, (seq, data)) in got.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64 + 1);
                prop_assert_eq!(data, &payloads[i]);
            }
        }
    }
}
