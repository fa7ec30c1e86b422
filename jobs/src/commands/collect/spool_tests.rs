//! The spool against a model (a queue per portal), and its recovery from every way a crash or
//! damage can leave its files.

use std::collections::{BTreeMap, VecDeque};
use std::fs;

use proptest::prelude::*;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn record(n: u64, size: usize) -> SpooledRecord {
    SpooledRecord {
        partition_key: format!("user-{n}"),
        data: (0..size).map(|i| (n as usize + i) as u8).collect(),
        arrived_ms: 1_700_000_000_000 + n,
    }
}

fn records(from: u64, count: u64, size: usize) -> Vec<SpooledRecord> {
    (from..from + count).map(|n| record(n, size)).collect()
}

/// The segment files of `portal`, oldest first.
fn segments(dir: &Path, portal: &str) -> Result<Vec<PathBuf>, io::Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(portal))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|e| e == SEGMENT_EXTENSION));
    files.sort();
    Ok(files)
}

/// The size of every segment file on disk.
fn disk_bytes(dir: &Path) -> Result<u64, io::Error> {
    let mut total = 0;
    for portal in fs::read_dir(dir)? {
        let portal = portal?;
        if !portal.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(portal.path())? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == SEGMENT_EXTENSION) {
                total += fs::metadata(&path)?.len();
            }
        }
    }
    Ok(total)
}

#[derive(Clone, Debug)]
enum Op {
    Append { portal: usize, sizes: Vec<usize> },
    Peek { portal: usize, max: usize },
    Remove { portal: usize, pick: usize },
    Reopen,
}

/// Opens the spool again after the previous one was dropped. Its directory lock (`flock`) can
/// outlive the drop by a moment: a process another test forks in that moment shares the lock file's
/// descriptor until it executes its program. So the lock is awaited, for at most 5 s.
fn reopen(open: &impl Fn() -> Result<Spool, SpoolError>) -> Result<Spool, SpoolError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open() {
            Err(SpoolError::Lock(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// [`Spool::open`], awaiting the lock (see [`reopen`]).
fn open_spool(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
    reopen(&|| Spool::open(dir, max_bytes))
}

/// [`Spool::open_with_segment_bytes`], awaiting the lock (see [`reopen`]).
fn open_spool_with_segments(
    dir: &Path,
    max_bytes: u64,
    segment_bytes: u64,
) -> Result<Spool, SpoolError> {
    reopen(&|| Spool::open_with_segment_bytes(dir, max_bytes, segment_bytes))
}

const PORTALS: [&str; 3] = ["folha", "uol-esporte", "g1"];
const MODEL_MAX_BYTES: u64 = 1500;
const MODEL_SEGMENT_BYTES: u64 = 200;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PORTALS.len(), prop::collection::vec(0usize..120, 1..5))
            .prop_map(|(portal, sizes)| Op::Append { portal, sizes }),
        2 => (0..PORTALS.len(), 0usize..12).prop_map(|(portal, max)| Op::Peek { portal, max }),
        3 => (0..PORTALS.len(), any::<usize>()).prop_map(|(portal, pick)| Op::Remove { portal, pick }),
        1 => Just(Op::Reopen),
    ]
}

