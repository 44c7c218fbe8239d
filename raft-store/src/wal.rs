//! The Raft log on disk: a directory of segment files, each zero-filled to its full size when
//! made, holding records `[u32 length][u32 CRC-32][bincode Entry]` back to back, then zeros.
//!
//! A segment never grows while in use, so syncing an append writes data only, not file
//! metadata: on ext4 that avoids a journal commit per sync, which is what makes a synced log
//! append cheap when several members share a disk. Segments are named by the index of their
//! first entry; purging deletes whole segments. Entries are read back by position (an in-memory
//! table of where each entry is), and a recovering log stops at the first record that is torn,
//! corrupt, out of sequence or missing (a zero header with data after it), zeroing from there on
//! so that nothing behind it can return.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::types::{Entry, LogId};

/// Size of a segment file, in bytes (a larger entry gets a segment of its own size).
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const RECORD_HEADER_BYTES: u64 = 8;
const SPARE_NAME: &str = "spare.tmp";
/// Zeros written per call when filling or clearing a file.
const ZERO_CHUNK_BYTES: usize = 1024 * 1024;

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Index of the entry at `positions[0]`.
    first: u64,
    /// Offset and length (header included) of each entry's record, in index order.
    positions: Vec<(u64, u64)>,
    /// Where the next record goes.
    end: u64,
    size: u64,
}

