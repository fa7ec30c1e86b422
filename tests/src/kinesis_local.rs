//! A realistic local Kinesis for integration tests: kinesis-local (kinesis-mock built for Node) on
//! loopback.
//!
//! moto (see [`crate::aws`]) is fine for polling, Firehose and S3, but its Kinesis has short
//! sequence numbers, cosmetic resharding and no `SubscribeToShard`. kinesis-local has 56-digit
//! sequence numbers, closed parents that end with `ChildShards`, and enhanced fan-out as an event
//! stream over plain HTTP. Each test starts its own [`KinesisLocal`] (about a second) and points a
//! Kinesis client at [`KinesisLocal::endpoint`] (`crate::clients::kinesis_client` takes it).
//!
//! The server is `scripts/aws-local/node_modules/kinesis-local/main.js`, installed from npm by
//! `scripts/aws-local/install.sh`. Every simulated delay (`CREATE_STREAM_DURATION` and the other
//! `*_DURATION` variables, 500 ms by default) is set to zero, so that a stream, a consumer or a
//! reshard is `ACTIVE` as soon as the call returns and tests await nothing but records.
//!
//! Only `std` is used, like [`crate::aws`].

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::aws::{TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY, drain_into};
use crate::aws::{await_http_ready, workspace_root};

/// How long the server may take to answer `GET /healthcheck` with 200 (it takes about a second; a
/// cold, busy 2-core machine running other tests is slower).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The variables that delay a simulated state change (`CREATING` → `ACTIVE` and so on); all 0 ms.
/// These are every `*_DURATION` variable kinesis-local 0.6.2 reads.
pub const DURATION_VARIABLES: [&str; 10] = [
    "CREATE_STREAM_DURATION",
    "DELETE_STREAM_DURATION",
    "REGISTER_STREAM_CONSUMER_DURATION",
    "DEREGISTER_STREAM_CONSUMER_DURATION",
    "START_STREAM_ENCRYPTION_DURATION",
    "STOP_STREAM_ENCRYPTION_DURATION",
    "MERGE_SHARDS_DURATION",
    "SPLIT_SHARD_DURATION",
    "UPDATE_SHARD_COUNT_DURATION",
    "UPDATE_STREAM_MODE_DURATION",
];

/// Runs kinesis-local's `main.js` (its path is the argument) and exits when standard input ends:
/// the test process holds the pipe, so if it dies without running `Drop` (killed, aborted), the
/// server does not outlive it.
const EXIT_WITH_STDIN: &str = "process.stdin.on('end', () => process.exit(0)); \
     process.stdin.on('error', () => process.exit(0)); \
     process.stdin.resume(); \
     require(process.argv[1]);";