fn check_against_model(
    spool: &mut Spool,
    model: &BTreeMap<&str, VecDeque<SpooledRecord>>,
    dir: &Path,
) -> Result<(), TestCaseError> {
    let expected_portals: Vec<String> = model
        .iter()
        .filter(|(_, queue)| !queue.is_empty())
        .map(|(portal, _)| portal.to_string())
        .collect();
    prop_assert_eq!(spool.portals(), expected_portals);
    for portal in PORTALS {
        let queue = model.get(portal).cloned().unwrap_or_default();
        prop_assert_eq!(spool.records(portal), queue.len() as u64);
        prop_assert_eq!(
            spool.oldest_arrived_ms(portal),
            queue.front().map(|r| r.arrived_ms)
        );
        let all = spool
            .peek(portal, usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(all, Vec::from(queue));
    }
    prop_assert!(spool.bytes() <= MODEL_MAX_BYTES);
    prop_assert_eq!(
        spool.bytes(),
        disk_bytes(dir).map_err(|e| TestCaseError::fail(e.to_string()))?
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sequence of appends, peeks, removals, refusals and reopenings leaves the spool holding
    /// what a queue per portal holds, with its size on disk as it says and within its bound.
    #[test]
    fn spool_behaves_as_a_queue_per_portal(ops in prop::collection::vec(op(), 1..60)) {
        let fail = |e: SpoolError| TestCaseError::fail(e.to_string());
        let temp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let dir = temp.path().join("spool");
        let open = || Spool::open_with_segment_bytes(&dir, MODEL_MAX_BYTES, MODEL_SEGMENT_BYTES);
        let mut spool = open().map_err(fail)?;
        let mut model: BTreeMap<&str, VecDeque<SpooledRecord>> = BTreeMap::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append { portal, sizes } => {
                    let portal = PORTALS[portal];
                    let batch: Vec<SpooledRecord> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, size)| record(next + i as u64, *size))
                        .collect();
                    next += batch.len() as u64;
                    let needed: u64 = batch.iter().map(|r| frame_len(r) as u64).sum();
                    let used = spool.bytes();
                    match spool.append(portal, &batch) {
                        Ok(()) => {
                            prop_assert!(used + needed <= MODEL_MAX_BYTES);
                            model.entry(portal).or_default().extend(batch);
                        }
                        Err(SpoolError::Full { used: said_used, max, needed: said_needed }) => {
                            prop_assert!(used + needed > MODEL_MAX_BYTES);
                            prop_assert_eq!((said_used, max, said_needed), (used, MODEL_MAX_BYTES, needed));
                            prop_assert_eq!(spool.bytes(), used);
                        }
                        Err(other) => return Err(fail(other)),
                    }
                }
                Op::Peek { portal, max } => {
                    let portal = PORTALS[portal];
                    let peeked = spool.peek(portal, max).map_err(fail)?;
                    let expected: Vec<SpooledRecord> = model
                        .get(portal)
                        .map(|queue| queue.iter().take(max).cloned().collect())
                        .unwrap_or_default();
                    prop_assert_eq!(peeked, expected);
                }
                Op::Remove { portal, pick } => {
                    let portal = PORTALS[portal];
                    let queue = model.entry(portal).or_default();
                    let count = pick % (queue.len() + 1);
                    spool.remove_front(portal, count).map_err(fail)?;
                    queue.drain(..count);
                }
                Op::Reopen => {
                    drop(spool);
                    spool = reopen(&open).map_err(fail)?;
                    prop_assert_eq!(spool.records_cut(), 0);
                }
            }
            check_against_model(&mut spool, &model, &dir)?;
        }
    }
}

/// Three records of `folha` in one segment, the spool closed; returns the segment and where its
/// last record's frame starts.
fn three_records(
    dir: &Path,
) -> Result<(Vec<SpooledRecord>, PathBuf, u64), Box<dyn std::error::Error>> {
    let written = records(0, 3, 40);
    let mut spool = open_spool(dir, 1 << 20)?;
    spool.append("folha", &written[..2])?;
    spool.append("folha", &written[2..])?;
    drop(spool);
    let [segment] = segments(dir, "folha")?
        .try_into()
        .map_err(|_| "one segment")?;
    let last_start = (frame_len(&written[0]) + frame_len(&written[1])) as u64;
    assert_eq!(
        fs::metadata(&segment)?.len(),
        last_start + frame_len(&written[2]) as u64
    );
    Ok((written, segment, last_start))
}

