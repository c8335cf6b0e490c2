//! The spill against its promises: round trips, reopening, recovery from
//! every cut of the last segment and from corruption anywhere, the bounds,
//! the fsync policies, and a seeded model-based run of appends, reads,
//! acks, syncs and reopens checked against a `VecDeque` (and against the
//! files on disk).

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::files::{CURSOR_FILE, CURSOR_TMP, SEGMENT_SUFFIX};
use super::*;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "wsedge-spill-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Small bounds, so segments roll over every few records.
fn small(dir: &Path) -> SpillOptions {
    SpillOptions {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 256,
        max_record: 64,
        fsync: FsyncPolicy::Never,
    }
}

fn open(opts: &SpillOptions) -> (Spill, Recovery) {
    Spill::open(opts.clone()).unwrap()
}

/// A payload that says which seq it was written as.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Record `seq`'s length in the fixed logs below.
fn len_of(seq: u64) -> usize {
    (seq as usize * 7) % 65
}

fn record_bytes(len: usize) -> u64 {
    (RECORD_HEADER + len) as u64
}

fn read_all(spill: &mut Spill) -> Vec<(Seq, Vec<u8>)> {
    spill.read(Seq(0), usize::MAX, usize::MAX).unwrap()
}

/// Records `seqs` as [`payload`] made them.
fn expected(seqs: impl IntoIterator<Item = u64>) -> Vec<(Seq, Vec<u8>)> {
    seqs.into_iter()
        .map(|s| (Seq(s), payload(s, len_of(s))))
        .collect()
}

/// The segment files, in seq order, with their first seqs.
fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    list_segments(dir).unwrap()
}

fn segment_file_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum()
}

/// Appends records `1..=n` (lengths from [`len_of`]) to a new spill.
fn write_log(opts: &SpillOptions, n: u64) {
    let (mut spill, _) = open(opts);
    for seq in 1..=n {
        assert_eq!(spill.append(&payload(seq, len_of(seq))).unwrap(), Seq(seq));
    }
}

/// A copy of `from` in a new directory.
fn copy_dir(from: &Path, name: &str) -> TempDir {
    let to = TempDir::new(name);
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

fn is_invalid_input<T: fmt::Debug>(r: io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::InvalidInput)
}

/// Append, read, ack: seqs contiguous from 1, reads bounded by count
/// and bytes (always one record), a read after an ack starts past the
/// cursor, a full ack deletes every segment and the seq goes on.
#[test]
fn append_read_ack_round_trip() {
    let tmp = TempDir::new("round-trip");
    let opts = small(tmp.path());
    let (mut spill, rec) = open(&opts);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(rec, Recovery::default());
    assert_eq!((spill.next_seq(), spill.acked()), (Seq(1), Seq(0)));
    assert_eq!((spill.segments(), spill.oldest_pending()), (0, None));
    assert!(tmp.path().join(CURSOR_FILE).exists());

    for seq in 1..=20 {
        assert_eq!(spill.append(&payload(seq, len_of(seq))).unwrap(), Seq(seq));
    }
    assert!(spill.segments() > 1, "small segments roll over");
    assert_eq!(spill.pending_records(), 20);
    let bytes: u64 = (1..=20).map(|s| record_bytes(len_of(s))).sum();
    assert_eq!((spill.pending_bytes(), spill.disk_bytes()), (bytes, bytes));
    assert_eq!(read_all(&mut spill), expected(1..=20));
    assert_eq!(spill.read(Seq(5), 3, usize::MAX).unwrap(), expected(5..=7));
    // Payloads of 7, 14, 21, 28: 21 bytes fit twice, not three times.
    assert_eq!(spill.read(Seq(1), 100, 21).unwrap(), expected(1..=2));
    assert_eq!(spill.read(Seq(3), 100, 0).unwrap(), expected(3..=3));
    assert!(spill.read(Seq(21), 100, usize::MAX).unwrap().is_empty());
    assert!(spill.read(Seq(1), 0, usize::MAX).unwrap().is_empty());

    spill.ack(Seq(7)).unwrap();
    assert_eq!(spill.acked(), Seq(7));
    assert_eq!(spill.oldest_pending(), Some(Seq(8)));
    assert_eq!(spill.pending_records(), 13);
    let bytes: u64 = (8..=20).map(|s| record_bytes(len_of(s))).sum();
    assert_eq!(spill.pending_bytes(), bytes);
    assert_eq!(read_all(&mut spill), expected(8..=20));
    assert_eq!(spill.read(Seq(2), 2, usize::MAX).unwrap(), expected(8..=9));

    assert!(is_invalid_input(spill.ack(Seq(6))), "backwards");
    assert!(is_invalid_input(spill.ack(Seq(21))), "past the last seq");
    assert_eq!((spill.acked(), spill.pending_records()), (Seq(7), 13));
    spill.ack(Seq(7)).unwrap();

    spill.ack(Seq(20)).unwrap();
    assert_eq!((spill.pending_records(), spill.pending_bytes()), (0, 0));
    assert_eq!((spill.segments(), spill.disk_bytes()), (0, 0));
    assert_eq!(spill.oldest_pending(), None);
    assert!(segment_files(tmp.path()).is_empty());
    assert!(read_all(&mut spill).is_empty());
    assert_eq!(spill.append(b"again").unwrap(), Seq(21));
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].1.ends_with("spill-00000000000000000021.log"));
    assert_eq!(read_all(&mut spill), vec![(Seq(21), b"again".to_vec())]);
}

