//! The spill: durable events kept on local disk while the broker is slow
//! or down, in an append-only, checksummed log that survives a process
//! crash and a restart, read back in order once the broker is back.
//!
//! Synchronous (`std::fs`), owned by one thread (the durable-events
//! worker); no clock of its own: [`Spill::sync_if_due`] takes `now`.
//!
//! Code: the log itself here; the record format and the replay reader in
//! `spill/record.rs`; the cursor, lock and segment names in
//! `spill/files.rs`.
//!
//! # Layout on disk
//!
//! One directory, held by one [`Spill`] at a time (its `lock` file is
//! locked while it is open; a second [`Spill::open`] fails):
//! - `spill-<first seq, 20 digits>.log`: segments, each a run of records
//!   `[len: u32 LE][crc: u32 LE][seq: u64 LE][payload]`, `crc` the CRC-32C
//!   of the seq bytes and then the payload. A record goes into a new
//!   segment when the current one would pass
//!   [`SpillOptions::segment_bytes`]; the finished one is fsynced first,
//!   whatever the [`FsyncPolicy`], so a crash can only tear the last
//!   segment.
//! - `acked`: the cursor, `[seq: u64 LE][crc: u32 LE]` (CRC-32C of the 8
//!   seq bytes): every record at or below it was delivered. Replaced
//!   atomically: `acked.tmp` written and fsynced, renamed, the directory
//!   fsynced (so each [`Spill::ack`] costs two fsyncs: ack in batches).
//!
//! # Accounting and deletion
//!
//! Disk is freed a whole segment at a time: [`Spill::ack`] deletes every
//! segment whose records are all acknowledged, the one being written
//! included (the next append then starts a new segment named after its
//! seq), so a caught-up spill holds no segment file. The
//! [`SpillOptions::max_bytes`] bound counts segment files
//! ([`Spill::disk_bytes`]), so acknowledged records that share a segment
//! with unacknowledged ones still count until that segment goes.
//!
//! # Recovery
//!
//! [`Spill::open`] checks every record (length, CRC, seq following on).
//! The last segment's torn or corrupt tail (a crash in mid-write, normal
//! under [`FsyncPolicy::Interval`] and [`FsyncPolicy::Never`]) is cut off;
//! a bad record in an earlier segment ends that segment's readable part
//! and reading goes on with the next segment, the seqs in between counted
//! as lost. A missing or unreadable cursor means nothing acknowledged: the
//! kept records are all sent again (at least once, never lost). Everything
//! is reported in [`Recovery`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod files;
mod record;
#[cfg(test)]
mod tests;

use files::{
    CURSOR_TMP, list_segments, lock_dir, read_cursor, remove_if_exists, segment_name, sync_dir,
    write_cursor,
};
pub use record::RECORD_HEADER;
use record::{Header, READ_BUFFER, Reader, Scan, scan_segment};

/// Appended records are gathered up to this many bytes before one write
/// (except under [`FsyncPolicy::Always`], which writes each at once).
const WRITE_BUFFER: usize = 64 * 1024;

/// Highest seq a spill hands out (2^63 - 1: at a million events a second,
/// some 290,000 years), so `seq + 1` never overflows, whatever the files
/// say.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A record's sequence number: 1 for the first record a spill ever
/// holds, then one more for each record, across reopens. `Seq(0)` is
/// "none" (the cursor of a spill that has acknowledged nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When appended records are forced to disk (`sync_data`). Whatever the
/// policy, a finished segment is synced before the next one starts, the
/// last segment at [`Spill::open`], and [`Spill::sync`] syncs on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append, before it returns: no acknowledged publish is
    /// lost to a power cut, at one fsync per event.
    Always,
    /// From [`Spill::sync_if_due`] (the worker's timer) when something is
    /// unsynced and this long has passed since its last sync: a power cut
    /// loses at most about this much; a process crash loses nothing (the
    /// data is in the page cache).
    Interval(Duration),
    /// Only on [`Spill::sync`] (and at segment rollover and open).
    Never,
}

