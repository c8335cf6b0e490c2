//! The spill directory's files other than the records: segment names,
//! the `acked` cursor (replaced atomically) and the `lock` file.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::MAX_SEQ;

/// The cursor file.
pub(super) const CURSOR_FILE: &str = "acked";
/// The cursor being replaced.
pub(super) const CURSOR_TMP: &str = "acked.tmp";
/// Bytes of the cursor file: seq and its CRC-32C.
const CURSOR_LEN: usize = 12;
/// The file locked while a [`Spill`](super::Spill) holds the directory.
const LOCK_FILE: &str = "lock";
/// Segment file names: prefix, 20 digits, suffix.
const SEGMENT_PREFIX: &str = "spill-";
pub(super) const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

/// Locks the directory's lock file, or says who holds it.
pub(super) fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    // A lock just released can still be held for a moment by a child
    // process between its fork and its exec (it shares the lock file's
    // description until exec closes it): wait a little before refusing.
    for _ in 0..LOCK_ATTEMPTS {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => std::thread::sleep(LOCK_RETRY),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("spill directory {} is held by another spill", dir.display()),
    ))
}

/// Tries at taking the directory's lock before [`lock_dir`] refuses.
const LOCK_ATTEMPTS: u32 = 20;
/// Pause between them (so at most ~200 ms in all).
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// `spill-<seq, 20 digits>.log`.
pub(super) fn segment_name(first: u64) -> String {
    format!("{SEGMENT_PREFIX}{first:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The segment files in `dir`, in seq order. Other names (and seqs over
/// [`MAX_SEQ`]) are not segments and are left alone.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(digits) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(first) = digits.parse::<u64>()
            && first <= MAX_SEQ
        {
            found.push((first, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(first, _)| *first);
    Ok(found)
}

/// The cursor: `None` if there is no file, `Some(None)` if it is
/// unreadable (wrong length, bad CRC, over [`MAX_SEQ`]).
pub(super) fn read_cursor(dir: &Path) -> io::Result<Option<Option<u64>>> {
    let file = match File::open(dir.join(CURSOR_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::with_capacity(CURSOR_LEN + 1);
    file.take(CURSOR_LEN as u64 + 1).read_to_end(&mut bytes)?;
    let Ok(bytes) = <[u8; CURSOR_LEN]>::try_from(bytes.as_slice()) else {
        return Ok(Some(None));
    };
    let [s @ .., c0, c1, c2, c3] = bytes;
    let acked = u64::from_le_bytes(s);
    let valid = crc32c::crc32c(&s) == u32::from_le_bytes([c0, c1, c2, c3]) && acked <= MAX_SEQ;
    Ok(Some(valid.then_some(acked)))
}

/// Replaces the cursor atomically: `acked.tmp` written and synced,
/// renamed over `acked`, the directory synced.
pub(super) fn write_cursor(dir: &Path, acked: u64) -> io::Result<()> {
    let mut bytes = [0; CURSOR_LEN];
    bytes[..8].copy_from_slice(&acked.to_le_bytes());
    bytes[8..].copy_from_slice(&crc32c::crc32c(&acked.to_le_bytes()).to_le_bytes());
    let tmp = dir.join(CURSOR_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    sync_dir(dir)
}

/// Makes the directory's entries (created, renamed files) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `path`; one already gone is fine.
pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
