//! `pageflow bench`: throughput and memory of the graph, printed as figures (never asserted).
//!
//! Stages measured on one pre-generated JSON-lines file:
//! - `read+validate`: the file source and the validator alone, one thread;
//! - `counting+top-N`: window statistics and rankings alone, on events already in memory;
//! - `full graph`: everything `pageflow replay` does, with 1 and with 2 worker threads;
//! - checkpoints: the whole job with checkpoints on and off, and a million live users
//!   checkpointed and restored (see [`super::bench_checkpoints`]).
//!
//! Memory: peak resident set size of the process, and bytes per live key measured as the growth
//! of the resident set while a sessionize state holds many open sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use pageflow_connectors::JsonLinesFile;
use pageflow_dataflow::checkpoint::Checkpointed;
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::event::{CompactEvent, RawRecord, validate};
use pageflow_dataflow::intern::{Article, Portal};
use pageflow_dataflow::operators::rankings::{RankingSpec, Rankings};
use pageflow_dataflow::operators::sessionize::{SessionSpec, SessionizeState};
use pageflow_dataflow::operators::window_stats::{WindowOutput, WindowSpec, WindowStats};
use pageflow_dataflow::source::{PollStatus, RecordSource};
use serde::Serialize;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::vec::Map;

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// Runs every benchmark on `events` synthetic events (generated into `dir` if not there yet).
pub fn run(
    events: u64,
    dir: &Path,
    config: &SemanticsConfig,
    checkpoints_only: bool,
) -> Result<Vec<Figure>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input = dir.join(format!("bench-{events}.jsonl"));
    if !input.exists() {
        eprintln!("generating {events} events into {} …", input.display());
        super::generate::run(
            events,
            &super::generate::GenerateOptions {
                seed: 7,
                ..Default::default()
            },
            &input,
        )?;
    }
    let mut figures = Vec::new();
    let mut record = |name: String, value: f64, unit: &'static str| {
        println!("{name:<56} {value:>12.0} {unit}");
        figures.push(Figure { name, value, unit });
    };

    if checkpoints_only {
        super::bench_checkpoints::run(&input, events, dir, config, &mut record)?;
        return Ok(figures);
    }

    // First, while the heap is still small, so that growth is the state's own.
    for reads in [1, 5] {
        let (keys, rss, accounted) = bytes_per_session(200_000, reads, config);
        record(
            format!("sessionize: bytes per open session of {reads} read(s), RSS ({keys} sessions)"),
            rss,
            "bytes",
        );
        record(
            format!("sessionize: bytes per open session of {reads} read(s), accounted"),
            accounted,
            "bytes",
        );
    }

    let (records, seconds) = read_and_validate(&input)?;
    record(
        "read+validate (1 thread)".into(),
        records as f64 / seconds,
        "events/s",
    );

    let events = load_events(&input)?;
    for (stage, seconds) in stage_times(&events, config) {
        record(
            format!("stage alone: {stage}"),
            events.len() as f64 / seconds,
            "events/s",
        );
    }
    let seconds = counting_and_top_n(&events, config)?;
    record(
        "counting+top-N (1 worker)".into(),
        events.len() as f64 / seconds,
        "events/s",
    );

    for workers in [1, 2] {
        let (_, summary) = super::replay::replay_file(&input, workers, config)?;
        record(
            format!(
                "full graph ({workers} worker{})",
                if workers == 1 { "" } else { "s" }
            ),
            summary.events_per_second,
            "events/s",
        );
    }

    super::bench_checkpoints::run(&input, records, dir, config, &mut record)?;

    if let Some(peak) = peak_rss_bytes() {
        record(
            "peak RSS of the process".into(),
            peak as f64 / (1024.0 * 1024.0),
            "MiB",
        );
    }
    Ok(figures)
}

/// The default place for generated benchmark input.
pub fn default_dir() -> PathBuf {
    PathBuf::from("bench-out")
}

fn read_and_validate(input: &Path) -> Result<(u64, f64)> {
    let mut file = JsonLinesFile::open(input)?;
    let mut buffer: Vec<RawRecord> = Vec::with_capacity(4096);
    let started = Instant::now();
    let mut valid = 0u64;
    let mut total = 0u64;
    loop {
        buffer.clear();
        let status = file.poll(4096, &mut buffer)?;
        for record in &buffer {
            valid += u64::from(validate(&record.bytes).is_ok());
        }
        total += buffer.len() as u64;
        if status == PollStatus::Finished {
            break;
        }
    }
    std::hint::black_box(valid);
    Ok((total, started.elapsed().as_secs_f64()))
}

