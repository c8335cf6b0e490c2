//! The record format: `[len: u32 LE][crc: u32 LE][seq: u64 LE][payload]`,
//! `crc` the CRC-32C of the seq bytes and then the payload. Decoding
//! checks the length against `max_record` before it allocates, and never
//! trusts a length past the bytes there are.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::MAX_SEQ;

/// Bytes before each record's payload: length, CRC-32C and seq.
pub const RECORD_HEADER: usize = 16;

/// Read buffer of the replay reader.
pub(super) const READ_BUFFER: usize = 64 * 1024;

/// The replay reader: an open segment and one known record start (the
/// "last read position" cache), so sequential reads neither reopen nor
/// rescan.
pub(super) struct Reader {
    /// The segment it reads (its first seq).
    pub(super) segment: u64,
    /// Its file, for errors.
    path: PathBuf,
    file: BufReader<File>,
    /// Where `file` stands.
    pos: u64,
    /// Record `seq` starts at `offset`.
    pub(super) seq: u64,
    pub(super) offset: u64,
}

impl Reader {
    /// At the start of segment `first`, in `path`.
    pub(super) fn open(first: u64, path: &Path) -> io::Result<Self> {
        Ok(Self {
            segment: first,
            path: path.to_path_buf(),
            file: BufReader::with_capacity(READ_BUFFER, File::open(path)?),
            pos: 0,
            seq: first,
            offset: 0,
        })
    }

    fn goto(&mut self, off: u64) -> io::Result<()> {
        if off != self.pos {
            match i64::try_from(i128::from(off) - i128::from(self.pos)) {
                Ok(delta) => self.file.seek_relative(delta)?,
                Err(_) => {
                    self.file.seek(SeekFrom::Start(off))?;
                }
            }
            self.pos = off;
        }
        Ok(())
    }

    /// Reads and checks the header of record `seq` at `offset` (its
    /// segment's records ending at `end`); returns its payload length and
    /// CRC. The position cache is unchanged.
    pub(super) fn header(&mut self, end: u64, max_record: usize) -> io::Result<(usize, u32)> {
        self.goto(self.offset)?;
        let mut bytes = [0; RECORD_HEADER];
        self.file.read_exact(&mut bytes)?;
        self.pos += RECORD_HEADER as u64;
        let header = Header::decode(&bytes);
        let len = header.len as usize;
        let why = if header.seq != self.seq {
            Some("seq does not follow on")
        } else if len > max_record {
            Some("length over max_record")
        } else if self.offset + (RECORD_HEADER + len) as u64 > end {
            Some("length past the segment's end")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.corrupt(why)),
            None => Ok((len, header.crc)),
        }
    }

    /// Reads the payload after [`Reader::header`], checks its CRC and
    /// moves to the next record.
    pub(super) fn payload(&mut self, len: usize, crc: u32) -> io::Result<Vec<u8>> {
        let mut payload = vec![0; len];
        self.file.read_exact(&mut payload)?;
        self.pos += len as u64;
        if checksum(self.seq, &payload) != crc {
            return Err(self.corrupt("bad CRC"));
        }
        self.skip(len);
        Ok(payload)
    }

    /// Moves to the next record, past a `len`-byte payload.
    pub(super) fn skip(&mut self, len: usize) {
        self.seq += 1;
        self.offset += (RECORD_HEADER + len) as u64;
    }

    fn corrupt(&self, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "spill record {} at byte {} of {} is corrupt ({why})",
                self.seq,
                self.offset,
                self.path.display()
            ),
        )
    }
}

/// A record's header.
pub(super) struct Header {
    pub(super) len: u32,
    pub(super) crc: u32,
    pub(super) seq: u64,
}

impl Header {
    pub(super) fn encode(seq: u64, payload: &[u8]) -> [u8; RECORD_HEADER] {
        let mut bytes = [0; RECORD_HEADER];
        // The caller checked the length against `max_record` (a u32).
        bytes[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes[4..8].copy_from_slice(&checksum(seq, payload).to_le_bytes());
        bytes[8..16].copy_from_slice(&seq.to_le_bytes());
        bytes
    }

    pub(super) fn decode(bytes: &[u8; RECORD_HEADER]) -> Self {
        let [l0, l1, l2, l3, c0, c1, c2, c3, s @ ..] = *bytes;
        Self {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            seq: u64::from_le_bytes(s),
        }
    }
}

/// CRC-32C of the seq bytes, then the payload.
pub(super) fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// What [`scan_segment`] found.
#[derive(Default)]
pub(super) struct Scan {
    /// Good records, from the segment's first seq on.
    pub(super) count: u64,
    /// Where they end.
    pub(super) end: u64,
    /// Offset of record `acked + 1` (or `end`, or 0).
    pub(super) acked_to: u64,
}

/// Reads records from the start of a segment (`file_len` bytes, first seq
/// `first`) until the first one that is short, over `max_record`, fails
/// its CRC or does not follow on. Allocates at most `max_record` (in
/// `buf`); fails only on an I/O error.
pub(super) fn scan_segment(
    mut r: impl Read,
    file_len: u64,
    first: u64,
    acked: u64,
    max_record: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut seq = first;
    while seq <= MAX_SEQ && file_len - scan.end >= RECORD_HEADER as u64 {
        let mut bytes = [0; RECORD_HEADER];
        if !read_full(&mut r, &mut bytes)? {
            break;
        }
        let header = Header::decode(&bytes);
        let len = header.len as usize;
        if len > max_record || file_len - scan.end - (RECORD_HEADER as u64) < len as u64 {
            break;
        }
        buf.resize(len, 0);
        if !read_full(&mut r, buf)? || header.seq != seq || checksum(seq, buf) != header.crc {
            break;
        }
        scan.end += (RECORD_HEADER + len) as u64;
        scan.count += 1;
        if seq <= acked {
            scan.acked_to = scan.end;
        }
        seq += 1;
    }
    Ok(scan)
}

/// `read_exact`, with a short read (the file shrank) as `false`.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