/// Opening after `damage` keeps exactly the first `kept` records, cutting the rest, and the spool
/// goes on: a new record comes after them, also after another reopening, with nothing more cut.
fn assert_recovers(dir: &Path, written: &[SpooledRecord], kept: usize, cut: u64) -> TestResult {
    let mut spool = open_spool(dir, 1 << 20)?;
    assert_eq!(spool.records_cut(), cut);
    assert_eq!(spool.records("folha"), kept as u64);
    assert_eq!(spool.peek("folha", 10)?, written[..kept].to_vec());
    let later = record(99, 7);
    spool.append("folha", std::slice::from_ref(&later))?;
    drop(spool);
    let mut spool = open_spool(dir, 1 << 20)?;
    assert_eq!(spool.records_cut(), 0);
    let mut expected = written[..kept].to_vec();
    expected.push(later);
    assert_eq!(spool.peek("folha", 10)?, expected);
    assert_eq!(spool.bytes(), disk_bytes(dir)?);
    Ok(())
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() -> TestResult {
    let temp = tempfile::tempdir()?;
    let (_, _, last_start) = three_records(&temp.path().join("probe"))?;
    let last_end = last_start + frame_len(&record(2, 40)) as u64;
    for cut_at in last_start..last_end {
        let dir = temp.path().join(format!("cut-{cut_at}"));
        let (written, segment, _) = three_records(&dir)?;
        fs::OpenOptions::new()
            .write(true)
            .open(&segment)?
            .set_len(cut_at)?;
        let torn = u64::from(cut_at > last_start);
        assert_recovers(&dir, &written, 2, torn)?;
    }
    Ok(())
}

#[test]
fn a_damaged_last_record_is_cut_whichever_byte_changed() -> TestResult {
    let temp = tempfile::tempdir()?;
    let (_, _, last_start) = three_records(&temp.path().join("probe"))?;
    let last_end = last_start + frame_len(&record(2, 40)) as u64;
    for flipped in last_start..last_end {
        let dir = temp.path().join(format!("flip-{flipped}"));
        let (written, segment, _) = three_records(&dir)?;
        let mut bytes = fs::read(&segment)?;
        bytes[flipped as usize] ^= 0x40;
        fs::write(&segment, bytes)?;
        assert_recovers(&dir, &written, 2, 1)?;
    }
    Ok(())
}

#[test]
fn a_damaged_middle_record_keeps_only_the_records_before_it() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let (written, segment, _) = three_records(&dir)?;
    let mut bytes = fs::read(&segment)?;
    let middle = frame_len(&written[0]) + FRAME_HEADER + 3;
    bytes[middle] ^= 1;
    fs::write(&segment, bytes)?;
    // The damaged record and the one after it are cut (both counted).
    assert_recovers(&dir, &written, 1, 2)
}

#[test]
fn a_leftover_drained_temp_file_is_ignored_and_deleted() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let (written, _, _) = three_records(&dir)?;
    let mut spool = open_spool(&dir, 1 << 20)?;
    spool.remove_front("folha", 1)?;
    drop(spool);
    // A crash while writing the next number, before its rename.
    let leftover = dir.join("folha").join(DRAINED_TEMP);
    fs::write(&leftover, "3\n")?;
    let mut spool = open_spool(&dir, 1 << 20)?;
    assert!(!leftover.exists());
    assert_eq!(spool.peek("folha", 10)?, written[1..].to_vec());
    Ok(())
}

#[test]
fn segments_drained_before_a_crash_deleted_them_are_deleted_by_open() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    // Segments of one byte: each append starts a new one.
    let mut spool = open_spool_with_segments(&dir, 1 << 20, 1)?;
    let written = records(0, 6, 10);
    for batch in written.chunks(2) {
        spool.append("folha", batch)?;
    }
    let files = segments(&dir, "folha")?;
    assert_eq!(files.len(), 3);
    let first = fs::read(&files[0])?;
    spool.remove_front("folha", 3)?;
    assert_eq!(segments(&dir, "folha")?, files[1..].to_vec());
    drop(spool);
    // The crash came after the new `drained` number, before the deletion.
    fs::write(&files[0], first)?;
    let mut spool = open_spool_with_segments(&dir, 1 << 20, 1)?;
    assert_eq!(segments(&dir, "folha")?, files[1..].to_vec());
    assert_eq!(spool.peek("folha", 10)?, written[3..].to_vec());
    assert_eq!(
        spool.oldest_arrived_ms("folha"),
        Some(written[3].arrived_ms)
    );
    assert_eq!(spool.bytes(), disk_bytes(&dir)?);
    Ok(())
}

#[test]
fn record_numbers_are_not_reused_after_a_portal_is_emptied() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let mut spool = open_spool(&dir, 1 << 20)?;
    spool.append("folha", &records(0, 2, 10))?;
    spool.remove_front("folha", 2)?;
    assert!(segments(&dir, "folha")?.is_empty());
    assert_eq!(spool.bytes(), 0);
    drop(spool);
    // Were the numbers to start again at 0, `drained` (2) would hide the next records.
    let mut spool = open_spool(&dir, 1 << 20)?;
    let later = records(10, 1, 10);
    spool.append("folha", &later)?;
    drop(spool);
    let mut spool = open_spool(&dir, 1 << 20)?;
    assert_eq!(spool.peek("folha", 10)?, later);
    assert_eq!(spool.portals(), vec!["folha".to_string()]);
    Ok(())
}