/// Reopening keeps the unacknowledged records and the seq goes on;
/// acknowledged records are not returned; the directory is held by one
/// spill at a time.
#[test]
fn reopen_keeps_pending_and_continues_seq() {
    let tmp = TempDir::new("reopen");
    let opts = small(tmp.path());
    write_log(&opts, 30);
    {
        let (mut spill, rec) = open(&opts);
        assert!(rec.is_clean(), "{rec:?}");
        assert_eq!(rec.pending_records, 30);
        assert_eq!(spill.next_seq(), Seq(31));
        assert!(
            Spill::open(opts.clone()).is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
            "a second spill on the same directory"
        );
        spill.ack(Seq(12)).unwrap();
    }
    let (mut spill, rec) = open(&opts);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(rec.pending_records, 18);
    let bytes: u64 = (13..=30).map(|s| record_bytes(len_of(s))).sum();
    assert_eq!(rec.pending_bytes, bytes);
    assert_eq!((spill.acked(), spill.next_seq()), (Seq(12), Seq(31)));
    assert_eq!(spill.oldest_pending(), Some(Seq(13)));
    assert_eq!(read_all(&mut spill), expected(13..=30));
    assert_eq!(spill.disk_bytes(), segment_file_bytes(tmp.path()));
    assert_eq!(spill.append(&payload(31, len_of(31))).unwrap(), Seq(31));
    spill.ack(Seq(31)).unwrap();
    drop(spill);

    // Fully acknowledged: nothing left, the seq still goes on.
    let (mut spill, rec) = open(&opts);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!((spill.next_seq(), spill.pending_records()), (Seq(32), 0));
    assert!(read_all(&mut spill).is_empty());
    assert_eq!(spill.append(b"x").unwrap(), Seq(32));
}

/// Record `seq`'s offset and end in the last segment, from its first seq.
fn last_segment_layout(first: u64, n: u64) -> Vec<(u64, u64, u64)> {
    let mut offset = 0;
    (first..=n)
        .map(|seq| {
            let end = offset + record_bytes(len_of(seq));
            let rec = (seq, offset, end);
            offset = end;
            rec
        })
        .collect()
}

