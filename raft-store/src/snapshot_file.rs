//! The snapshot file: what a member keeps of its latest snapshot and what it streams to a
//! follower, written and read a record at a time so that no copy of the whole database is ever
//! held in memory.
//!
//! Layout: `KSNAP001`, the header's length (u64 LE), the header (bincode [`SnapshotHeader`]:
//! snapshot meta, revision, compaction, cluster ID, members, leases), then one record per stored
//! revision — key length (u32 LE), key, value length (u32 LE), value — then `u32::MAX` and the
//! CRC-32 (u32 LE) of everything before it. A file is verified whole before it replaces a state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::types::{MemberAttrs, NodeId, SnapshotMeta};

const MAGIC: &[u8; 8] = b"KSNAP001";
const END: u32 = u32::MAX;
/// Bytes buffered by snapshot readers and writers.
pub const SNAPSHOT_IO_BUFFER_BYTES: usize = 1024 * 1024;
/// Largest header accepted when reading (members and leases), in bytes.
const HEADER_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Everything in a snapshot but the stored revisions.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    pub revision: i64,
    pub compacted: i64,
    pub cluster_id: u64,
    pub members: BTreeMap<NodeId, MemberAttrs>,
    pub leases: BTreeMap<i64, i64>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A writer that keeps the CRC of what passes through it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot to `file` (synced): the header, then every `(key, value)` record.
pub fn write(
    file: File,
    header: &SnapshotHeader,
    records: impl Iterator<Item = io::Result<(Box<[u8]>, Box<[u8]>)>>,
) -> io::Result<File> {
    let mut out = Crc { inner: BufWriter::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file), hasher: Default::default() };
    let head = bincode::serialize(header).map_err(|e| invalid(e.to_string()))?;
    out.write_all(MAGIC)?;
    out.write_all(&(head.len() as u64).to_le_bytes())?;
    out.write_all(&head)?;
    for record in records {
        let (key, value) = record?;
        for part in [&key, &value] {
            let len = u32::try_from(part.len()).map_err(|_| invalid("a stored key or value over 4 GiB"))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(part)?;
        }
    }
    out.write_all(&END.to_le_bytes())?;
    let crc = out.hasher.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file)
}

/// A snapshot file being read: its header, then its records in order.
pub struct Reader {
    input: BufReader<File>,
    hasher: crc32fast::Hasher,
    pub header: SnapshotHeader,
    done: bool,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::new(File::open(path)?)
    }

    pub fn new(file: File) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file);
        let mut hasher = crc32fast::Hasher::new();
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a Keelson snapshot file"));
        }
        hasher.update(&magic);
        let mut len = [0u8; 8];
        input.read_exact(&mut len)?;
        hasher.update(&len);
        let len = u64::from_le_bytes(len);
        if len > HEADER_BYTES_MAX {
            return Err(invalid(format!("a snapshot header of {len} bytes")));
        }
        let mut head = vec![0u8; len as usize];
        input.read_exact(&mut head)?;
        hasher.update(&head);
        let header = bincode::deserialize(&head).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { input, hasher, header, done: false })
    }

    fn read_part(&mut self, len: u32) -> io::Result<Box<[u8]>> {
        let mut part = vec![0u8; len as usize];
        self.input.read_exact(&mut part)?;
        self.hasher.update(&part);
        Ok(part.into_boxed_slice())
    }

    fn read_len(&mut self) -> io::Result<u32> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        self.hasher.update(&len);
        Ok(u32::from_le_bytes(len))
    }

    /// The next record, or None at the end (whose checksum must match).
    pub fn next_record(&mut self) -> io::Result<Option<(Box<[u8]>, Box<[u8]>)>> {
        if self.done {
            return Ok(None);
        }
        let key_len = self.read_len()?;
        if key_len == END {
            let expected = self.hasher.clone().finalize();
            let mut crc = [0u8; 4];
            self.input.read_exact(&mut crc)?;
            if u32::from_le_bytes(crc) != expected {
                return Err(invalid("snapshot checksum mismatch"));
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(invalid("bytes after the end of a snapshot"));
            }
            self.done = true;
            return Ok(None);
        }
        let key = self.read_part(key_len)?;
        let value_len = self.read_len()?;
        let value = self.read_part(value_len)?;
        Ok(Some((key, value)))
    }
}

/// Reads a snapshot file through to its end, checking it; its header if whole.
pub fn verify(path: &Path) -> io::Result<SnapshotHeader> {
    let mut reader = Reader::open(path)?;
    while reader.next_record()?.is_some() {}
    Ok(reader.header)
}

/// The header of the snapshot file at `path`; None if there is none.
pub fn header(path: &Path) -> io::Result<Option<SnapshotHeader>> {
    match Reader::open(path) {
        Ok(r) => Ok(Some(r.header)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn sample() -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 40)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s".into(),
            },
            revision: 9,
            compacted: 3,
            cluster_id: 7,
            members: BTreeMap::new(),
            leases: BTreeMap::from([(5, 60)]),
        }
    }

    fn records(n: usize) -> impl Iterator<Item = io::Result<(Box<[u8]>, Box<[u8]>)>> {
        (0..n).map(|i| Ok((format!("k{i}").into_bytes().into(), vec![i as u8; i].into())))
    }

    #[test]
    fn records_come_back_in_order_and_the_end_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write(File::create(&path).unwrap(), &sample(), records(300)).unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!((r.header.revision, r.header.leases.get(&5)), (9, Some(&60)));
        let mut n = 0;
        while let Some((k, v)) = r.next_record().unwrap() {
            assert_eq!((&*k, v.len()), (format!("k{n}").as_bytes(), n));
            n += 1;
        }
        assert_eq!(n, 300);
        assert_eq!(verify(&path).unwrap().compacted, 3);
    }

    #[test]
    fn a_damaged_or_cut_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write(File::create(&path).unwrap(), &sample(), records(50)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err(), "a flipped bit");
        bytes[mid] ^= 0x40;
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err(), "a cut file");
        assert!(header(&dir.path().join("none")).unwrap().is_none());
    }
}