fn load_events(input: &Path) -> Result<Vec<CompactEvent>> {
    let mut file = JsonLinesFile::open(input)?;
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    loop {
        buffer.clear();
        let status = file.poll(4096, &mut buffer)?;
        events.extend(
            buffer
                .iter()
                .filter_map(|r| validate(&r.bytes).ok().map(|v| CompactEvent::from(&v))),
        );
        if status == PollStatus::Finished {
            break;
        }
    }
    Ok(events)
}

/// Each stateful stage alone, single-threaded, on the events in file order, with the frontier
/// advancing every 4096 events to the watermark as the job would (largest ts − 5 s, in ticks).
fn stage_times(events: &[CompactEvent], config: &SemanticsConfig) -> Vec<(&'static str, f64)> {
    use pageflow_dataflow::operators::dedup::DedupState;
    use pageflow_dataflow::operators::pair_counts::{PairCountsSpec, PairCountsState};
    use pageflow_dataflow::operators::rankings::RankingsState;
    use pageflow_dataflow::operators::related::{RelatedSideInput, RelatedSpec, RelatedState};
    use pageflow_dataflow::operators::sessionize::SessionSpec;
    use pageflow_dataflow::operators::window_stats::WindowStatsState;

    let slide = config.slide.ms();
    let lag = config.max_out_of_orderness.ms();
    let frontiers: Vec<u64> = {
        let mut max = 0;
        events
            .chunks(4096)
            .map(|chunk| {
                max = chunk.iter().map(|e| e.ts).fold(max, u64::max);
                let watermark = max.saturating_sub(lag);
                watermark - watermark % slide
            })
            .collect()
    };
    let mut times = Vec::new();

    let started = Instant::now();
    let mut dedup = DedupState::new(config.dedup_window.ms(), slide);
    let mut accepted = Vec::with_capacity(events.len());
    for (chunk, frontier) in events.chunks(4096).zip(&frontiers) {
        for event in chunk {
            if event.ts >= *frontier && dedup.accept(&event.event_id, event.ts) {
                accepted.push(event.clone());
            }
        }
        dedup.expire(*frontier);
    }
    times.push(("deduplicate", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    let mut sessions = SessionizeState::new(SessionSpec {
        gap: config.session_gap.ms(),
        slide,
        cooc_slide: config.cooc_slide.ms(),
        cooc_recent: config.cooc_recent,
    });
    let (mut closed, mut pairs) = (Vec::new(), Vec::new());
    for (chunk, frontier) in accepted.chunks(4096).zip(&frontiers) {
        for event in chunk {
            sessions.insert(event.clone());
        }
        sessions.advance(*frontier, &mut closed, &mut pairs);
    }
    sessions.advance(u64::MAX, &mut closed, &mut pairs);
    times.push((
        "sessionize (with co-occurrence pairs)",
        started.elapsed().as_secs_f64(),
    ));

    let horizon = accepted
        .iter()
        .map(|e| e.ts - e.ts % slide + slide)
        .max()
        .unwrap_or(0);
    let run_windows = |spec: WindowSpec| {
        let mut state = WindowStatsState::new(spec);
        let mut out = Vec::new();
        for (chunk, frontier) in accepted.chunks(4096).zip(&frontiers) {
            for event in chunk {
                state.insert(event);
            }
            state.advance(*frontier, &mut out);
        }
        state.advance(horizon, &mut out);
        out
    };
    let started = Instant::now();
    let stats = run_windows(WindowSpec {
        window: config.trending_window.ms(),
        step: slide,
        recent: Some(config.trending_recent.ms()),
    });
    times.push((
        "window stats (1 h, recent users)",
        started.elapsed().as_secs_f64(),
    ));

    let started = Instant::now();
    let mut rankings = RankingsState::new(RankingSpec {
        window: config.trending_window.ms(),
        recent: config.trending_recent.ms(),
        slide,
        top_n: config.top_n,
    });
    let mut features = Vec::new();
    rankings.observe_horizon(horizon);
    for change in stats {
        rankings.insert(change);
    }
    rankings.advance(horizon, &mut features);
    times.push(("rankings (top-N)", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    let views = run_windows(WindowSpec {
        window: config.cooc_window.ms(),
        step: config.cooc_slide.ms(),
        recent: None,
    });
    times.push(("window stats (24 h)", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    let mut counts = PairCountsState::new(PairCountsSpec {
        window: config.cooc_window.ms(),
        cooc_slide: config.cooc_slide.ms(),
        slide,
        min_support: config.cooc_min_support,
    });
    let mut changes = Vec::new();
    for count in pairs {
        counts.insert(count);
    }
    counts.advance(u64::MAX, &mut changes);
    times.push(("pair counts (24 h)", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    let mut related = RelatedState::new(RelatedSpec {
        window: config.cooc_window.ms(),
        cooc_slide: config.cooc_slide.ms(),
        slide,
        top_n: config.top_n,
        min_support: config.cooc_min_support,
        interval: config.related_interval.ms(),
    });
    for change in changes {
        related.insert_cooc(change);
    }
    for change in views {
        related.insert_side(RelatedSideInput::Views(change));
    }
    related.insert_side(RelatedSideInput::Horizon(horizon));
    let mut out = Vec::new();
    related.finish(&mut out);
    times.push(("related", started.elapsed().as_secs_f64()));
    std::hint::black_box((&features, &out, &closed));
    times
}

/// Window statistics and rankings alone, fed pre-parsed events in event-time order of ticks.
fn counting_and_top_n(events: &[CompactEvent], config: &SemanticsConfig) -> Result<f64> {
    let slide = config.slide.ms();
    let events = Arc::new(events.to_vec());
    let spec = WindowSpec {
        window: config.trending_window.ms(),
        step: slide,
        recent: Some(config.trending_recent.ms()),
    };
    let cooc_spec = WindowSpec {
        window: config.cooc_window.ms(),
        step: config.cooc_slide.ms(),
        recent: None,
    };
    let ranking = RankingSpec {
        window: config.trending_window.ms(),
        recent: config.trending_recent.ms(),
        slide,
        top_n: config.top_n,
    };
    let started = Instant::now();
    timely::execute(timely::Config::thread(), move |worker| {
        let mut input = InputHandle::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let stream = input.to_stream(scope);
            let horizon = stream
                .clone()
                .map(move |event: CompactEvent| event.ts - event.ts % slide + slide);
            let states = pageflow_dataflow::checkpoint::OperatorStates::default();
            stream
                .window_stats(spec, cooc_spec, slide, None, &states)
                .flat_map(|output| match output {
                    WindowOutput::Trending(stats) => Some(stats),
                    WindowOutput::CoocViews(_) => None,
                })
                .rankings(horizon, ranking, &states)
                .probe()
                .0
        });
        let mut max_ts = 0;
        for chunk in events.chunks(10_000) {
            for event in chunk {
                max_ts = max_ts.max(event.ts);
                input.send(event.clone());
            }
            // The watermark trails the newest event, as in the job.
            let watermark = max_ts.saturating_sub(5_000);
            let tick = watermark - watermark % slide;
            if tick > *input.time() {
                input.advance_to(tick);
            }
            while probe.less_than(input.time()) {
                worker.step();
            }
        }
    })
    .map_err(|e| anyhow::anyhow!(e))?
    .join()
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Grows a sessionize state to `keys` open sessions and reports the RSS growth per key.
/// Bytes per open session: `keys` readers each with an open session of `reads` distinct
/// articles, measured as the growth of the resident set and as the state's own accounting.
fn bytes_per_session(keys: u64, reads: u64, config: &SemanticsConfig) -> (u64, f64, f64) {
    let before = current_rss_bytes().unwrap_or(0);
    let slide = config.slide.ms();
    let mut state = SessionizeState::new(SessionSpec {
        gap: config.session_gap.ms(),
        slide,
        cooc_slide: config.cooc_slide.ms(),
        cooc_recent: config.cooc_recent,
    });
    let (mut closed, mut pairs) = (Vec::new(), Vec::new());
    let start = 1_795_435_200_000u64;
    let g1 = Portal::intern("g1");
    let articles: Vec<Article> = (0..2_000)
        .map(|n| Article::intern(g1, &format!("g1/politica/noticia-{n:05}")))
        .collect();
    let mut ts = start;
    for read in 0..reads {
        for user in 0..keys {
            ts += 1;
            state.insert(CompactEvent {
                event_id: format!("e{user}-{read}").into(),
                user_id: format!("u-{user:08}").into(),
                article: articles[((user + read * 7) % 2_000) as usize],
                ts,
                dwell_ms: 1000,
                clicks: 0,
                scroll_pct: 50,
            });
            if ts.is_multiple_of(4096) {
                state.advance(ts - ts % slide, &mut closed, &mut pairs);
                pairs.clear();
            }
        }
    }
    state.advance(ts - ts % slide + slide, &mut closed, &mut pairs);
    let after = current_rss_bytes().unwrap_or(0);
    let accounted = state.size().bytes as f64 / state.open_sessions().max(1) as f64;
    std::hint::black_box((&state, &closed, &pairs));
    (
        state.open_sessions() as u64,
        after.saturating_sub(before) as f64 / keys as f64,
        accounted,
    )
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn current_rss_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

fn peak_rss_bytes() -> Option<u64> {
    status_field("VmHWM:")
}