/// A crash can leave the last segment at any length: for every one,
/// open keeps exactly the records wholly within it (and all of the
/// earlier segments), cuts the rest, never fails, and the spill then
/// works on (appends, a clean reopen).
#[test]
fn every_cut_of_the_last_segment_recovers_the_whole_records() {
    const N: u64 = 40;
    let base = TempDir::new("cut-base");
    let opts = small(base.path());
    write_log(&opts, N);
    let files = segment_files(base.path());
    assert!(files.len() >= 3, "several segments: {}", files.len());
    let (first, last_path) = files.last().unwrap().clone();
    let name = last_path.file_name().unwrap().to_owned();
    let layout = last_segment_layout(first, N);
    let full = fs::metadata(&last_path).unwrap().len();
    assert_eq!(full, layout.last().unwrap().2);

    for cut in 0..=full {
        let tmp = copy_dir(base.path(), "cut");
        let path = tmp.path().join(&name);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let opts = small(tmp.path());
        let (mut spill, rec) = open(&opts);
        let whole: Vec<_> = layout.iter().filter(|r| r.2 <= cut).collect();
        let good_end = whole.last().map_or(0, |r| r.2);
        let last_kept = whole.last().map_or(first - 1, |r| r.0);
        assert_eq!(read_all(&mut spill), expected(1..=last_kept), "cut {cut}");
        assert_eq!(rec.truncated_bytes, cut - good_end, "cut {cut}");
        assert_eq!(rec.corrupt_records, u64::from(cut > good_end), "cut {cut}");
        assert_eq!((rec.lost_records, rec.skipped_bytes), (0, 0), "cut {cut}");
        assert_eq!(rec.pending_records, last_kept, "cut {cut}");
        assert_eq!(spill.next_seq(), Seq(last_kept + 1), "cut {cut}");
        assert_eq!(
            spill.disk_bytes(),
            segment_file_bytes(tmp.path()),
            "cut {cut}"
        );
        let seq = last_kept + 1;
        assert_eq!(spill.append(&payload(seq, len_of(seq))).unwrap(), Seq(seq));
        drop(spill);
        let (mut spill, rec) = open(&opts);
        assert!(rec.is_clean(), "cut {cut}: {rec:?}");
        assert_eq!(read_all(&mut spill), expected(1..=seq), "cut {cut}");
    }
}