/// A spill's bounds, validated once by [`SpillOptions::validate`] (and by
/// [`Spill::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillOptions {
    /// The spill's directory (created if missing); nothing else should
    /// write there.
    pub dir: PathBuf,
    /// Segment bytes on disk at most ([`Spill::disk_bytes`]); an append
    /// that would pass it gets [`SpillError::Full`]. Default 1 GiB: at
    /// 1 KiB events, a million events, minutes of outage at a high
    /// durable rate, while a small share of a node's local disk.
    pub max_bytes: u64,
    /// Bytes of one segment file at most; disk is freed one whole segment
    /// at a time. Default 64 MiB: 16 segments at the default `max_bytes`,
    /// so acknowledged records pin at most 1/16 of it, with one file
    /// created, fsynced and deleted per 64 MiB.
    pub segment_bytes: u64,
    /// Payload bytes of one record at most ([`SpillError::TooLarge`]
    /// above). Default 1 MiB: well above the default `max_message_size`
    /// (64 KiB) plus an event's envelope. Recovery takes a longer record
    /// on disk for corruption (it never allocates more than this), so
    /// lower it only on an empty spill.
    pub max_record: usize,
    /// When appends reach the disk. Default `Interval(1 s)`, like Redis's
    /// `appendfsync everysec`: a power cut loses at most about a second of
    /// events, for one fsync a second; a caller that needs one record on
    /// disk now calls [`Spill::sync`].
    pub fsync: FsyncPolicy,
}

impl SpillOptions {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            max_record: 1 << 20,
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        }
    }

    /// Checks the bounds against each other; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("spill dir must not be empty".into());
        }
        if self.max_record == 0 || self.max_record > u32::MAX as usize {
            return Err(format!(
                "spill max_record = {} must be between 1 and {} bytes (a record's length is a u32)",
                self.max_record,
                u32::MAX
            ));
        }
        let record = (self.max_record + RECORD_HEADER) as u64;
        if self.segment_bytes < record {
            return Err(format!(
                "spill segment_bytes = {} must hold one largest record: at least max_record + {RECORD_HEADER} = {record}",
                self.segment_bytes
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(format!(
                "spill max_bytes = {} must be at least segment_bytes = {}",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.fsync == FsyncPolicy::Interval(Duration::ZERO) {
            return Err(
                "spill fsync interval must be above 0 (use Always to sync every append)".into(),
            );
        }
        Ok(())
    }
}

/// Why [`Spill::append`] did not take a record.
#[derive(Debug)]
pub enum SpillError {
    /// The record would take the spill past [`SpillOptions::max_bytes`];
    /// nothing was written. Temporary: acknowledging records frees room.
    Full,
    /// The payload is longer than [`SpillOptions::max_record`]; nothing
    /// was written.
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing failed; the record was not taken (it may still turn up
    /// after a crash: at least once, never a silent loss).
    Io(io::Error),
}

impl fmt::Display for SpillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpillError::Full => f.write_str("the spill is full"),
            SpillError::TooLarge { len, max } => {
                write!(
                    f,
                    "a {len}-byte record is over the spill's {max}-byte limit"
                )
            }
            SpillError::Io(e) => write!(f, "spill write failed: {e}"),
        }
    }
}

impl std::error::Error for SpillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpillError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SpillError {
    fn from(e: io::Error) -> Self {
        SpillError::Io(e)
    }
}

/// What [`Spill::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged records kept, to be sent.
    pub pending_records: u64,
    /// Their bytes on disk, headers included.
    pub pending_bytes: u64,
    /// Bytes cut from the end of the last segment: a torn write (a crash
    /// in mid-append) or a corrupt tail.
    pub truncated_bytes: u64,
    /// Segments whose reading stopped at a bad record (short, over
    /// `max_record`, bad CRC, seq not following on): the last one's tail
    /// is in `truncated_bytes`, an earlier one's in `skipped_bytes`.
    pub corrupt_records: u64,
    /// Bytes of earlier segments left unread after a bad record.
    pub skipped_bytes: u64,
    /// Unacknowledged seqs missing between the kept records (after a bad
    /// record in an earlier segment): lost, and said so.
    pub lost_records: u64,
    /// Segment files deleted: wholly acknowledged, or with no readable
    /// record.
    pub segments_removed: usize,
    /// The cursor file was missing (with segments present) or corrupt:
    /// nothing counts as acknowledged, so everything kept is sent again.
    pub cursor_unreadable: bool,
}

