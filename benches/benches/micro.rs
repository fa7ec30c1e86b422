//! Micro benchmarks of the hot paths: validation of one record, an incremental top-N update, and a
//! sessionize insert + advance.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pageflow_connectors::batch::{
    BatchApi, BatchLimits, CallFailure, EntryOutcome, OutRecord, RetryPolicy, deliver,
};
use pageflow_connectors::kinesis::kpl::{Deaggregated, aggregate, deaggregate};
use pageflow_dataflow::event::{CompactEvent, validate};
use pageflow_dataflow::features::{Feature, RankedItem, RankingKind};
use pageflow_dataflow::intern::Article;
use pageflow_dataflow::operators::sessionize::{SessionSpec, SessionizeState};
use pageflow_dataflow::operators::top_n::{Descending, TopN};
use std::hint::black_box;

const RECORD: &[u8] = br#"{"event_id":"7f1c2a9e-0001","portal":"g1","user_id":"u-48213","article_id":"g1/politica/2026/11/23/eleicao-resultado","ts":1795435200000,"dwell_ms":42000,"scroll_pct":80,"clicks":1,"device":"mobile"}"#;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Bytes(RECORD.len() as u64));
    group.bench_function("schema example record", |b| {
        b.iter(|| validate(black_box(RECORD)).is_ok())
    });
    group.finish();
}

fn top_n(c: &mut Criterion) {
    let mut ranking: TopN<u32, Descending<u64>> = TopN::default();
    for article in 0..2_000u32 {
        ranking.upsert(article, Descending(u64::from(article % 97)));
    }
    let mut step = 0u64;
    c.bench_function("top_n upsert among 2000 + read top 50", |b| {
        b.iter(|| {
            step += 1;
            ranking.upsert((step % 2_000) as u32, Descending(step % 1_000));
            black_box(ranking.top(50).count())
        })
    });
}

fn sessionize(c: &mut Criterion) {
    let articles: Vec<Article> = (0..300)
        .map(|n| Article::intern_names("g1", &format!("a{n}")))
        .collect();
    let events: Vec<CompactEvent> = (0..10_000u64)
        .map(|n| CompactEvent {
            event_id: format!("e{n}").into(),
            user_id: format!("u{}", n % 1_000).into(),
            article: articles[(n % 300) as usize],
            ts: 1_795_435_200_000 + n * 100,
            dwell_ms: 0,
            clicks: 0,
            scroll_pct: 0,
        })
        .collect();
    c.bench_function("sessionize (with pairs) 10k events of 1k users", |b| {
        b.iter(|| {
            let mut state = SessionizeState::new(SessionSpec {
                gap: 30 * 60_000,
                slide: 60_000,
                cooc_slide: 600_000,
                cooc_recent: 10,
            });
            for event in &events {
                state.insert(event.clone());
            }
            let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
            state.advance(u64::MAX, &mut sessions, &mut pairs);
            black_box((sessions.len(), pairs.len()))
        })
    });
}

/// A batch API that accepts everything at once: what remains is pageflow's own batching cost.
struct AcceptAll;

impl BatchApi for AcceptAll {
    fn destination(&self) -> String {
        "in-process".into()
    }
    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_records: 500,
            max_batch_bytes: 5 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
        }
    }
    fn entry_size(&self, record: &OutRecord) -> usize {
        record.data.len() + record.partition_key.len()
    }
    fn retryable_code(&self, _code: &str) -> bool {
        false
    }
    async fn put_batch(&self, batch: &[OutRecord]) -> Result<Vec<EntryOutcome>, CallFailure> {
        Ok(vec![EntryOutcome::Written; batch.len()])
    }
}

fn connectors(c: &mut Criterion) {
    let users: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            RECORD
                .iter()
                .copied()
                .chain(format!("{i}").into_bytes())
                .collect()
        })
        .collect();
    let input: Vec<(&str, &[u8])> = users.iter().map(|u| ("u-48213", u.as_slice())).collect();
    let packed = aggregate(&input);
    let mut group = c.benchmark_group("connectors");
    group.throughput(Throughput::Elements(100));
    group.bench_function("KPL de-aggregation, 100 user records", |b| {
        b.iter(|| matches!(deaggregate(black_box(&packed)), Deaggregated::Aggregated(_)))
    });

    let feature = Feature::ranking(
        RankingKind::Popular,
        "g1",
        0,
        60_000,
        (0..50)
            .map(|i| RankedItem {
                article_id: format!("g1/politica/noticia-{i:05}"),
                views: 100 - i,
                engaged_views: i,
                score: 1.5,
            })
            .collect(),
    );
    group.throughput(Throughput::Elements(1));
    group.bench_function("feature serialisation (popular, 50 items)", |b| {
        b.iter(|| black_box(&feature).to_json().len())
    });

    let records: Vec<OutRecord> = (0..1_000)
        .map(|i| OutRecord {
            partition_key: format!("u{i}"),
            data: RECORD.to_vec(),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    if let Ok(runtime) = runtime {
        group.throughput(Throughput::Elements(1_000));
        group.bench_function("batching 1000 records into PutRecords calls", |b| {
            b.iter(|| {
                runtime
                    .block_on(deliver(&AcceptAll, records.clone(), RetryPolicy::default()))
                    .written
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validation, top_n, sessionize, connectors);
criterion_main!(benches);