/// Garbage after the valid records of the last segment (random bytes,
/// a well-formed record with the wrong seq, one over `max_record`) is cut
/// and counted; every record stays.
#[test]
fn garbage_after_the_last_record_is_cut_and_counted() {
    const N: u64 = 25;
    let base = TempDir::new("garbage-base");
    write_log(&small(base.path()), N);
    let (_, last) = segment_files(base.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_owned();

    let mut tails: Vec<Vec<u8>> = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..60 {
        let len = rng.random_range(1..100);
        tails.push((0..len).map(|_| rng.random()).collect());
    }
    let skipped_seq = payload(N + 2, 5);
    tails.push([&Header::encode(N + 2, &skipped_seq)[..], &skipped_seq].concat());
    let repeated = payload(N, 5);
    tails.push([&Header::encode(N, &repeated)[..], &repeated].concat());
    let long = payload(N + 1, 65);
    tails.push([&Header::encode(N + 1, &long)[..], &long].concat());
    let mut bad_crc = [&Header::encode(N + 1, b"abc")[..], b"abd"].concat();
    tails.push(bad_crc.clone());
    bad_crc.truncate(RECORD_HEADER - 1);
    tails.push(bad_crc);

    for tail in tails {
        let tmp = copy_dir(base.path(), "garbage");
        let mut file = OpenOptions::new()
            .append(true)
            .open(tmp.path().join(&name))
            .unwrap();
        file.write_all(&tail).unwrap();
        drop(file);
        let (mut spill, rec) = open(&small(tmp.path()));
        assert_eq!(read_all(&mut spill), expected(1..=N), "tail {tail:?}");
        assert_eq!(rec.truncated_bytes, tail.len() as u64, "tail {tail:?}");
        assert_eq!(rec.corrupt_records, 1, "tail {tail:?}");
        assert_eq!(spill.next_seq(), Seq(N + 1));
    }
}

/// One damaged byte anywhere in the last segment: the records before
/// the damaged one stay, it and the rest are cut, counted.
#[test]
fn a_flipped_byte_in_the_last_segment_keeps_the_records_before_it() {
    const N: u64 = 25;
    let base = TempDir::new("flip-base");
    write_log(&small(base.path()), N);
    let (first, last) = segment_files(base.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_owned();
    let layout = last_segment_layout(first, N);
    let full = layout.last().unwrap().2;
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..120 {
        let at = rng.random_range(0..full);
        let flip: u8 = rng.random_range(1..=255);
        let tmp = copy_dir(base.path(), "flip");
        let path = tmp.path().join(&name);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize] ^= flip;
        fs::write(&path, &bytes).unwrap();
        let (mut spill, rec) = open(&small(tmp.path()));
        let &(hit, start, _) = layout.iter().find(|r| r.1 <= at && at < r.2).unwrap();
        let what = format!("byte {at} ^ {flip:#x} in record {hit}");
        assert_eq!(read_all(&mut spill), expected(1..hit), "{what}");
        assert_eq!(rec.truncated_bytes, full - start, "{what}");
        assert_eq!(rec.corrupt_records, 1, "{what}");
        assert_eq!(spill.next_seq(), Seq(hit.max(first)), "{what}");
    }
}

/// A damaged record in an earlier segment ends that segment's
/// readable part; the later segments are still read, the seqs in between
/// counted as lost, the damaged file left as it is.
#[test]
fn a_damaged_earlier_segment_is_skipped_and_the_gap_counted() {
    const N: u64 = 40;
    let tmp = TempDir::new("earlier");
    let opts = small(tmp.path());
    write_log(&opts, N);
    let files = segment_files(tmp.path());
    assert!(files.len() >= 3);
    let (first, path) = files[1].clone();
    let end = files[2].0;
    let hit = first + 1;
    assert!(
        end > hit + 1,
        "the damaged segment has records after the damaged one"
    );
    let at = record_bytes(len_of(first)) + RECORD_HEADER as u64;
    let mut bytes = fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let (mut spill, rec) = open(&opts);
    assert_eq!(rec.corrupt_records, 1);
    assert_eq!(rec.lost_records, end - hit);
    assert_eq!(
        rec.skipped_bytes,
        bytes.len() as u64 - record_bytes(len_of(first))
    );
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.pending_records, N - (end - hit));
    let kept: Vec<u64> = (1..hit).chain(end..=N).collect();
    assert_eq!(read_all(&mut spill), expected(kept.iter().copied()));
    // Read in small batches across the gap.
    let mut from = Seq(1);
    let mut got = Vec::new();
    loop {
        let batch = spill.read(from, 3, usize::MAX).unwrap();
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        got.extend(batch);
        from = Seq(last.0 + 1);
    }
    assert_eq!(got, expected(kept.iter().copied()));
    assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    assert_eq!(spill.disk_bytes(), segment_file_bytes(tmp.path()));
    assert_eq!(spill.append(b"on").unwrap(), Seq(N + 1));
    spill.sync().unwrap();
    // Acking into the gap works; the damaged segment goes with its
    // records.
    spill.ack(Seq(hit + 1)).unwrap();
    assert_eq!(spill.oldest_pending(), Some(Seq(end)));
    assert!(!path.exists());
    assert_eq!(spill.disk_bytes(), segment_file_bytes(tmp.path()));
}

/// The bounds: `Full` past `max_bytes` with nothing written, room
/// again only once a whole segment is acknowledged (its file deleted);
/// `TooLarge` past `max_record`.
#[test]
fn bounds_full_too_large_and_segment_deletion() {
    let tmp = TempDir::new("bounds");
    let opts = SpillOptions {
        max_bytes: 1024,
        ..small(tmp.path())
    };
    let (mut spill, _) = open(&opts);
    // 64-byte records: four to a 256-byte segment, sixteen in all.
    let record = [7u8; 48];
    for seq in 1..=16 {
        assert_eq!(spill.append(&record).unwrap(), Seq(seq));
    }
    assert_eq!((spill.disk_bytes(), spill.segments()), (1024, 4));
    assert!(matches!(spill.append(&record), Err(SpillError::Full)));
    assert!(matches!(spill.append(b""), Err(SpillError::Full)));
    assert!(matches!(
        spill.append(&[0; 65]),
        Err(SpillError::TooLarge { len: 65, max: 64 })
    ));
    spill.sync().unwrap();
    assert_eq!(spill.next_seq(), Seq(17));
    assert_eq!(segment_file_bytes(tmp.path()), 1024);

    spill.ack(Seq(3)).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 4);
    assert!(matches!(spill.append(&record), Err(SpillError::Full)));
    spill.ack(Seq(4)).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 3);
    assert_eq!(spill.disk_bytes(), 768);
    assert_eq!(spill.append(&record).unwrap(), Seq(17));
    assert_eq!(segment_files(tmp.path()).len(), 4);

    spill.ack(Seq(17)).unwrap();
    assert!(segment_files(tmp.path()).is_empty());
    assert_eq!((spill.disk_bytes(), spill.segments()), (0, 0));
    assert_eq!(spill.append(&[0; 64]).unwrap(), Seq(18));
    assert_eq!(segment_files(tmp.path()).len(), 1);
}