impl Recovery {
    /// Nothing was cut, skipped, lost or unreadable.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.corrupt_records == 0
            && self.skipped_bytes == 0
            && self.lost_records == 0
            && !self.cursor_unreadable
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// Seq of its first record (its file name).
    first: u64,
    /// Seq after its last record (`first` when empty: only a new segment
    /// whose first append failed).
    next: u64,
    /// Bytes of its whole records (the write buffer's included, for the
    /// segment being written).
    end: u64,
    /// Bytes it takes on disk: `end`, plus the unreadable tail of an
    /// earlier segment.
    disk: u64,
    /// Offset of record `max(first, acked + 1)` (`end` when all are
    /// acknowledged).
    acked_to: u64,
    /// Its file.
    path: PathBuf,
}

/// The writer of the last segment: encoded records gather in `buf` and
/// are written at `written` with positioned writes, so a failed write is
/// simply redone.
struct Writer {
    file: File,
    /// Bytes of the file known written (before `buf`).
    written: u64,
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// A failed write or a taken-back record may have left bytes past
    /// `written`: cut them at the next flush.
    trim: bool,
}

impl Writer {
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            if let Err(e) = self.file.write_all_at(&self.buf, self.written) {
                self.trim = true;
                return Err(e);
            }
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        if self.trim {
            self.file.set_len(self.written)?;
            self.trim = false;
        }
        Ok(())
    }
}

/// An append-only log of opaque records on local disk, with a persisted
/// "acknowledged up to" cursor (see the module doc for the format and the
/// guarantees). One owner; nothing in it blocks on anything but the disk.
pub struct Spill {
    opts: SpillOptions,
    /// In seq order; only the last can be empty.
    segments: VecDeque<Segment>,
    /// Writes the last segment, when it takes appends.
    writer: Option<Writer>,
    reader: Option<Reader>,
    next_seq: u64,
    acked: u64,
    synced_through: u64,
    /// When [`Spill::sync_if_due`] last synced.
    last_sync: Option<Instant>,
    pending_records: u64,
    pending_bytes: u64,
    disk_bytes: u64,
    /// Holds the directory's lock while open.
    _lock: File,
}

impl fmt::Debug for Spill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spill")
            .field("dir", &self.opts.dir)
            .field("next_seq", &self.next_seq)
            .field("acked", &self.acked)
            .field("synced_through", &self.synced_through)
            .field("segments", &self.segments.len())
            .field("pending_records", &self.pending_records)
            .field("disk_bytes", &self.disk_bytes)
            .finish_non_exhaustive()
    }
}

