//! Immutable files read in place: memory-mapped (`memmap2`) or read onto the heap, and viewed
//! as little-endian `f32` or `u32` arrays without copying.
//!
//! Segment files are written once, fsynced and renamed into place, and never written again (a
//! changed segment is a new directory), which is what makes mapping them sound. This is the
//! only module that may use `unsafe`: the one call that maps a file.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

// Files hold little-endian numbers and are viewed in place: a big-endian machine would misread
// them, so it cannot build this module.
#[cfg(target_endian = "big")]
compile_error!("segment files are little-endian and viewed in place");

/// The bytes of one file, mapped or on the heap.
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    /// `u32` words, so that any 4-byte-aligned view of them is aligned too.
    Heap {
        words: Vec<u32>,
        len: usize,
    },
}

impl FileBytes {
    /// Opens `path`; `mapped` maps it (pages load on first touch, the kernel may drop them
    /// again), otherwise it is read onto the heap.
    pub fn open(path: &Path, mapped: bool) -> std::io::Result<Arc<FileBytes>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if mapped && len > 0 {
            // SAFETY: segment files are immutable once renamed into place (see the module
            // docs); nothing in this process or another Shoal process writes them, so the
            // mapped bytes cannot change under a reader. Removing the file keeps the mapping
            // valid until it is dropped.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
            // Graph walks and point lookups touch pages in no particular order: read-ahead
            // would only load pages nobody asked for.
            let _ = map.advise(memmap2::Advice::Random);
            return Ok(Arc::new(FileBytes::Mapped(map)));
        }
        let mut words = vec![0u32; len.div_ceil(4)];
        file.read_exact(&mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..len])?;
        Ok(Arc::new(FileBytes::Heap { words, len }))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Heap { words, len } => &bytemuck::cast_slice::<u32, u8>(words)[..*len],
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, FileBytes::Mapped(_))
    }
}

/// A run of 4-byte numbers inside a file, checked for bounds and alignment when made.
#[derive(Clone)]
pub struct FileSlice {
    file: Arc<FileBytes>,
    start: usize,
    len: usize,
}

impl FileSlice {
    /// `len` 4-byte values from byte `start`; an error names the file's problem.
    pub fn new(file: Arc<FileBytes>, start: usize, len: usize) -> Result<FileSlice, String> {
        let end = len
            .checked_mul(4)
            .and_then(|n| n.checked_add(start))
            .ok_or("length overflows")?;
        if end > file.bytes().len() {
            return Err(format!(
                "needs {end} bytes, file has {}",
                file.bytes().len()
            ));
        }
        if !start.is_multiple_of(4) || !(file.bytes().as_ptr() as usize).is_multiple_of(4) {
            return Err("values are not 4-byte aligned".into());
        }
        Ok(FileSlice { file, start, len })
    }

    fn raw(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len * 4]
    }

    pub fn f32s(&self) -> &[f32] {
        bytemuck::cast_slice(self.raw())
    }

    pub fn u32s(&self) -> &[u32] {
        bytemuck::cast_slice(self.raw())
    }

    pub fn is_mapped(&self) -> bool {
        self.file.is_mapped()
    }
}

/// Numbers either built in memory or read from a file.
#[derive(Clone)]
pub enum Floats {
    Heap(Arc<Vec<f32>>),
    File(FileSlice),
}

impl Floats {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            Floats::Heap(v) => v,
            Floats::File(f) => f.f32s(),
        }
    }
}

/// Writes `bytes` to `path`, fsynced, and returns its CRC32.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<u32> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(crc32fast::hash(bytes))
}

/// The CRC32 and length of the file at `path`, read with plain reads so that checking a file
/// does not make its pages part of the process's resident memory.
pub fn checksum_file(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize(), len))
}

/// Fsyncs a directory, so that the names created or renamed in it are durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_heap_views_read_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.bin");
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let crc = write_file(&path, bytemuck::cast_slice(&values)).unwrap();
        assert_eq!(checksum_file(&path).unwrap(), (crc, 16));
        for mapped in [true, false] {
            let file = FileBytes::open(&path, mapped).unwrap();
            assert_eq!(file.is_mapped(), mapped);
            let all = FileSlice::new(Arc::clone(&file), 0, 4).unwrap();
            assert_eq!(all.f32s(), &values);
            let tail = FileSlice::new(Arc::clone(&file), 8, 2).unwrap();
            assert_eq!(tail.f32s(), &values[2..]);
            assert!(
                FileSlice::new(Arc::clone(&file), 8, 3).is_err(),
                "past the end"
            );
            assert!(FileSlice::new(file, 2, 1).is_err(), "misaligned");
        }
    }
}