/// The segmented log. Not synchronized: the caller holds it under a lock.
pub struct SegmentLog {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    last: Option<LogId>,
    /// A zero-filled segment made ahead of need, when there is one.
    spare: Option<std::thread::JoinHandle<io::Result<PathBuf>>>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZERO_CHUNK_BYTES);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Whether `file` holds only zeros from `from` to `to`.
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZERO_CHUNK_BYTES);
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Makes a zero-filled file of `size` bytes at `path`, synced.
fn make_zeroed(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    zero_range(&file, 0, size)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it), recovering what was durably written; entries at or
    /// below `purged` are skipped.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if let Some(first) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                names.push((first, path));
            }
        }
        names.sort();
        let mut log = Self { dir: dir.to_path_buf(), segments: BTreeMap::new(), last: None, spare: None };
        let mut expected: Option<u64> = None;
        let mut broken = false;
        for (first, path) in names {
            if broken {
                // Nothing after a torn record was ever acknowledged.
                std::fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let mut seg = Segment { path, file: Arc::new(file), first, positions: Vec::new(), end: 0, size };
            let mut at = 0u64;
            loop {
                let mut header = [0u8; RECORD_HEADER_BYTES as usize];
                if at + RECORD_HEADER_BYTES > size || seg.file.read_exact_at(&mut header, at).is_err() {
                    break;
                }
                let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
                let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
                if len == 0 {
                    // The end of what was written here, unless pages reached the disk out of
                    // order: then records beyond a hole were never acknowledged (the hole's record
                    // was not durable, so no sync covering it completed), and left in place one
                    // would be read back once later appends end at its offset.
                    if !all_zero(&seg.file, at, size)? {
                        tracing::warn!(segment = %seg.path.display(), offset = at, "records beyond a hole in the log; cleared");
                        zero_range(&seg.file, at, size)?;
                        seg.file.sync_data()?;
                        broken = true;
                    }
                    break;
                }
                let mut body = vec![0u8; len as usize];
                let whole = at + RECORD_HEADER_BYTES + len <= size && seg.file.read_exact_at(&mut body, at + 8).is_ok();
                let entry: Option<Entry> =
                    if whole && crc32fast::hash(&body) == crc { bincode::deserialize(&body).ok() } else { None };
                let in_sequence = entry.as_ref().is_some_and(|e| match expected {
                    Some(x) => e.log_id.index == x,
                    None => e.log_id.index == first,
                });
                if !in_sequence {
                    tracing::warn!(segment = %seg.path.display(), offset = at, "log ends in a torn or stale record; cleared");
                    zero_range(&seg.file, at, size)?;
                    seg.file.sync_data()?;
                    broken = true;
                    break;
                }
                let entry = entry.expect("checked above");
                if seg.positions.is_empty() {
                    seg.first = entry.log_id.index;
                }
                seg.positions.push((at, RECORD_HEADER_BYTES + len));
                expected = Some(entry.log_id.index + 1);
                log.last = Some(entry.log_id);
                at += RECORD_HEADER_BYTES + len;
            }
            seg.end = at;
            log.segments.insert(seg.first, seg);
        }
        // Entries up to `purged` may still sit in the first segment kept; they are not served.
        if let Some(p) = purged {
            log.purge(p)?;
        }
        log.prepare_spare();
        Ok(log)
    }

    /// The last entry's log id.
    pub fn last(&self) -> Option<LogId> {
        self.last
    }

    pub fn is_empty(&self) -> bool {
        self.segments.values().all(|s| s.positions.is_empty())
    }

    fn prepare_spare(&mut self) {
        if self.spare.is_some() {
            return;
        }
        let path = self.dir.join(SPARE_NAME);
        self.spare = Some(std::thread::spawn(move || make_zeroed(&path, SEGMENT_BYTES).map(|_| path)));
    }

    /// A fresh segment whose first entry will be `first`, big enough for a record of `need` bytes.
    fn new_segment(&mut self, first: u64, need: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let size = need.max(SEGMENT_BYTES);
        let spare = if size == SEGMENT_BYTES { self.spare.take() } else { None };
        match spare.map(|h| h.join()) {
            Some(Ok(Ok(spare))) => std::fs::rename(spare, &path)?,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(_)) => return Err(io::Error::other("preparing a log segment panicked")),
            None => make_zeroed(&path, size)?,
        }
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.segments.insert(first, Segment { path, file: Arc::new(file), first, positions: Vec::new(), end: 0, size });
        self.prepare_spare();
        Ok(())
    }

    /// Writes entries after the last one (not yet durable); returns the files written, which
    /// must be synced for the entries to be durable.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<Vec<Arc<File>>> {
        let mut touched: Vec<Arc<File>> = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(last) = self.last {
                if index != last.index + 1 {
                    return Err(invalid(format!("append of entry {index} after entry {}", last.index)));
                }
            }
            let body = bincode::serialize(entry).map_err(|e| invalid(e.to_string()))?;
            let need = RECORD_HEADER_BYTES + body.len() as u64;
            let fits = self.segments.values().next_back().is_some_and(|s| s.end + need <= s.size);
            if !fits {
                self.new_segment(index, need)?;
            }
            let (key, seg) = self.segments.iter().next_back().expect("a segment exists");
            if seg.end == 0 && seg.first != index {
                // A segment is named for its first record: an empty one is renamed to fit.
                let key = *key;
                let mut seg = self.segments.remove(&key).expect("present");
                let path = self.dir.join(segment_name(index));
                std::fs::rename(&seg.path, &path)?;
                sync_dir(&self.dir)?;
                seg.path = path;
                seg.first = index;
                self.segments.insert(index, seg);
            }
            let seg = self.segments.values_mut().next_back().expect("a segment exists");
            let mut record = Vec::with_capacity(need as usize);
            record.extend_from_slice(&(body.len() as u32).to_le_bytes());
            record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            record.extend_from_slice(&body);
            seg.file.write_all_at(&record, seg.end)?;
            seg.positions.push((seg.end, need));
            seg.end += need;
            if !touched.last().is_some_and(|f| Arc::ptr_eq(f, &seg.file)) {
                touched.push(seg.file.clone());
            }
            self.last = Some(entry.log_id);
        }
        Ok(touched)
    }

    /// Entries `start..end` that are in the log, in order.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let from = self.segments.range(..=start).next_back().map(|(k, _)| *k).unwrap_or(start);
        for seg in self.segments.range(from..).map(|(_, s)| s) {
            if seg.first >= end {
                break;
            }
            for (i, (offset, len)) in seg.positions.iter().enumerate() {
                let index = seg.first + i as u64;
                if index < start {
                    continue;
                }
                if index >= end {
                    break;
                }
                let mut body = vec![0u8; (*len - RECORD_HEADER_BYTES) as usize];
                seg.file.read_exact_at(&mut body, offset + RECORD_HEADER_BYTES)?;
                out.push(bincode::deserialize(&body).map_err(|e| invalid(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Removes entries from `index` on, durably: their records are zeroed and synced, so that a
    /// recovery cannot take them back.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let oldest = firsts.first().copied();
        for first in firsts.into_iter().rev() {
            let seg = self.segments.get_mut(&first).expect("listed");
            if seg.first + seg.positions.len() as u64 <= index {
                break;
            }
            if seg.first >= index && Some(first) != oldest {
                let seg = self.segments.remove(&first).expect("listed");
                std::fs::remove_file(&seg.path)?;
                continue;
            }
            let keep = index.saturating_sub(seg.first) as usize;
            let cut = seg.positions.get(keep).map(|p| p.0).unwrap_or(seg.end);
            zero_range(&seg.file, cut, seg.end)?;
            seg.file.sync_data()?;
            seg.positions.truncate(keep);
            seg.end = cut;
        }
        sync_dir(&self.dir)?;
        self.last = self.last_in_segments()?;
        Ok(())
    }

    fn last_in_segments(&self) -> io::Result<Option<LogId>> {
        for seg in self.segments.values().rev() {
            if let Some(n) = seg.positions.len().checked_sub(1) {
                let index = seg.first + n as u64;
                return Ok(self.read(index, index + 1)?.pop().map(|e| e.log_id));
            }
        }
        Ok(None)
    }

    /// Drops entries up to and including `index`: segments holding only such entries are
    /// deleted (all of them when the log holds nothing newer, so that the next append, after
    /// `index`, starts a segment of its own).
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        let everything = self.last.is_none_or(|l| l.index <= index);
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for first in firsts {
            let seg = &self.segments[&first];
            let holds_newer = seg.first + seg.positions.len() as u64 > index + 1;
            if everything || !holds_newer {
                let seg = self.segments.remove(&first).expect("listed");
                std::fs::remove_file(&seg.path)?;
                removed = true;
                continue;
            }
            // Serve nothing at or below `index` from the first segment kept.
            let seg = self.segments.get_mut(&first).expect("listed");
            let skip = ((index + 1).saturating_sub(seg.first) as usize).min(seg.positions.len());
            seg.positions.drain(..skip);
            seg.first += skip as u64;
            break;
        }
        if everything {
            self.last = None;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::Compact { revision: bytes as i64 }),
        }
    }

    fn big(term: u64, index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::SetMemberAttrs {
                id: 1,
                name: "x".repeat(bytes),
                client_urls: vec![],
            }),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    #[test]
    fn appends_survive_reopening_and_span_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        assert!(log.is_empty());
        let entries: Vec<Entry> = (1..=40).map(|i| big(1, i, 1024 * 1024)).collect();
        for e in &entries {
            log.append(std::slice::from_ref(e)).unwrap();
        }
        assert!(log.segments.len() >= 3, "40 MiB spans several segments");
        assert_eq!(indexes(&log.read(1, 41).unwrap()), indexes(&entries));
        drop(log);
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| l.index), Some(40));
        assert_eq!(indexes(&log.read(10, 13).unwrap()), vec![(1, 10), (1, 11), (1, 12)]);
    }

    #[test]
    fn truncated_entries_never_come_back_even_when_rewritten_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        log.append(&(1..=10).map(|i| entry(1, i, 0)).collect::<Vec<_>>()).unwrap();
        log.truncate(6).unwrap();
        assert_eq!(log.last().map(|l| l.index), Some(5));
        // Same size records at the same offsets: only the zeroing keeps 7.. from returning.
        log.append(&[entry(2, 6, 0)]).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| (l.leader_id.term, l.index)), Some((2, 6)));
        assert_eq!(indexes(&log.read(1, 100).unwrap()).len(), 6);
    }

    #[test]
    fn a_torn_tail_is_cut_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        log.append(&(1..=5).map(|i| entry(1, i, 0)).collect::<Vec<_>>()).unwrap();
        let (path, offset) = {
            let seg = log.segments.values().next().unwrap();
            (seg.path.clone(), seg.positions[3].0)
        };
        drop(log);
        // Corrupt the fourth record's body.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff, 0xff], offset + RECORD_HEADER_BYTES + 2).unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| l.index), Some(3));
        log.append(&[entry(1, 4, 0)]).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| l.index), Some(4), "the fifth record is gone for good");
    }

    #[test]
    fn records_beyond_a_hole_are_cleared_and_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        log.append(&(1..=5).map(|i| entry(1, i, 0)).collect::<Vec<_>>()).unwrap();
        let (path, (offset, len)) = {
            let seg = log.segments.values().next().unwrap();
            (seg.path.clone(), seg.positions[2])
        };
        drop(log);
        // A power loss wrote the pages of records 4 and 5 but not record 3's.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        zero_range(&f, offset, offset + len).unwrap();
        drop(f);
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| l.index), Some(2));
        // A new leader's entry 3, of the same size, ends where the stale record 4 began.
        log.append(&[entry(2, 3, 0)]).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), None).unwrap();
        assert_eq!(log.last().map(|l| (l.leader_id.term, l.index)), Some((2, 3)), "stale records 4 and 5 stay gone");
    }

    #[test]
    fn purging_drops_old_segments_and_hides_purged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), None).unwrap();
        for i in 1..=40 {
            log.append(&[big(1, i, 1024 * 1024)]).unwrap();
        }
        let before = log.segments.len();
        log.purge(30).unwrap();
        assert!(log.segments.len() < before);
        assert_eq!(log.read(1, 41).unwrap().first().map(|e| e.log_id.index), Some(31));
        drop(log);
        let log = SegmentLog::open(dir.path(), Some(30)).unwrap();
        assert_eq!(log.read(1, 41).unwrap().first().map(|e| e.log_id.index), Some(31));
        assert_eq!(log.last().map(|l| l.index), Some(40));
    }
}