/// A kinesis-local server, serving until dropped; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct KinesisLocal {
    /// `http://127.0.0.1:<plain port>`: the endpoint of Kinesis clients of this server (the value
    /// of `AWS_ENDPOINT_URL_KINESIS` for processes).
    pub endpoint: String,
    port: u16,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl KinesisLocal {
    /// Starts a server on free ports and returns once `GET /healthcheck` answers 200.
    ///
    /// Fails with what to do when Node or the package is missing, and with the server's own output
    /// when it exits or is not ready within 60 s. Free ports are picked by binding port 0 and
    /// closing it again; if another process takes one in between, the start is tried once more
    /// with new ports.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with some of the server's variables set otherwise, e.g.
    /// `("REGISTER_STREAM_CONSUMER_DURATION", "30s")` to keep a new consumer `CREATING` for 30 s.
    pub fn start_with(variables: &[(&str, &str)]) -> Result<Self, String> {
        match Self::start_once(variables) {
            Err(StartError::PortTaken(first)) => Self::start_once(variables).map_err(|second| {
                format!(
                    "{}\n(the first try had failed too, its port taken: {first})",
                    second.message()
                )
            }),
            other => other.map_err(|e| e.message()),
        }
    }

    fn start_once(variables: &[(&str, &str)]) -> Result<Self, StartError> {
        let root = workspace_root();
        let package = package_dir();
        let main = package.join("main.js");
        if !main.is_file() {
            return Err(StartError::Other(format!(
                "kinesis-local is not installed ({} does not exist): run \
                 `bash scripts/aws-local/install.sh` from {} (or the README's test command, \
                 `bash scripts/test.sh`, which runs it)",
                main.display(),
                root.display()
            )));
        }
        let (plain_port, tls_port) = free_port_pair().map_err(|e| {
            StartError::Other(format!(
                "could not find two free TCP ports for kinesis-local: {e}"
            ))
        })?;

        let mut command = Command::new("node");
        command
            .args(["-e", EXIT_WITH_STDIN])
            .arg(&main)
            // Its TLS certificate (`server.json`) is found relative to the working directory.
            .current_dir(&package)
            .env("KINESIS_MOCK_PLAIN_PORT", plain_port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            .env("KINESIS_MOCK_CERT_PATH", package.join("server.json"))
            // Deterministic whatever the developer's environment holds.
            .env("AWS_REGION", TEST_REGION)
            .env("AWS_ACCOUNT_ID", "000000000000")
            .env("SHOULD_PERSIST_DATA", "false")
            .env("LOAD_DATA_IF_EXISTS", "false")
            .env_remove("INITIALIZE_STREAMS")
            // Warnings are the failed requests: what a failing test wants to see.
            .env("LOG_LEVEL", "WARN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for variable in DURATION_VARIABLES {
            command.env(variable, "0ms");
        }
        for (name, value) in variables {
            command.env(name, value);
        }
        let mut child = command.spawn().map_err(|e| {
            StartError::Other(if e.kind() == std::io::ErrorKind::NotFound {
                "`node` is not installed or not on PATH: install Node.js 18 or later (Debian: \
                 apt-get install -y nodejs npm), then run `bash scripts/aws-local/install.sh`"
                    .to_string()
            } else {
                format!("could not start node {}: {e}", main.display())
            })
        })?;

        let output = Arc::new(Mutex::new(Vec::new()));
        let (drained_tx, drained_rx) = mpsc::channel();
        let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ];
        let mut drains = 0;
        for pipe in pipes.into_iter().flatten() {
            let output = Arc::clone(&output);
            let drained_tx = drained_tx.clone();
            drains += 1;
            // Keep draining so that the server never blocks on a full pipe.
            thread::spawn(move || {
                drain_into(pipe, &output);
                let _ = drained_tx.send(());
            });
        }

        let mut server = KinesisLocal {
            endpoint: format!("http://127.0.0.1:{plain_port}"),
            port: plain_port,
            child,
            output,
        };
        match server.await_ready() {
            Ok(()) => Ok(server),
            Err(what) => {
                // Kill and reap it, then let the drain threads reach end of file (bounded) so
                // that its output is complete.
                server.stop();
                let deadline = Instant::now() + Duration::from_secs(2);
                for _ in 0..drains {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if drained_rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                let output = server.output();
                let message = format!(
                    "kinesis-local (node {}, plain port {plain_port}, TLS port {tls_port}) {what}; \
                     check that `bash scripts/aws-local/install.sh` succeeds and that \
                     `node --version` is 18 or later; its output:\n{output}",
                    main.display()
                );
                if output.contains("EADDRINUSE") {
                    Err(StartError::PortTaken(message))
                } else {
                    Err(StartError::Other(message))
                }
            }
        }
    }

    /// Polls `GET /healthcheck` until it answers 200, the process exits, or the deadline passes.
    fn await_ready(&mut self) -> Result<(), String> {
        await_http_ready(self.port, "/healthcheck", &mut self.child, READY_TIMEOUT)
    }

    /// The plain HTTP port on `127.0.0.1` (kinesis-local listens on every interface).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment that points AWS SDK processes' Kinesis clients (only those) at this server:
    /// `AWS_ENDPOINT_URL_KINESIS`, test credentials and `AWS_REGION`. Other services keep
    /// `AWS_ENDPOINT_URL` (a moto server, see [`crate::aws::aws_env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_KINESIS", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY),
            ("AWS_REGION", TEST_REGION),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
    }

    /// What the server has written so far (its last 64 KiB): warnings about failed requests and
    /// errors; successful requests are not logged.
    pub fn output(&self) -> String {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&output).into_owned()
    }

    fn stop(&mut self) {
        // Already exited is fine: `kill` then fails and `wait` returns the status.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why one start failed: a port taken between picking and binding it (worth one more try), or
/// anything else.
#[derive(Debug)]
enum StartError {
    PortTaken(String),
    Other(String),
}

impl StartError {
    fn message(self) -> String {
        match self {
            StartError::PortTaken(message) | StartError::Other(message) => message,
        }
    }
}

/// Where `scripts/aws-local/install.sh` installs the package.
fn package_dir() -> PathBuf {
    workspace_root()
        .join("scripts")
        .join("aws-local")
        .join("node_modules")
        .join("kinesis-local")
}

/// Two distinct free ports. Both listeners are held until both are known, then closed; the
/// unspecified address is probed because kinesis-local binds every interface.
fn free_port_pair() -> std::io::Result<(u16, u16)> {
    let first = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let second = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}