/// The model's view of the segment files (mirrors the rules: a record
/// goes into the last segment if it fits, wholly acknowledged segments go
/// at ack).
#[derive(Default)]
struct ModelSegment {
    next: u64,
    bytes: u64,
}

/// Seeded random appends, reads, acks (valid and not), syncs and
/// reopens against a model: the records, seqs, cursor, counts, bytes,
/// `Full`/`TooLarge` and the segment files all agree after every step.
#[test]
fn random_operations_match_a_model() {
    for seed in 0..4u64 {
        run_model(seed, 800);
    }
}

fn run_model(seed: u64, ops: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = TempDir::new("model");
    let opts = SpillOptions {
        max_bytes: 1024,
        segment_bytes: 256,
        max_record: 64,
        fsync: if seed.is_multiple_of(2) {
            FsyncPolicy::Never
        } else {
            FsyncPolicy::Interval(Duration::from_millis(5))
        },
        dir: tmp.path().to_path_buf(),
    };
    let start = Instant::now();
    let (mut spill, _) = open(&opts);
    let mut records: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut segments: VecDeque<ModelSegment> = VecDeque::new();
    let (mut next, mut acked) = (1u64, 0u64);
    for step in 0..ops {
        let what = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..45 => {
                let len = if rng.random_bool(0.03) {
                    rng.random_range(65..80)
                } else {
                    rng.random_range(0..=64)
                };
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let size = record_bytes(len);
                let disk: u64 = segments.iter().map(|s| s.bytes).sum();
                let got = spill.append(&data);
                if len > 64 {
                    assert!(matches!(got, Err(SpillError::TooLarge { .. })), "{what}");
                } else if disk + size > opts.max_bytes {
                    assert!(matches!(got, Err(SpillError::Full)), "{what}");
                } else {
                    assert_eq!(got.unwrap(), Seq(next), "{what}");
                    match segments.back_mut() {
                        Some(s) if s.bytes + size <= opts.segment_bytes => {
                            s.next += 1;
                            s.bytes += size;
                        }
                        _ => segments.push_back(ModelSegment {
                            next: next + 1,
                            bytes: size,
                        }),
                    }
                    records.push_back((next, data));
                    next += 1;
                }
            }
            45..70 => {
                let from = rng.random_range(acked.saturating_sub(2)..=next + 1);
                let max_records = rng.random_range(0..8);
                let max_bytes = rng.random_range(0..200);
                let got = spill.read(Seq(from), max_records, max_bytes).unwrap();
                let mut want = Vec::new();
                let mut bytes = 0;
                for (seq, data) in records.iter().filter(|r| r.0 >= from) {
                    if want.len() == max_records
                        || (!want.is_empty() && bytes + data.len() > max_bytes)
                    {
                        break;
                    }
                    bytes += data.len();
                    want.push((Seq(*seq), data.clone()));
                }
                assert_eq!(
                    got, want,
                    "{what}: read({from}, {max_records}, {max_bytes})"
                );
                assert_eq!(spill.disk_bytes(), segment_file_bytes(tmp.path()), "{what}");
            }
            70..82 => {
                // Mostly a few records at a time, so the spill fills up.
                let upto = if rng.random_bool(0.2) {
                    rng.random_range(acked..next)
                } else {
                    (acked + rng.random_range(0..6)).min(next - 1)
                };
                spill.ack(Seq(upto)).unwrap();
                acked = upto;
                while records.front().is_some_and(|r| r.0 <= acked) {
                    records.pop_front();
                }
                while segments.front().is_some_and(|s| s.next <= acked + 1) {
                    segments.pop_front();
                }
                assert_eq!(segment_files(tmp.path()).len(), segments.len(), "{what}");
            }
            82..87 => {
                let upto = if acked > 0 && rng.random_bool(0.5) {
                    rng.random_range(0..acked)
                } else {
                    rng.random_range(next..next + 3)
                };
                assert!(is_invalid_input(spill.ack(Seq(upto))), "{what}: ack {upto}");
            }
            87..95 => {
                if rng.random_bool(0.5) {
                    spill.sync().unwrap();
                } else {
                    let now = start + Duration::from_millis(step as u64);
                    let due = spill.synced_through().0 + 1 < next;
                    let synced = spill.sync_if_due(now).unwrap();
                    assert!(!synced || due, "{what}");
                    if opts.fsync == FsyncPolicy::Never || !synced {
                        continue;
                    }
                }
                assert_eq!(spill.synced_through(), Seq(next - 1), "{what}");
                assert_eq!(segment_file_bytes(tmp.path()), spill.disk_bytes(), "{what}");
            }
            _ => {
                drop(spill);
                let rec;
                (spill, rec) = open(&opts);
                assert!(rec.is_clean(), "{what}: {rec:?}");
                assert_eq!(rec.pending_records, records.len() as u64, "{what}");
                assert_eq!(spill.synced_through(), Seq(next - 1), "{what}");
            }
        }
        assert_eq!(spill.next_seq(), Seq(next), "{what}");
        assert_eq!(spill.acked(), Seq(acked), "{what}");
        assert_eq!(spill.pending_records(), records.len() as u64, "{what}");
        let bytes: u64 = records.iter().map(|r| record_bytes(r.1.len())).sum();
        assert_eq!(spill.pending_bytes(), bytes, "{what}");
        assert_eq!(
            spill.oldest_pending(),
            records.front().map(|r| Seq(r.0)),
            "{what}"
        );
        let disk: u64 = segments.iter().map(|s| s.bytes).sum();
        assert_eq!(spill.disk_bytes(), disk, "{what}");
        assert_eq!(spill.segments(), segments.len(), "{what}");
    }
    // Everything left is still there after one last reopen.
    drop(spill);
    let (mut spill, _) = open(&opts);
    let want: Vec<_> = records.into_iter().map(|(s, d)| (Seq(s), d)).collect();
    assert_eq!(read_all(&mut spill), want, "seed {seed}");
}