#[test]
fn a_full_spool_refuses_the_whole_append_and_draining_makes_room() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let one = frame_len(&record(0, 50)) as u64;
    let mut spool = open_spool(&dir, 3 * one)?;
    spool.append("folha", &records(0, 2, 50))?;
    let before = (spool.bytes(), fs::read(&segments(&dir, "folha")?[0])?);

    let refused = spool.append("g1", &records(2, 2, 50));
    match refused {
        Err(error @ SpoolError::Full { .. }) => {
            assert!(error.retryable());
            assert!(error.to_string().contains("drainer frees space"), "{error}");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(spool.portals(), vec!["folha".to_string()]);
    assert_eq!(spool.records("g1"), 0);
    assert_eq!(
        (spool.bytes(), fs::read(&segments(&dir, "folha")?[0])?),
        before
    );

    spool.remove_front("folha", 2)?;
    assert_eq!(spool.bytes(), 0);
    spool.append("g1", &records(2, 3, 50))?;
    assert_eq!(spool.bytes(), 3 * one);
    assert_eq!(spool.peek("g1", 10)?, records(2, 3, 50));
    Ok(())
}

#[test]
fn a_second_spool_on_the_same_directory_is_refused() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let first = open_spool(&dir, 1 << 20)?;
    match Spool::open(&dir, 1 << 20) {
        Err(error @ SpoolError::Lock(_)) => {
            assert!(!error.retryable());
            assert!(error.to_string().contains("in use by"), "{error}");
        }
        other => panic!("expected Lock, got {other:?}"),
    }
    drop(first);
    open_spool(&dir, 1 << 20)?;
    Ok(())
}

#[test]
fn callers_bugs_are_refused_without_touching_the_disk() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let mut spool = open_spool(&dir, 1 << 20)?;
    for bad in ["../escape", "", "Folha", "-x", &"a".repeat(33)] {
        assert!(
            matches!(
                spool.append(bad, &records(0, 1, 1)),
                Err(SpoolError::InvalidPortal { .. })
            ),
            "{bad:?}"
        );
    }
    spool.append("folha", &records(0, 2, 1))?;
    assert!(matches!(
        spool.remove_front("folha", 3),
        Err(SpoolError::RemoveTooMany {
            asked: 3,
            held: 2,
            ..
        })
    ));
    assert!(matches!(
        spool.remove_front("g1", 1),
        Err(SpoolError::RemoveTooMany { held: 0, .. })
    ));
    assert_eq!(spool.records("folha"), 2);
    assert_eq!(spool.peek("nobody", 5)?, Vec::new());
    Ok(())
}