impl Spill {
    /// Opens (or creates) the spill in `opts.dir`, recovering what is
    /// intact (see the module doc); fails on invalid options, an I/O
    /// error, or a directory another [`Spill`] holds. Never fails, and
    /// never panics, on what the files contain.
    pub fn open(opts: SpillOptions) -> io::Result<(Spill, Recovery)> {
        opts.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir)?;
        let lock = lock_dir(&dir)?;
        remove_if_exists(&dir.join(CURSOR_TMP))?;
        let names = list_segments(&dir)?;
        let mut rec = Recovery::default();
        let cursor = match read_cursor(&dir)? {
            Some(Some(acked)) => Some(acked),
            // A fresh directory: not a loss.
            None if names.is_empty() => None,
            _ => {
                rec.cursor_unreadable = true;
                None
            }
        };
        let acked = cursor.unwrap_or(0);
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut next_seq = acked + 1;
        // Where the next kept record should be, to count lost ones (not
        // knowable before the first one without a cursor).
        let mut expected = cursor.map(|a| a + 1);
        let mut last_kept = None;
        let mut buf = Vec::new();
        for (i, (first, path)) in names.iter().enumerate() {
            let (first, last_file) = (*first, i + 1 == names.len());
            next_seq = next_seq.max(first);
            // Wholly acknowledged, by the next segment's name: not read.
            if cursor.is_some() && names.get(i + 1).is_some_and(|(n, _)| *n <= acked + 1) {
                remove_if_exists(path)?;
                rec.segments_removed += 1;
                continue;
            }
            let file = OpenOptions::new().read(true).write(last_file).open(path)?;
            let file_len = file.metadata()?.len();
            let follows = segments.back().is_none_or(|s| first >= s.next);
            let scan = if first > 0 && follows {
                let reader = BufReader::with_capacity(READ_BUFFER, &file);
                scan_segment(reader, file_len, first, acked, opts.max_record, &mut buf)?
            } else {
                Scan::default()
            };
            if scan.end < file_len {
                rec.corrupt_records += 1;
                if last_file {
                    file.set_len(scan.end)?;
                    rec.truncated_bytes += file_len - scan.end;
                } else {
                    rec.skipped_bytes += file_len - scan.end;
                }
            }
            let next = first + scan.count;
            if scan.count == 0 || next - 1 <= acked {
                drop(file);
                remove_if_exists(path)?;
                rec.segments_removed += 1;
                continue;
            }
            if let Some(e) = expected
                && first > e
            {
                rec.lost_records += first - e;
            }
            expected = Some(next);
            next_seq = next_seq.max(next);
            segments.push_back(Segment {
                first,
                next,
                end: scan.end,
                disk: if last_file { scan.end } else { file_len },
                acked_to: scan.acked_to,
                path: path.clone(),
            });
            last_kept = Some((file, last_file));
        }
        // Earlier segments were synced before their successor began; the
        // last one kept may not have been. If it is the last file, it
        // takes the next appends.
        if let Some((file, _)) = &last_kept {
            file.sync_all()?;
        }
        let writer = match last_kept {
            Some((file, true)) => {
                let written = segments.back().map_or(0, |s| s.end);
                Some(Writer {
                    file,
                    written,
                    buf: Vec::new(),
                    trim: false,
                })
            }
            _ => None,
        };
        if cursor.is_none() {
            write_cursor(&dir, 0)?;
        }
        let pending_records = segments
            .iter()
            .map(|s| s.next - s.first.max(acked + 1))
            .sum();
        let pending_bytes = segments.iter().map(|s| s.end - s.acked_to).sum();
        rec.pending_records = pending_records;
        rec.pending_bytes = pending_bytes;
        let spill = Spill {
            disk_bytes: segments.iter().map(|s| s.disk).sum(),
            segments,
            writer,
            reader: None,
            next_seq,
            acked,
            synced_through: next_seq - 1,
            last_sync: None,
            pending_records,
            pending_bytes,
            opts,
            _lock: lock,
        };
        Ok((spill, rec))
    }

    /// Appends one record and returns its seq. Under
    /// [`FsyncPolicy::Always`] it is on disk when this returns; otherwise
    /// it is visible to [`Spill::read`] at once and on disk after the next
    /// sync. On any error nothing was taken.
    pub fn append(&mut self, payload: &[u8]) -> Result<Seq, SpillError> {
        if payload.len() > self.opts.max_record {
            return Err(SpillError::TooLarge {
                len: payload.len(),
                max: self.opts.max_record,
            });
        }
        let size = (RECORD_HEADER + payload.len()) as u64;
        if self.disk_bytes + size > self.opts.max_bytes {
            return Err(SpillError::Full);
        }
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return Err(io::Error::other("spill sequence numbers are exhausted").into());
        }
        let room = match (&self.writer, self.segments.back()) {
            (Some(_), Some(seg)) => seg.end + size <= self.opts.segment_bytes,
            _ => false,
        };
        if !room {
            self.start_segment()?;
        }
        let always = self.opts.fsync == FsyncPolicy::Always;
        let (Some(writer), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(io::Error::other("spill has no segment to write").into());
        };
        let mark = writer.buf.len();
        writer.buf.extend_from_slice(&Header::encode(seq, payload));
        writer.buf.extend_from_slice(payload);
        let written = if always {
            writer.flush().and_then(|()| writer.file.sync_data())
        } else if writer.buf.len() >= WRITE_BUFFER {
            writer.flush()
        } else {
            Ok(())
        };
        if let Err(e) = written {
            // Take the record back: still buffered if the write failed,
            // in the file (cut at the next flush) if the sync did.
            if writer.buf.len() > mark {
                writer.buf.truncate(mark);
            } else {
                writer.written -= size;
                writer.trim = true;
            }
            return Err(e.into());
        }
        seg.next = seq + 1;
        seg.end += size;
        seg.disk += size;
        self.next_seq = seq + 1;
        self.pending_records += 1;
        self.pending_bytes += size;
        self.disk_bytes += size;
        if always {
            self.synced_through = seq;
        }
        Ok(Seq(seq))
    }

    /// Finishes the current segment (written and synced) and starts a new
    /// one named after the next seq.
    fn start_segment(&mut self) -> io::Result<()> {
        if let Some(writer) = self.writer.as_mut() {
            writer.flush()?;
            writer.file.sync_data()?;
            self.synced_through = self.next_seq - 1;
        }
        let first = self.next_seq;
        let path = self.opts.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // The new file's name must be on disk before its records count.
        if let Err(e) = sync_dir(&self.opts.dir) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.writer = Some(Writer {
            file,
            written: 0,
            buf: Vec::with_capacity(WRITE_BUFFER),
            trim: false,
        });
        self.segments.push_back(Segment {
            first,
            next: first,
            end: 0,
            disk: 0,
            acked_to: 0,
            path,
        });
        Ok(())
    }

    /// Writes and syncs everything appended: afterwards
    /// [`Spill::is_synced`] holds for every seq handed out.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.synced_through + 1 >= self.next_seq {
            return Ok(());
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.flush()?;
            writer.file.sync_data()?;
        }
        self.synced_through = self.next_seq - 1;
        Ok(())
    }

    /// Writes the records appended so far to the file without syncing it
    /// (appends gather in a buffer of up to 64 KiB): afterwards a crash
    /// of this process loses none of them (the kernel has them), only a
    /// power cut can. The worker calls it after each group of appends.
    pub fn write_out(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }

    /// Under [`FsyncPolicy::Interval`], syncs if something is unsynced and
    /// the interval has passed since this last synced (at once the first
    /// time); says whether it synced. A no-op under the other policies.
    pub fn sync_if_due(&mut self, now: Instant) -> io::Result<bool> {
        let FsyncPolicy::Interval(every) = self.opts.fsync else {
            return Ok(false);
        };
        if self.synced_through + 1 >= self.next_seq
            || self
                .last_sync
                .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return Ok(false);
        }
        self.sync()?;
        self.last_sync = Some(now);
        Ok(true)
    }

    /// Up to `max_records` records from seq `from` on (and past the
    /// cursor), in order, their payloads adding up to at most `max_bytes`
    /// (but always one record, if any, however long). Sees appends not
    /// yet synced. A record that fails its checks here (damaged on disk
    /// since [`Spill::open`]) is an [`io::ErrorKind::InvalidData`] error
    /// naming its seq.
    pub fn read(
        &mut self,
        from: Seq,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(Seq, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(writer) = self.writer.as_mut() {
            writer.flush()?;
        }
        let mut seq = from.0.max(self.acked + 1);
        let mut bytes = 0usize;
        let mut idx = self.segments.partition_point(|s| s.next <= seq);
        'segments: while out.len() < max_records && idx < self.segments.len() {
            let (first, next) = (self.segments[idx].first, self.segments[idx].next);
            idx += 1;
            if first == next {
                continue;
            }
            seq = seq.max(first);
            let mut reader = self.seek_record(idx - 1, seq)?;
            let seg = &self.segments[idx - 1];
            while seq < seg.next && out.len() < max_records {
                let (len, crc) = reader.header(seg.end, self.opts.max_record)?;
                if !out.is_empty() && bytes + len > max_bytes {
                    self.reader = Some(reader);
                    break 'segments;
                }
                out.push((Seq(seq), reader.payload(len, crc)?));
                bytes += len;
                seq += 1;
            }
            self.reader = Some(reader);
        }
        Ok(out)
    }

    /// The reader, at the start of record `seq` of segment `idx`: from the
    /// cached position, the cursor's, or the segment's start, whichever is
    /// nearest before it, stepping over headers.
    fn seek_record(&mut self, idx: usize, seq: u64) -> io::Result<Reader> {
        if idx + 1 == self.segments.len()
            && let Some(writer) = self.writer.as_mut()
        {
            writer.flush()?;
        }
        let seg = &self.segments[idx];
        let mut reader = match self.reader.take() {
            Some(r) if r.segment == seg.first => r,
            _ => Reader::open(seg.first, &seg.path)?,
        };
        let mut start = (seg.first, 0);
        let head = seg.first.max(self.acked + 1);
        if head <= seq && head > start.0 {
            start = (head, seg.acked_to);
        }
        if reader.seq <= seq && reader.seq > start.0 {
            start = (reader.seq, reader.offset);
        }
        (reader.seq, reader.offset) = start;
        while reader.seq < seq {
            let (len, _) = reader.header(seg.end, self.opts.max_record)?;
            reader.skip(len);
        }
        Ok(reader)
    }

    /// Records everything up to `upto` as delivered: persists the cursor,
    /// then deletes every segment wholly at or below it (the one being
    /// written too; the next append starts a new one). Acking the cursor
    /// again is a no-op (and retries a failed deletion); acking below it,
    /// or past the last appended seq, is [`io::ErrorKind::InvalidInput`].
    pub fn ack(&mut self, upto: Seq) -> io::Result<()> {
        let upto = upto.0;
        if upto < self.acked {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("spill ack {upto} is behind the cursor {}", self.acked),
            ));
        }
        if upto >= self.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "spill ack {upto} is past the last appended seq {}",
                    self.next_seq - 1
                ),
            ));
        }
        if upto > self.acked {
            // Find the new offsets first: a failure changes nothing.
            let mut moves = Vec::new();
            let (mut records, mut bytes) = (0, 0);
            for idx in 0..self.segments.len() {
                let seg = &self.segments[idx];
                if seg.first > upto {
                    break;
                }
                let (lo, hi) = (seg.first.max(self.acked + 1), seg.next.min(upto + 1));
                if lo >= hi {
                    continue;
                }
                let to = if hi == seg.next {
                    seg.end
                } else {
                    let reader = self.seek_record(idx, hi)?;
                    let offset = reader.offset;
                    self.reader = Some(reader);
                    offset
                };
                records += hi - lo;
                bytes += to - self.segments[idx].acked_to;
                moves.push((idx, to));
            }
            write_cursor(&self.opts.dir, upto)?;
            for (idx, to) in moves {
                self.segments[idx].acked_to = to;
            }
            self.acked = upto;
            self.pending_records -= records;
            self.pending_bytes -= bytes;
        }
        while let Some(seg) = self.segments.front() {
            if seg.next == seg.first || seg.next > self.acked + 1 {
                break;
            }
            remove_if_exists(&seg.path)?;
            if self.segments.len() == 1 {
                self.writer = None;
            }
            if self.reader.as_ref().is_some_and(|r| r.segment == seg.first) {
                self.reader = None;
            }
            self.disk_bytes -= seg.disk;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> Seq {
        Seq(self.next_seq)
    }

    /// The cursor: every record at or below it was delivered (`Seq(0)`:
    /// none).
    pub fn acked(&self) -> Seq {
        Seq(self.acked)
    }

    /// The highest seq known to be on disk.
    pub fn synced_through(&self) -> Seq {
        Seq(self.synced_through)
    }

    /// Record `seq` is on disk, or acknowledged (no longer needed).
    pub fn is_synced(&self, seq: Seq) -> bool {
        seq.0 <= self.synced_through.max(self.acked)
    }

    /// Unacknowledged records held.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Their bytes, headers included.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Bytes of the segment files (what [`SpillOptions::max_bytes`]
    /// bounds): the pending bytes, plus acknowledged records that share a
    /// segment with pending ones.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The oldest unacknowledged record held, if any.
    pub fn oldest_pending(&self) -> Option<Seq> {
        self.segments
            .iter()
            .find(|s| s.next > s.first && s.next > self.acked + 1)
            .map(|s| Seq(s.first.max(self.acked + 1)))
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SpillOptions {
        &self.opts
    }
}

impl Drop for Spill {
    /// Writes what is buffered (no sync): a process that stops cleanly
    /// loses nothing, whatever the policy.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer.flush();
        }
    }
}