/// A corrupt or missing cursor means nothing acknowledged: counted,
/// every record still on disk sent again, the cursor rewritten.
#[test]
fn an_unreadable_cursor_replays_everything_kept() {
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 4] = [
        ("flipped byte", |p| {
            let mut b = fs::read(p).unwrap();
            b[3] ^= 1;
            fs::write(p, b).unwrap();
        }),
        ("short", |p| fs::write(p, [5, 0, 0, 0, 0]).unwrap()),
        ("long", |p| fs::write(p, [0; 13]).unwrap()),
        ("missing", |p| fs::remove_file(p).unwrap()),
    ];
    for (name, damage) in damages {
        let tmp = TempDir::new("cursor");
        let opts = SpillOptions {
            segment_bytes: 4096,
            ..small(tmp.path())
        };
        write_log(&opts, 10);
        {
            let (mut spill, _) = open(&opts);
            spill.ack(Seq(5)).unwrap();
        }
        damage(&tmp.path().join(CURSOR_FILE));
        let (mut spill, rec) = open(&opts);
        assert!(rec.cursor_unreadable, "{name}");
        assert_eq!((rec.corrupt_records, rec.lost_records), (0, 0), "{name}");
        assert_eq!(rec.pending_records, 10, "{name}");
        assert_eq!(spill.acked(), Seq(0), "{name}");
        assert_eq!(read_all(&mut spill), expected(1..=10), "{name}");
        drop(spill);
        let (spill, rec) = open(&opts);
        assert!(rec.is_clean(), "{name}: rewritten: {rec:?}");
        assert_eq!(spill.pending_records(), 10, "{name}");
    }

    // With earlier segments already gone: what is left is replayed, no
    // gap is claimed before it, the seq goes on.
    let tmp = TempDir::new("cursor-deleted");
    let opts = small(tmp.path());
    write_log(&opts, 30);
    {
        let (mut spill, _) = open(&opts);
        spill.ack(Seq(20)).unwrap();
    }
    let first = segment_files(tmp.path())[0].0;
    assert!(first > 1 && first <= 21);
    fs::write(tmp.path().join(CURSOR_FILE), b"garbage").unwrap();
    let (mut spill, rec) = open(&opts);
    assert!(rec.cursor_unreadable);
    assert_eq!(rec.lost_records, 0);
    assert_eq!(read_all(&mut spill), expected(first..=30));
    assert_eq!(spill.append(b"x").unwrap(), Seq(31));
}

