//! Local AWS APIs for integration tests: a moto server (Kinesis, Firehose, S3, DynamoDB) on loopback.
//!
//! Each test starts its own [`MotoServer`] on a free port (under a second) and points its AWS
//! clients, or the processes it starts, at it with [`aws_env`]. The server is
//! `scripts/aws-local/moto_server.py`, run by the virtualenv that `scripts/aws-local/install.sh`
//! makes at `<workspace>/.venv-aws` (the README's test command, `bash scripts/test.sh`, runs it).
//! It serves from one thread: moto's threaded server loses Kinesis records under concurrent writers.
//!
//! Only `std` is used here, so that the harness works whatever AWS client a test brings.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to print its port (importing moto on a cold, busy machine).
const PORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to answer `GET /moto-api/` with 200 once it has printed its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of the server's own output (stdout and stderr) kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// The access key, secret key and region that tests use against a local server.
pub const TEST_ACCESS_KEY_ID: &str = "testing";
pub const TEST_SECRET_ACCESS_KEY: &str = "testing";
pub const TEST_REGION: &str = "us-east-1";

/// A moto server on `127.0.0.1`, serving until dropped; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`: the value of `AWS_ENDPOINT_URL` for clients of this server.
    pub endpoint: String,
    port: u16,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl MotoServer {
    /// Starts a server on a free loopback port and returns once `GET /moto-api/` answers 200.
    ///
    /// Fails with what to do when the virtualenv is missing, and with the server's own output when
    /// it exits, prints no port within 30 s, or is not ready within 30 s after that.
    pub fn start() -> Result<Self, String> {
        let root = workspace_root();
        let python = root.join(".venv-aws").join("bin").join("python");
        let script = root
            .join("scripts")
            .join("aws-local")
            .join("moto_server.py");
        if !python.is_file() {
            return Err(format!(
                "the local AWS server's virtualenv is missing ({} does not exist): run \
                 `bash scripts/aws-local/install.sh` from {} (or the README's test command, \
                 `bash scripts/test.sh`, which runs it)",
                python.display(),
                root.display()
            ));
        }

        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--port", "0", "--exit-on-stdin-eof"])
            .current_dir(&root)
            // Held open by `child` until it is dropped: if this process dies without running
            // `Drop`, the server sees end of file and exits by itself.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "could not start {} {}: {e}",
                    python.display(),
                    script.display()
                )
            })?;

        let output = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let (drained_tx, drained_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let output = Arc::clone(&output);
            let drained_tx = drained_tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut first = String::new();
                let first_line = match reader.read_line(&mut first) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(first),
                };
                // The receiver is gone if `start` already gave up: nothing to tell.
                let _ = port_tx.send(first_line);
                // Keep draining so that the server never blocks on a full pipe.
                drain_into(reader, &output);
                let _ = drained_tx.send(());
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                drain_into(stderr, &output);
                let _ = drained_tx.send(());
            });
        }

        let mut server = MotoServer {
            endpoint: String::new(),
            port: 0,
            child,
            output,
        };
        match server.await_port_and_ready(&port_rx) {
            Ok(()) => Ok(server),
            Err(what) => {
                // Kill and reap it, then let both drain threads reach end of file (bounded, in
                // case something else holds the pipes) so that its output is complete.
                server.stop();
                let deadline = Instant::now() + Duration::from_secs(2);
                for _ in 0..2 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if drained_rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                Err(format!(
                    "the local AWS server (scripts/aws-local/moto_server.py) {what}; its output:\n{}",
                    server.output()
                ))
            }
        }
    }

    /// Reads the `PORT <n>` line, then polls `GET /moto-api/` until it answers 200 (the socket is
    /// already listening when the port is printed, so the first try normally succeeds). The error
    /// says what went wrong.
    fn await_port_and_ready(
        &mut self,
        port_rx: &mpsc::Receiver<Option<String>>,
    ) -> Result<(), String> {
        let first_line = match port_rx.recv_timeout(PORT_TIMEOUT) {
            Ok(Some(line)) => line,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("exited before printing its port".to_string());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "printed no port within {} s",
                    PORT_TIMEOUT.as_secs()
                ));
            }
        };
        self.port = match first_line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|port| port.parse::<u16>().ok())
        {
            Some(port) if port != 0 => port,
            _ => {
                return Err(format!(
                    "printed {:?} instead of `PORT <n>`",
                    first_line.trim()
                ));
            }
        };
        self.endpoint = format!("http://127.0.0.1:{}", self.port);

        await_http_ready(self.port, "/moto-api/", &mut self.child, READY_TIMEOUT)
    }

    /// The server's port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// [`aws_env`] for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }

    /// What the server has written to stdout and stderr so far (its last 64 KiB): errors and
    /// tracebacks of failed requests; request lines are not logged.
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

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment that points AWS SDK clients and processes at a local server at `endpoint`:
/// `AWS_ENDPOINT_URL`, test credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) and
/// `AWS_REGION`.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY),
        ("AWS_REGION", TEST_REGION),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

/// An `Authorization` header value shaped like SigV4 for `service` (e.g. `kinesis`), with a dummy
/// signature, for raw requests to moto.
///
/// moto does not check signatures, but it picks the service that handles a request from the
/// credential scope in this header; without it, a Kinesis call is answered by S3 (with a 200).
pub fn dummy_sigv4_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={TEST_ACCESS_KEY_ID}/20250101/{TEST_REGION}/{service}/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}",
        "0".repeat(64)
    )
}

/// An HTTP response: its status, headers (names in lowercase, in order) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` with `Connection: close`, reading the response until
/// the server closes the connection (moto's server answers HTTP/1.0, never chunked). `Host` and
/// `Content-Length` are added; connecting, writing and reading each time out after 10 s.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let timeout = Duration::from_secs(10);
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;

    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> io::Result<HttpResponse> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("the response has no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid(&format!("bad status line {status_line:?}")))?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: response[head_end + 4..].to_vec(),
    })
}

/// The workspace's root: the parent of this crate's folder.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.join(".."))
}

/// Appends everything `reader` yields to `output`, keeping only the last `OUTPUT_TAIL_BYTES`.
pub(crate) fn drain_into(mut reader: impl Read, output: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
                output.extend_from_slice(&buffer[..n]);
                if output.len() > OUTPUT_TAIL_BYTES {
                    let excess = output.len() - OUTPUT_TAIL_BYTES;
                    output.drain(..excess);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Polls `GET path` on `127.0.0.1:port` until it answers 200, `child` exits, or `timeout` passes;
/// the error says which, with the last answer.
pub(crate) fn await_http_ready(
    port: u16,
    path: &str,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match http_request(port, "GET", path, &[], b"") {
            Ok(response) if response.status == 200 => return Ok(()),
            Ok(response) => format!("answered {}", response.status),
            Err(e) => e.to_string(),
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before it was ready"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "was not ready within {} s (GET {path}: {last})",
                timeout.as_secs()
            ));
        }
        // The retry interval of a bounded poll, not a wait for something to have happened.
        thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}
