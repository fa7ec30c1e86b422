//! The `pageflow` command line.

use std::io::Write as _;
use std::path::PathBuf;

// The operators allocate many small strings and maps across worker threads; glibc's allocator
// spent a large share of the time consolidating and splitting chunks (see README, Benchmarks).
// Counted, so that benchmarks and `/metrics` can tell live heap from resident set.
#[global_allocator]
static ALLOCATOR: pageflow_metrics::heap::Counting<mimalloc::MiMalloc> =
    pageflow_metrics::heap::Counting(mimalloc::MiMalloc);
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use pageflow::commands;
use pageflow::config;

/// pageflow: a real-time pageview pipeline for news portals.
///
/// It turns pageview beacons into user sessions, popular and trending rankings and related
/// articles, continuously, and serves them over HTTP. With no configuration, `pageflow run` starts
/// the embedded default: synthetic traffic for three portals, results under ./pageflow-data/, and
/// the live rankings on http://127.0.0.1:8080/.
#[derive(Debug, Parser)]
#[command(name = "pageflow", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the long-running job (the embedded default when no --config is given).
    ///
    /// Settings come from the TOML file, then from PAGEFLOW__SECTION__KEY environment variables
    /// (for example PAGEFLOW__SEMANTICS__TOP_N=20); every problem is reported at start-up.
    Run {
        /// A TOML configuration file (see README "Configuration").
        #[arg(long)]
        config: Option<PathBuf>,
        /// This process's index in [cluster] addresses (overrides `process` there and
        /// PAGEFLOW__CLUSTER__PROCESS).
        #[arg(long)]
        process: Option<usize>,
    },
    /// Serve the HTTP API from the features stream the job writes (the read-only serving tier).
    ///
    /// Any number of these run beside the job and scale with the API's traffic: each follows
    /// [sinks.kinesis] stream (from [serving_tier] start_position, by default all it retains) and
    /// answers the same routes as the job's own HTTP, with final rankings only.
    Serve {
        /// A TOML configuration file ([sinks.kinesis], [serve], [serving_tier], [aws]).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Collect the portals' pageview beacons over HTTP and write them to their Kinesis streams.
    ///
    /// `POST /v1/collect` takes a JSON array of pageviews or one per line (at most 500 and 1 MiB),
    /// validates each as the job does and answers once every accepted event is in its portal's
    /// stream (partition key user_id).
    Collect {
        /// A TOML configuration file ([collect] with its [[collect.portals]], [aws], [log]).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the graph over a JSON-lines file as fast as possible, deterministically.
    ///
    /// Writes OUT/features.jsonl, OUT/dead-letter.jsonl and OUT/summary.json. The same input gives
    /// the same files byte for byte, whatever the number of workers. With [sinks] curated (the
    /// default), also the curated Parquet tables under OUT/curated/.
    Replay {
        /// The pageviews, one JSON object per line.
        #[arg(long)]
        input: PathBuf,
        /// The directory to write results to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// A TOML configuration file; only its [semantics] and [cluster] sections, and [sinks]
        /// curated (false: no OUT/curated/), are used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run as one of several processes of one dataflow: every process's host:port, the same
        /// list everywhere (comma-separated; overrides [cluster] addresses). Each process writes
        /// its share under OUT/process-<i>/.
        #[arg(long, value_delimiter = ',')]
        addresses: Vec<String>,
        /// This process's index in the addresses.
        #[arg(long)]
        process: Option<usize>,
    },
    /// Run the graph over the raw archive, hour by hour, as replay runs it over a file.
    ///
    /// Reads raw/portal=*/date=*/hour=*/ of a local archive or an S3 prefix in event-time order
    /// (date, hour; within an hour by portal, then file name, then line) and writes
    /// OUT/features.jsonl, OUT/dead-letter.jsonl and OUT/summary.json as replay does: the features
    /// of `pageflow replay` over the same records in that order, byte for byte, and, since the raw
    /// layer holds the events the job counted, the original run's features. The archive holds
    /// each hour portal by portal, so max_out_of_orderness is raised to at least 1h (which changes
    /// when results are final, not what they are). See README "Backfill from the archive".
    Backfill {
        /// The archive: a directory holding raw/ (or a sinks directory holding archive/raw/), or
        /// s3://BUCKET/PREFIX where PREFIX holds raw/ ([aws] of --config for the endpoint).
        #[arg(long)]
        from: String,
        /// The directory to write results to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Only this portal's events.
        #[arg(long)]
        portal: Option<String>,
        /// Only hours on or after this UTC date (YYYY-MM-DD).
        #[arg(long)]
        from_date: Option<commands::backfill::layout::Date>,
        /// Only hours on or before this UTC date (YYYY-MM-DD, inclusive).
        #[arg(long)]
        to_date: Option<commands::backfill::layout::Date>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// A TOML configuration file; only its [semantics] and [aws] sections are used.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write synthetic pageviews (news traffic with sessions, topics and spikes) as JSON lines.
    Generate {
        /// How many lines to write.
        #[arg(long)]
        events: u64,
        /// The random seed: the same seed gives the same file.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Share of malformed lines (0 to 1), to exercise the dead-letter output.
        #[arg(long, default_value_t = 0.0)]
        invalid_share: f64,
        /// Events per second of event time: the file spans `events / rate` seconds.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Distinct readers; by default enough for the rate (750 per event per second, at least
        /// 50,000), so that readers' sessions stay apart as on a real site.
        #[arg(long)]
        users: Option<u32>,
    },
    /// Prepare AWS (or the local emulators) for AWS mode: create streams, publish pageviews.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Measure throughput and memory and print the figures.
    Bench {
        /// Events in the generated input.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Where to keep the generated input.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only the checkpoint figures (on vs off, a million live users saved and restored).
        #[arg(long)]
        checkpoints_only: bool,
        /// Only the serving layer under HTTP load (needs `wrk`) while the job ingests.
        #[arg(long)]
        serve: bool,
        /// Serving and collector benchmarks: seconds of load per scenario.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Serving benchmark: open connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Only the soak: the job over hours of synthetic event time (virtual time, as fast as
        /// it goes), with checkpoints, printing memory, state and checkpoint costs per event-hour.
        #[arg(long)]
        soak: bool,
        /// Soak: events per second of event time.
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        /// Soak: hours of event time (more than 24 to see the day-long windows full).
        #[arg(long, default_value_t = 30.0)]
        hours: f64,
        /// Soak: worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Soak: a checkpoint every this much event time (a live job's interval at the same rate).
        #[arg(long, default_value = "30s")]
        checkpoint_every: String,
        /// Soak: also write the raw/processed/dead-letter archive (about 35 GB a day at 2,000/s).
        #[arg(long)]
        archive: bool,
        /// Only the cluster figures: `pageflow run` over the generated input (split into --files
        /// files by reader) as each of --shapes, processes of this machine on loopback.
        #[arg(long)]
        cluster: bool,
        /// Cluster: the shapes to compare, PROCESSESxTHREADS, comma-separated.
        #[arg(long, default_value = "1x2,2x1")]
        shapes: String,
        /// Cluster: files the input is split into, by reader (each is one source partition).
        #[arg(long, default_value_t = 4)]
        files: usize,
        /// Only the collector under load: accepted events/s and latency percentiles of
        /// `pageflow collect` on loopback (--seconds, --clients, --batch, --backend).
        #[arg(long)]
        collect: bool,
        /// Collector benchmark: concurrent keep-alive clients.
        #[arg(long, default_value_t = 16)]
        clients: u32,
        /// Collector benchmark: events per request.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Collector benchmark: the Kinesis behind it, comma-separated: `kinesis-local`
        /// (the tests' emulator), `noop` (answers every PutRecords at once: the collector's own
        /// cost), or a Kinesis endpoint URL already running.
        #[arg(long, default_value = "kinesis-local,noop")]
        backend: String,
    },
    /// List the job's checkpoints (newest first) with their state: committed, torn or corrupt.
    Checkpoints {
        /// The TOML configuration of the job ([checkpoint], and [aws] for an S3 store).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AwsCommand {
    /// Create the streams, bucket and delivery streams the configuration names (idempotent).
    ///
    /// For the local emulators and sandbox accounts; production uses deploy/.
    Setup {
        /// The TOML configuration of the job ([source.kinesis], [sinks.kinesis], [sinks.firehose], [aws]).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Shards of every stream created.
        #[arg(long, default_value_t = 2)]
        shards: i32,
        /// The archive's S3 bucket.
        #[arg(long, default_value = "pageflow-archive")]
        bucket: String,
        /// The role Firehose assumes to write the bucket.
        #[arg(
            long,
            default_value = "arn:aws:iam::123456789012:role/pageflow-firehose"
        )]
        firehose_role_arn: String,
    },
    /// Publish a JSON-lines file of pageviews into the portals' streams (partition key user_id).
    Put {
        /// The TOML configuration of the job ([source.kinesis], [aws]).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The pageviews, one JSON object per line.
        #[arg(long)]
        input: PathBuf,
    },
}

impl Cli {
    /// The configuration file the command reads, if it reads one.
    fn config_path(&self) -> Option<&std::path::Path> {
        match &self.command {
            Command::Run { config, .. }
            | Command::Replay { config, .. }
            | Command::Backfill { config, .. }
            | Command::Checkpoints { config }
            | Command::Serve { config }
            | Command::Aws(AwsCommand::Setup { config, .. } | AwsCommand::Put { config, .. }) => {
                config.as_deref()
            }
            Command::Collect { config } => Some(config.as_path()),
            Command::Generate { .. } | Command::Bench { .. } => None,
        }
    }
}

/// Starts the `tracing` log on standard error as `[log]` says: text or one JSON object per line
/// (`timestamp`, `level`, `target`, `message` and the event's fields at the top level), filtered
/// by `RUST_LOG` if set, else by `level`.
fn start_logging(log: &config::LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log.filter())
        .with_writer(|| pageflow::stderr::LossyStderr);
    match log.format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn main() -> ExitCode {
    pageflow_metrics::heap::release_freed_memory_promptly();
    let cli = Cli::parse();
    // The log starts before the configuration is validated (which may log), so its section is
    // read first on its own; `load` reports its problems with the others.
    start_logging(&config::load_log(cli.config_path(), std::env::vars()));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            pageflow::say!("pageflow: {}", pageflow::stderr::describe(&error));
            // A checkpoint that cannot be used needs a person, not a restart: a distinct code
            // (EX_CONFIG) lets the supervisor tell it apart from a crash.
            if error
                .downcast_ref::<pageflow::checkpoints::UnusableCheckpoint>()
                .is_some()
            {
                return ExitCode::from(78);
            }
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<config::JobConfig> {
    load_config_with(path, None)
}

/// The configuration, with `--process` (when given) over the file and the environment.
fn load_config_with(
    path: Option<&std::path::Path>,
    process: Option<usize>,
) -> Result<config::JobConfig> {
    let process = process.map(|p| ("PAGEFLOW__CLUSTER__PROCESS".to_string(), p.to_string()));
    config::load(path, std::env::vars().chain(process)).map_err(|problems| {
        anyhow::anyhow!(
            "the configuration has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, process } => {
            commands::run::run(load_config_with(config.as_deref(), process)?)
        }
        Command::Serve { config } => commands::serve::run(load_config(config.as_deref())?),
        Command::Collect { config } => commands::collect::run(load_config(Some(&config))?),
        Command::Replay {
            input,
            out,
            workers,
            config,
            addresses,
            process,
        } => {
            // `--process` goes with `--addresses`; alone, it picks this process of [cluster].
            let process_in_config = if addresses.is_empty() { process } else { None };
            let config = load_config_with(config.as_deref(), process_in_config)?;
            let cluster = if addresses.is_empty() {
                config.cluster.clone()
            } else {
                let cluster = pageflow::cluster::ClusterConfig {
                    addresses,
                    process: process.unwrap_or(0),
                    ..config.cluster.clone()
                };
                let mut problems = Vec::new();
                cluster.validate(&mut problems);
                if !problems.is_empty() {
                    anyhow::bail!("--addresses/--process: {}", problems.join("; "));
                }
                cluster
            };
            let summary = commands::replay::run(
                &input,
                &out,
                workers,
                &config.semantics,
                &cluster,
                config.sinks.curated_enabled(),
            )?;
            // A closed standard output (`| head`) loses the summary; it must not panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&summary)?
            );
            Ok(())
        }
        Command::Backfill {
            from,
            out,
            portal,
            from_date,
            to_date,
            workers,
            config,
        } => {
            let config = load_config(config.as_deref())?;
            let options = commands::backfill::BackfillOptions {
                from,
                out,
                filters: commands::backfill::layout::Filters {
                    portal,
                    from_date,
                    to_date,
                },
                workers,
            };
            let summary = commands::backfill::run(&options, &config)?;
            // A closed standard output (`| head`) loses the summary; it must not panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&summary)?
            );
            Ok(())
        }
        Command::Generate {
            events,
            seed,
            out,
            invalid_share,
            rate,
            users,
        } => {
            let options = commands::generate::GenerateOptions {
                seed,
                invalid_share,
                rate,
                users,
            };
            let written = commands::generate::run(events, &options, &out)?;
            pageflow::say!("wrote {written} pageviews to {}", out.display());
            Ok(())
        }
        Command::Aws(AwsCommand::Setup {
            config,
            shards,
            bucket,
            firehose_role_arn,
        }) => {
            let config = load_config(config.as_deref())?;
            let options = commands::aws::SetupOptions {
                shards,
                bucket,
                firehose_role_arn,
            };
            for created in commands::aws::setup(&config, &options)? {
                pageflow::say!("created {created}");
            }
            Ok(())
        }
        Command::Aws(AwsCommand::Put { config, input }) => {
            let config = load_config(config.as_deref())?;
            let written = commands::aws::put(&config, &input)?;
            pageflow::say!("wrote {written} records from {}", input.display());
            Ok(())
        }
        Command::Checkpoints { config } => {
            let config = load_config(config.as_deref())?;
            print!("{}", commands::checkpoints::list(&config)?);
            Ok(())
        }
        Command::Bench {
            collect: true,
            seconds,
            clients,
            batch,
            backend,
            ..
        } => {
            let backends = commands::bench_collect::parse_backends(&backend)
                .map_err(|problem| anyhow::anyhow!("--backend: {problem}"))?;
            commands::bench_collect::run(&commands::bench_collect::CollectBenchSettings {
                seconds,
                clients,
                batch,
                backends,
            })?;
            Ok(())
        }
        Command::Bench {
            serve: true,
            seconds,
            connections,
            ..
        } => {
            commands::bench_serve::run(commands::bench_serve::LoadSettings {
                seconds,
                connections,
                ..commands::bench_serve::LoadSettings::default()
            })?;
            Ok(())
        }
        Command::Bench {
            cluster: true,
            events,
            dir,
            shapes,
            files,
            ..
        } => {
            let shapes = commands::bench_cluster::parse_shapes(&shapes)
                .map_err(|problem| anyhow::anyhow!("--shapes: {problem}"))?;
            if files == 0 {
                anyhow::bail!(
                    "--files must be at least 1 (the input is split into that many files)"
                );
            }
            commands::bench_cluster::run(&commands::bench_cluster::ClusterBenchSettings {
                events,
                dir: dir.unwrap_or_else(commands::bench::default_dir),
                shapes,
                files,
            })?;
            Ok(())
        }
        Command::Bench {
            soak: true,
            rate,
            hours,
            workers,
            checkpoint_every,
            archive,
            dir,
            ..
        } => {
            let config = load_config(None)?;
            let every = pageflow_dataflow::config::Millis::parse(&checkpoint_every)
                .map_err(|problem| anyhow::anyhow!("--checkpoint-every: {problem}"))?;
            let settings = commands::bench_soak::SoakSettings {
                rate,
                hours,
                workers: workers.max(1),
                checkpoint_every: every,
                archive,
                dir: dir
                    .unwrap_or_else(commands::bench::default_dir)
                    .join("soak"),
                semantics: config.semantics,
            };
            commands::bench_soak::run(&settings)?;
            Ok(())
        }
        Command::Bench {
            events,
            dir,
            checkpoints_only,
            ..
        } => {
            let config = load_config(None)?;
            let dir = dir.unwrap_or_else(commands::bench::default_dir);
            commands::bench::run(events, &dir, &config.semantics, checkpoints_only)?;
            Ok(())
        }
    }
}