/// What each fsync policy syncs, seen through `synced_through` and
/// `is_synced`.
#[test]
fn fsync_policies_and_synced_through() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;

    let tmp = TempDir::new("always");
    let (mut spill, _) = open(&SpillOptions {
        fsync: FsyncPolicy::Always,
        ..small(tmp.path())
    });
    for seq in 1..=3 {
        assert_eq!(spill.append(b"a").unwrap(), Seq(seq));
        assert_eq!(spill.synced_through(), Seq(seq));
        assert!(spill.is_synced(Seq(seq)) && !spill.is_synced(Seq(seq + 1)));
    }
    assert!(!spill.sync_if_due(t0).unwrap());

    let tmp = TempDir::new("interval");
    let (mut spill, _) = open(&SpillOptions {
        fsync: FsyncPolicy::Interval(ms(100)),
        ..small(tmp.path())
    });
    assert!(!spill.sync_if_due(t0).unwrap(), "nothing to sync");
    spill.append(b"a").unwrap();
    assert!(!spill.is_synced(Seq(1)));
    assert_eq!(spill.synced_through(), Seq(0));
    assert!(spill.sync_if_due(t0).unwrap(), "the first time at once");
    assert!(spill.is_synced(Seq(1)));
    spill.append(b"b").unwrap();
    assert!(!spill.sync_if_due(t0 + ms(99)).unwrap());
    assert!(!spill.is_synced(Seq(2)));
    assert!(spill.sync_if_due(t0 + ms(100)).unwrap());
    assert_eq!(spill.synced_through(), Seq(2));
    spill.append(b"c").unwrap();
    spill.sync().unwrap();
    assert_eq!(spill.synced_through(), Seq(3));
    assert!(
        !spill.sync_if_due(t0 + ms(500)).unwrap(),
        "nothing left to sync"
    );
    spill.append(b"d").unwrap();
    assert!(
        !spill.sync_if_due(t0 + ms(150)).unwrap(),
        "100 ms after the last timed sync"
    );
    assert!(spill.sync_if_due(t0 + ms(200)).unwrap());

    let tmp = TempDir::new("never");
    let opts = small(tmp.path());
    let (mut spill, _) = open(&opts);
    spill.append(b"a").unwrap();
    assert!(!spill.sync_if_due(t0).unwrap());
    assert!(!spill.sync_if_due(t0 + Duration::from_secs(3600)).unwrap());
    assert_eq!(spill.synced_through(), Seq(0));
    spill.sync().unwrap();
    assert_eq!(spill.synced_through(), Seq(1));
    // A finished segment is synced before the next one starts.
    let mut seq = 1;
    while spill.segments() == 1 {
        seq = spill.append(&[1; 64]).unwrap().0;
    }
    assert_eq!(spill.synced_through(), Seq(seq - 1));
    assert!(!spill.is_synced(Seq(seq)));
    // Acknowledged records need no disk.
    spill.ack(Seq(seq)).unwrap();
    assert!(spill.is_synced(Seq(seq)));
    spill.append(b"b").unwrap();
    drop(spill);
    // What open recovered is on disk.
    let (spill, _) = open(&opts);
    assert_eq!(spill.synced_through(), Seq(seq + 1));
}