#[test]
fn overlapping_segments_are_reported_as_damage() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let mut spool = open_spool(&dir, 1 << 20)?;
    spool.append("folha", &records(0, 3, 5))?;
    drop(spool);
    let [segment] = segments(&dir, "folha")?
        .try_into()
        .map_err(|_| "one segment")?;
    fs::copy(&segment, dir.join("folha").join(format!("{:020}.spool", 1)))?;
    match open_spool(&dir, 1 << 20) {
        Err(error @ SpoolError::Corrupt { .. }) => {
            assert!(!error.retryable());
            assert!(error.to_string().contains("move it away"), "{error}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}

#[test]
fn records_of_every_size_and_key_round_trip_across_segments() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    let mut spool = open_spool_with_segments(&dir, 1 << 20, 64)?;
    let mut written = vec![
        SpooledRecord {
            partition_key: String::new(),
            data: Vec::new(),
            arrived_ms: 0,
        },
        SpooledRecord {
            partition_key: "usuário-ç".into(),
            data: b"{\"event_id\":\"e\"}".to_vec(),
            arrived_ms: u64::MAX,
        },
    ];
    written.extend(records(5, 20, 30));
    for record in &written {
        spool.append("folha", std::slice::from_ref(record))?;
    }
    assert!(segments(&dir, "folha")?.len() > 1);
    // Peeks in pieces across segment boundaries.
    assert_eq!(spool.peek("folha", 7)?, written[..7].to_vec());
    spool.remove_front("folha", 5)?;
    assert_eq!(spool.peek("folha", 100)?, written[5..].to_vec());
    drop(spool);
    let mut spool = open_spool_with_segments(&dir, 1 << 20, 64)?;
    assert_eq!(spool.peek("folha", 100)?, written[5..].to_vec());
    Ok(())
}

/// The collector shares one spool between its request tasks and the drainer as
/// `Arc<Mutex<Spool>>`, used from `spawn_blocking`.
#[test]
fn a_spool_can_be_shared_between_threads() {
    fn shareable<T: Send + 'static>() {}
    shareable::<Spool>();
    shareable::<std::sync::Arc<std::sync::Mutex<Spool>>>();
}

/// Set (to the spool's directory) in the child process of the `kill -9` test.
const CRASH_CHILD_DIR: &str = "PAGEFLOW_SPOOL_CRASH_CHILD_DIR";
/// The number of the child's first record.
const CRASH_CHILD_FIRST: &str = "PAGEFLOW_SPOOL_CRASH_CHILD_FIRST";

/// The child of [`acknowledged_records_survive_kill_9`]: appends batches of three numbered records
/// and drains five at a time, saying each acknowledged step on stdout, until it is killed.
#[test]
#[ignore = "the child process of acknowledged_records_survive_kill_9, run only by it"]
fn crash_child() -> TestResult {
    use std::io::Write as _;
    let dir = PathBuf::from(std::env::var(CRASH_CHILD_DIR)?);
    let mut next: u64 = std::env::var(CRASH_CHILD_FIRST)?.parse()?;
    let mut spool = open_spool_with_segments(&dir, 1 << 30, 2048)?;
    let mut stdout = std::io::stdout();
    for round in 0u64.. {
        spool.append("folha", &records(next, 3, 60))?;
        next += 3;
        writeln!(stdout, "appended {}", next - 1)?;
        if round % 2 == 1 {
            let drained = spool.peek("folha", 5)?.len();
            spool.remove_front("folha", drained)?;
            writeln!(stdout, "removed {drained}")?;
        }
    }
    Ok(())
}

/// The process killed with SIGKILL at arbitrary points while appending and draining: each time,
/// the spool holds every record whose append was acknowledged and none whose removal was, in
/// order, with no gap, and the next process goes on from there.
#[test]
fn acknowledged_records_survive_kill_9() -> TestResult {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("spool");
    // Records 0..removed are gone for good; removed..=appended are held.
    let (mut removed, mut appended): (u64, Option<u64>) = (0, None);
    for (round, kill_after) in [40usize, 157, 93, 211, 1].into_iter().enumerate() {
        let first = appended.map_or(0, |last| last + 1);
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "commands::collect::spool::tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_CHILD_DIR, &dir)
            .env(CRASH_CHILD_FIRST, first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the child's stdout")?;
        let (mut acked_last, mut acked_removed, mut steps) = (None, 0u64, 0);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(last) = line.strip_prefix("appended ") {
                acked_last = Some(last.parse::<u64>()?);
            } else if let Some(count) = line.strip_prefix("removed ") {
                acked_removed += count.parse::<u64>()?;
            } else {
                continue;
            }
            steps += 1;
            if steps == kill_after {
                child.kill()?;
                break;
            }
        }
        let status = child.wait()?;
        assert!(
            !status.success(),
            "round {round}: the child stopped by itself: {status}"
        );
        removed += acked_removed;
        let acked_last = acked_last.ok_or("the child acknowledged no append")?;

        let mut spool = open_spool_with_segments(&dir, 1 << 30, 2048)?;
        let held = spool.peek("folha", usize::MAX)?;
        let numbers: Vec<u64> = held
            .iter()
            .map(|r| r.partition_key.trim_start_matches("user-").parse())
            .collect::<Result<_, _>>()?;
        let (Some(&oldest), Some(&newest)) = (numbers.first(), numbers.last()) else {
            return Err(format!("round {round}: the spool is empty").into());
        };
        // An unacknowledged removal (at most 5) may or may not have happened; an acknowledged one did.
        assert!(
            (removed..=removed + 5).contains(&oldest),
            "round {round}: oldest {oldest}, {removed} removals acknowledged"
        );
        // An unacknowledged batch (3 records) may or may not be there; an acknowledged one is.
        assert!(
            (acked_last..=acked_last + 3).contains(&newest),
            "round {round}: newest {newest}, {acked_last} acknowledged"
        );
        assert_eq!(
            numbers,
            (oldest..=newest).collect::<Vec<_>>(),
            "round {round}"
        );
        for (record, n) in held.iter().zip(oldest..) {
            assert_eq!(*record, self::record(n, 60), "round {round}");
        }
        assert_eq!(spool.bytes(), disk_bytes(&dir)?);
        removed = oldest;
        appended = Some(newest);
    }
    Ok(())
}