/// Bad option combinations are refused, each naming its field; the
/// defaults pass; open refuses them too.
#[test]
fn options_are_validated() {
    let ok = SpillOptions::new("/tmp/x");
    assert_eq!(ok.validate(), Ok(()));
    let cases = [
        (
            SpillOptions {
                segment_bytes: ok.max_record as u64,
                ..ok.clone()
            },
            "segment_bytes",
        ),
        (
            SpillOptions {
                max_bytes: ok.segment_bytes - 1,
                ..ok.clone()
            },
            "max_bytes",
        ),
        (
            SpillOptions {
                max_record: 0,
                ..ok.clone()
            },
            "max_record",
        ),
        (
            SpillOptions {
                fsync: FsyncPolicy::Interval(Duration::ZERO),
                ..ok.clone()
            },
            "interval",
        ),
        (SpillOptions::new(""), "dir"),
    ];
    for (opts, field) in cases {
        let err = opts.validate().unwrap_err();
        assert!(err.contains(field), "{err}");
        assert!(is_invalid_input(Spill::open(opts)));
    }
}

/// Files that are not segments are left alone; a leftover `acked.tmp`
/// (a crash while acking) is removed; an empty segment file (a crash
/// right after creating it) is removed without a fuss.
#[test]
fn strangers_and_leftovers() {
    let tmp = TempDir::new("strangers");
    let opts = small(tmp.path());
    write_log(&opts, 5);
    let strangers = ["notes.txt", "spill-1.log", "spill-99999999999999999999.log"];
    for name in strangers {
        fs::write(tmp.path().join(name), b"hello").unwrap();
    }
    fs::write(tmp.path().join(CURSOR_TMP), b"half").unwrap();
    fs::write(tmp.path().join(segment_name(6)), b"").unwrap();
    let (mut spill, rec) = open(&opts);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(rec.segments_removed, 1);
    assert_eq!(read_all(&mut spill), expected(1..=5));
    for name in strangers {
        assert!(tmp.path().join(name).exists(), "{name}");
    }
    assert!(!tmp.path().join(CURSOR_TMP).exists());
    assert_eq!(spill.append(b"x").unwrap(), Seq(6));
}

/// A record damaged on disk after open is an `InvalidData` error naming
/// it when read (no panic, nothing made up); the records before it read
/// fine.
#[test]
fn damage_after_open_is_a_read_error() {
    let tmp = TempDir::new("late-damage");
    let opts = small(tmp.path());
    write_log(&opts, 10);
    let (mut spill, _) = open(&opts);
    let (first, path) = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let at = record_bytes(len_of(first)) as usize + 5;
    bytes[at] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        spill.read(Seq(1), first as usize, usize::MAX).unwrap(),
        expected(1..=first)
    );
    let err = spill.read(Seq(first + 1), 10, usize::MAX).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains(&format!("record {}", first + 1)),
        "{err}"
    );
}

/// After `write_out` every appended record is in the segment files (the
/// kernel has them: a kill of the process loses none), before any sync.
#[test]
fn write_out_puts_buffered_appends_in_the_files_without_a_sync() {
    let tmp = TempDir::new("write-out");
    let opts = SpillOptions {
        fsync: FsyncPolicy::Never,
        ..SpillOptions::new(tmp.path())
    };
    let (mut spill, _) = open(&opts);
    for seq in 1..=10 {
        spill.append(&payload(seq, 10)).unwrap();
    }
    let on_disk = |dir: &Path| -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let before = on_disk(tmp.path());
    assert!(
        before < spill.disk_bytes(),
        "appends are buffered ({before} of {})",
        spill.disk_bytes()
    );
    spill.write_out().unwrap();
    assert_eq!(on_disk(tmp.path()), spill.disk_bytes());
    assert_eq!(spill.synced_through(), Seq(0), "written, not synced");
}
