//! A fault-injecting HTTP proxy for tests: AWS SDK clients talk to it, it talks to a local AWS API
//! server (moto, see [`crate::aws::MotoServer`]), and on the way it fails some calls as a whole and
//! some entries of batch calls, as Kinesis and Firehose do under load.
//!
//! - Clients connect with HTTP/1.1 and keep their connections alive: the proxy serves any number of
//!   requests per connection (one thread per connection, at most [`MAX_CONNECTIONS`] at a time).
//!   Request bodies may have a `Content-Length` or be `Transfer-Encoding: chunked`.
//! - Each request that is forwarded goes to the upstream on a fresh connection, with `Host`
//!   rewritten and `Connection: close`; every other header is kept (moto picks the service from the
//!   `Authorization` header's credential scope and does not check signatures, so a rewritten body is
//!   fine). The whole response is read (moto answers HTTP/1.0 and closes) and sent back as HTTP/1.1
//!   with a correct `Content-Length`, keeping the client's connection open.
//! - A [`FaultPlan`] decides, per call of an operation (its `X-Amz-Target` header, e.g.
//!   [`KINESIS_PUT_RECORDS`]), from a seeded pseudo-random sequence:
//!   - a *throttle*: answered without forwarding with HTTP 400 and the service's throttling error
//!     (`ProvisionedThroughputExceededException` for Kinesis, `ServiceUnavailableException` for
//!     Firehose, `ThrottlingException` otherwise);
//!   - an *internal error*: answered without forwarding with HTTP 500 `InternalFailure`;
//!   - a *partial failure* (`PutRecords`, `PutRecordBatch`): a random subset of the `Records` is
//!     taken out of the request before it is forwarded, and error entries are put back into the
//!     upstream's answer at their positions (with the failed count raised). An entry reported as
//!     failed was really not written, as with the real services: a correct client re-sends it.
//!
//!   Calls of a client that sends one request at a time get the same faults for the same seed; the
//!   first calls of an operation can also be given their faults ([`FaultPlan::starting_with`]).
//! - [`FaultProxy::stats`] counts requests and injected faults per operation.
//!
//! Dropping the proxy stops it: it stops accepting, closes the connections it serves and joins its
//! threads. Only `std` is used (this crate's library has no JSON dependency; a small JSON reader and
//! writer for the AWS JSON protocol's bodies is at the end of this file).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The Kinesis `PutRecords` operation, as its `X-Amz-Target` header names it.
pub const KINESIS_PUT_RECORDS: &str = "Kinesis_20131202.PutRecords";
/// The Firehose `PutRecordBatch` operation, as its `X-Amz-Target` header names it.
pub const FIREHOSE_PUT_RECORD_BATCH: &str = "Firehose_20150804.PutRecordBatch";
/// The SQS `SendMessageBatch` operation (SQS's JSON protocol), as its `X-Amz-Target` header names it.
pub const SQS_SEND_MESSAGE_BATCH: &str = "AmazonSQS.SendMessageBatch";
/// The SQS `ReceiveMessage` operation.
pub const SQS_RECEIVE_MESSAGE: &str = "AmazonSQS.ReceiveMessage";
/// The most client connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// The operation name counted for requests without an `X-Amz-Target` header (e.g. S3's).
const NO_TARGET: &str = "(no X-Amz-Target)";
/// Connecting to, writing to and reading from the upstream each time out after this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request or response head (request line or status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest JSON nesting the body reader follows.
const MAX_JSON_DEPTH: usize = 64;

/// What to do to the calls of one operation: shares of calls, each between 0 and 1, drawn in this
/// order (so `throttle + internal_error + partial` should not exceed 1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Calls answered with the service's throttling error (HTTP 400) without forwarding.
    pub throttle: f64,
    /// Calls answered with HTTP 500 `InternalFailure` without forwarding.
    pub internal_error: f64,
    /// Batch calls (`PutRecords`, `PutRecordBatch`) turned into partial failures.
    pub partial: f64,
    /// In a partial failure, the chance of each entry to fail; at least one entry always fails.
    pub failed_entry_share: f64,
}

/// What to do to one call, for [`FaultPlan::starting_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it unchanged.
    None,
    /// Answer with the service's throttling error without forwarding.
    Throttle,
    /// Answer with HTTP 500 without forwarding.
    InternalError,
    /// Fail some of its entries (batch operations; others are forwarded unchanged).
    Partial,
}

/// Which calls fail, and how: [`Faults`] per operation and the seed of the decisions, and optionally
/// the faults of the first calls of an operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    operations: BTreeMap<String, Faults>,
    scripts: BTreeMap<String, Vec<Fault>>,
}

impl FaultPlan {
    /// A plan that injects nothing until [`FaultPlan::on`] adds faults, deciding from `seed`.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            operations: BTreeMap::new(),
            scripts: BTreeMap::new(),
        }
    }

    /// The first calls of `operation` get `faults`, in order, whatever the shares say; the calls
    /// after them are drawn as [`FaultPlan::on`] says. So that a short test surely sees every kind
    /// of fault. Entries failed in a scripted partial failure are drawn with the operation's
    /// `failed_entry_share` (30 % if the operation has no [`Faults`]).
    pub fn starting_with(mut self, operation: &str, faults: &[Fault]) -> Self {
        self.scripts.insert(operation.to_string(), faults.to_vec());
        self
    }

    /// Injects `faults` into the calls of `operation` (an `X-Amz-Target` value such as
    /// [`KINESIS_PUT_RECORDS`]).
    pub fn on(mut self, operation: &str, faults: Faults) -> Self {
        self.operations.insert(operation.to_string(), faults);
        self
    }
}

/// What the proxy did with the calls of one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Requests received from clients.
    pub requests: u64,
    /// Requests forwarded to the upstream (whole or with entries taken out).
    pub forwarded: u64,
    /// Calls answered with a throttling error without forwarding.
    pub throttled: u64,
    /// Calls answered with HTTP 500 without forwarding.
    pub internal_errors: u64,
    /// Calls turned into partial failures.
    pub partial_calls: u64,
    /// Entries reported failed (and not written) in partial failures.
    pub failed_entries: u64,
    /// Entries that reached the upstream in batch calls (`PutRecords`, `PutRecordBatch`).
    pub forwarded_entries: u64,
}

/// Counters of a proxy, see [`FaultProxy::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Per operation (`X-Amz-Target`).
    pub operations: BTreeMap<String, OperationStats>,
    /// Client connections accepted.
    pub connections: u64,
    /// Requests that could not be forwarded (the upstream was unreachable or its answer unreadable):
    /// answered with HTTP 502.
    pub upstream_errors: u64,
    /// Requests the proxy could not read (answered with HTTP 400, connection closed).
    pub bad_requests: u64,
    /// Partial failures that could not be applied as planned (a request without a `Records`
    /// array, an upstream answer that was not a success with one entry per forwarded record): the
    /// call was forwarded, or its answer passed on, unchanged. A correct test expects none.
    pub anomalies: u64,
}

impl ProxyStats {
    /// The counters of `operation` (all zero if it was never called).
    pub fn operation(&self, operation: &str) -> OperationStats {
        self.operations.get(operation).copied().unwrap_or_default()
    }

    /// Requests received, all operations together.
    pub fn requests(&self) -> u64 {
        self.operations.values().map(|op| op.requests).sum()
    }
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of `127.0.0.1` in front of `upstream` (`http://host:port`,
    /// plain HTTP, e.g. [`crate::aws::MotoServer`]'s endpoint).
    pub fn start(upstream: &str, plan: FaultPlan) -> Result<FaultProxy, String> {
        let authority = upstream
            .strip_prefix("http://")
            .ok_or_else(|| format!("the upstream {upstream:?} is not an http:// URL"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "the upstream {upstream:?} must be http://host:port, without a path"
            ));
        }
        let upstream_address = authority
            .to_socket_addrs()
            .map_err(|e| format!("the upstream {upstream:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("the upstream {upstream:?} resolves to no address"))?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("could not listen on 127.0.0.1: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("the proxy's address: {e}"))?;

        let shared = Arc::new(Shared {
            upstream_authority: authority.to_string(),
            upstream_address,
            plan: Mutex::new(plan.operations),
            scripts: Mutex::new(
                plan.scripts
                    .into_iter()
                    .map(|(operation, faults)| (operation, faults.into()))
                    .collect(),
            ),
            random: Mutex::new(SplitMix64(plan.seed)),
            stats: Mutex::new(ProxyStats::default()),
            shutdown: AtomicBool::new(false),
            active: Mutex::new(0),
            slot_freed: Condvar::new(),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(|e| format!("could not start the proxy's thread: {e}"))?;
        Ok(FaultProxy {
            address,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// From now on, the calls of `operation` get `faults` (`Faults::default()` for none): an
    /// outage that starts or ends while the client runs.
    pub fn set_faults(&self, operation: &str, faults: Faults) {
        lock(&self.shared.plan).insert(operation.to_string(), faults);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        lock(&self.shared.stats).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.slot_freed.notify_all();
        // Unblocks `accept`; the accept loop sees the flag and stops. Failing to connect is fine:
        // then the listener is gone already.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the accept thread and the connection threads share.
#[derive(Debug)]
struct Shared {
    upstream_authority: String,
    upstream_address: SocketAddr,
    plan: Mutex<BTreeMap<String, Faults>>,
    /// The scripted faults of the next calls, per operation.
    scripts: Mutex<BTreeMap<String, VecDeque<Fault>>>,
    random: Mutex<SplitMix64>,
    stats: Mutex<ProxyStats>,
    shutdown: AtomicBool,
    /// Connection threads running.
    active: Mutex<usize>,
    slot_freed: Condvar,
    /// Every open socket (clients' and upstream ones), so that stopping can close them.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Registers a socket to be closed when the proxy stops; returns its key for [`Self::forget`].
    fn track(&self, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let key = self.next_socket.fetch_add(1, Ordering::SeqCst);
        lock(&self.sockets).insert(key, clone);
        if self.stopping() {
            // The accept thread may have closed the others already.
            let _ = stream.shutdown(Shutdown::Both);
        }
        Some(key)
    }

    fn forget(&self, key: Option<u64>) {
        if let Some(key) = key {
            lock(&self.sockets).remove(&key);
        }
    }

    fn count(&self, operation: &str, update: impl FnOnce(&mut OperationStats)) {
        let mut stats = lock(&self.stats);
        update(stats.operations.entry(operation.to_string()).or_default());
    }

    fn count_global(&self, update: impl FnOnce(&mut ProxyStats)) {
        update(&mut lock(&self.stats));
    }

    /// Decides the fate of one call of `operation`, counting it as received.
    fn decide(&self, operation: &str) -> Decision {
        self.count(operation, |op| op.requests += 1);
        let scripted = lock(&self.scripts)
            .get_mut(operation)
            .and_then(VecDeque::pop_front);
        if let Some(fault) = scripted {
            let share = lock(&self.plan)
                .get(operation)
                .map_or(0.3, |faults| faults.failed_entry_share);
            return match fault {
                Fault::None => Decision::Forward,
                Fault::Throttle => Decision::Throttle,
                Fault::InternalError => Decision::InternalError,
                Fault::Partial if BatchShape::of(operation).is_some() => Decision::Partial(share),
                Fault::Partial => Decision::Forward,
            };
        }
        let Some(faults) = lock(&self.plan).get(operation).copied() else {
            return Decision::Forward;
        };
        let draw = lock(&self.random).next_f64();
        if draw < faults.throttle {
            Decision::Throttle
        } else if draw < faults.throttle + faults.internal_error {
            Decision::InternalError
        } else if draw < faults.throttle + faults.internal_error + faults.partial
            && BatchShape::of(operation).is_some()
        {
            Decision::Partial(faults.failed_entry_share)
        } else {
            Decision::Forward
        }
    }

    /// Which of `entries` entries fail in a partial failure: each with chance `share`, at least one.
    fn failing_entries(&self, entries: usize, share: f64) -> BTreeSet<usize> {
        let mut random = lock(&self.random);
        let mut failing: BTreeSet<usize> =
            (0..entries).filter(|_| random.next_f64() < share).collect();
        if failing.is_empty() && entries > 0 {
            failing.insert((random.next_u64() % entries as u64) as usize);
        }
        failing
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Decision {
    Forward,
    Throttle,
    InternalError,
    Partial(f64),
}

/// Where a batch operation keeps its entries and per-entry results.
#[derive(Clone, Copy, Debug)]
struct BatchShape {
    /// The array of entries in the request.
    request_entries: &'static str,
    /// The array of results in the response, one per entry.
    response_entries: &'static str,
    /// The count of failed entries in the response.
    failed_count: &'static str,
    /// An upstream answer for a call of no entries (when every entry fails, nothing is forwarded).
    empty_response: &'static str,
    /// The result that says an entry failed.
    failed_entry: &'static str,
}

impl BatchShape {
    fn of(operation: &str) -> Option<BatchShape> {
        match operation {
            KINESIS_PUT_RECORDS => Some(BatchShape {
                request_entries: "Records",
                response_entries: "Records",
                failed_count: "FailedRecordCount",
                empty_response: r#"{"FailedRecordCount":0,"Records":[]}"#,
                failed_entry: r#"{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded"}"#,
            }),
            FIREHOSE_PUT_RECORD_BATCH => Some(BatchShape {
                request_entries: "Records",
                response_entries: "RequestResponses",
                failed_count: "FailedPutCount",
                empty_response: r#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":[]}"#,
                failed_entry: r#"{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down"}"#,
            }),
            _ => None,
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    loop {
        // Wait for a free slot: at most `MAX_CONNECTIONS` connection threads.
        {
            let mut active = lock(&shared.active);
            while *active >= MAX_CONNECTIONS && !shared.stopping() {
                active = shared
                    .slot_freed
                    .wait_timeout(active, Duration::from_millis(100))
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        if shared.stopping() {
            break;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                if shared.stopping() {
                    break;
                }
                // E.g. too many open files: wait a little instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stopping() {
            break;
        }
        shared.count_global(|stats| stats.connections += 1);
        threads.retain(|thread| !thread.is_finished());
        *lock(&shared.active) += 1;
        let connection_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || {
                serve_connection(stream, &connection_shared);
                *lock(&connection_shared.active) -= 1;
                connection_shared.slot_freed.notify_all();
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            // The stream was moved into the closure and dropped with it: the client sees a
            // closed connection.
            Err(_) => *lock(&shared.active) -= 1,
        }
    }
    for (_, socket) in lock(&shared.sockets).drain() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    for thread in threads {
        let _ = thread.join();
    }
}

/// One HTTP request from a client.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    /// Whether the client asked to close the connection after the answer (or spoke HTTP/1.0).
    close: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// One HTTP response, to send to a client.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: &str) -> Response {
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/x-amz-json-1.1".to_string(),
                ),
                ("x-amzn-RequestId".into(), "fault-proxy".to_string()),
            ],
            body: body.as_bytes().to_vec(),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "",
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let key = shared.track(&stream);
    let Ok(mut writer) = stream.try_clone() else {
        shared.forget(key);
        return;
    };
    let mut reader = BufReader::new(stream);
    while !shared.stopping() {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(request)) => request,
            // The client closed the connection between requests, or it was closed on stopping.
            Ok(None) => break,
            Err(e) => {
                if !shared.stopping() && e.kind() == io::ErrorKind::InvalidData {
                    shared.count_global(|stats| stats.bad_requests += 1);
                    let response = Response::json(
                        400,
                        &format!(
                            r#"{{"__type":"BadRequest","message":{}}}"#,
                            json_string(&e.to_string())
                        ),
                    );
                    let _ = write_response(&mut writer, &response, "POST", true);
                }
                break;
            }
        };
        let response = handle(&request, shared);
        if write_response(&mut writer, &response, &request.method, request.close).is_err()
            || request.close
        {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    shared.forget(key);
}

fn handle(request: &Request, shared: &Shared) -> Response {
    let operation = request
        .header("x-amz-target")
        .unwrap_or(NO_TARGET)
        .to_string();
    match shared.decide(&operation) {
        Decision::Forward => forward_counted(request, &request.body, &operation, shared),
        Decision::Throttle => {
            shared.count(&operation, |op| op.throttled += 1);
            let body = if operation.starts_with("Kinesis_") {
                r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}"#
            } else if operation.starts_with("Firehose_") {
                r#"{"__type":"ServiceUnavailableException","message":"Slow down."}"#
            } else {
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
            };
            Response::json(400, body)
        }
        Decision::InternalError => {
            shared.count(&operation, |op| op.internal_errors += 1);
            Response::json(500, r#"{"__type":"InternalFailure"}"#)
        }
        Decision::Partial(share) => partial_failure(request, &operation, share, shared),
    }
}

/// Forwards `body` with the request's method, target and headers; counts it, and answers 502 when
/// the upstream cannot be reached or read.
fn forward_counted(request: &Request, body: &[u8], operation: &str, shared: &Shared) -> Response {
    shared.count(operation, |op| op.forwarded += 1);
    if let Some(shape) = BatchShape::of(operation)
        && let Some(entries) = Json::parse(body)
            .ok()
            .and_then(|json| json.get(shape.request_entries).and_then(Json::len))
    {
        shared.count(operation, |op| op.forwarded_entries += entries as u64);
    }
    match forward(request, body, shared) {
        Ok(response) => response,
        Err(e) => {
            shared.count_global(|stats| stats.upstream_errors += 1);
            Response::json(
                502,
                &format!(
                    r#"{{"__type":"BadGateway","message":{}}}"#,
                    json_string(&format!("fault proxy: the upstream failed: {e}"))
                ),
            )
        }
    }
}

/// Takes a random subset of the entries out of the request, forwards the rest (if any), and puts
/// failed results back at their positions in the answer.
fn partial_failure(request: &Request, operation: &str, share: f64, shared: &Shared) -> Response {
    let Some(shape) = BatchShape::of(operation) else {
        return forward_counted(request, &request.body, operation, shared);
    };
    let parsed = Json::parse(&request.body).ok();
    let Some((mut json, entries)) = parsed.and_then(|json| {
        let entries = json.get(shape.request_entries)?.len()?;
        Some((json, entries))
    }) else {
        shared.count_global(|stats| stats.anomalies += 1);
        return forward_counted(request, &request.body, operation, shared);
    };
    let failing = shared.failing_entries(entries, share);
    if let Some(Json::Array(items)) = json.get_mut(shape.request_entries) {
        let kept: Vec<Json> = std::mem::take(items)
            .into_iter()
            .enumerate()
            .filter(|(index, _)| !failing.contains(index))
            .map(|(_, item)| item)
            .collect();
        *items = kept;
    }
    shared.count(operation, |op| {
        op.partial_calls += 1;
        op.failed_entries += failing.len() as u64;
    });

    let upstream = if failing.len() == entries {
        // Nothing left to write (the services refuse empty batches): answer as the upstream would.
        Response::json(200, shape.empty_response)
    } else {
        forward_counted(request, json.to_string().as_bytes(), operation, shared)
    };
    if upstream.status != 200 {
        // The upstream refused the rest as a whole: its answer stands for the whole call.
        return upstream;
    }
    match splice_failures(&upstream.body, &shape, &failing, entries) {
        Some(body) => Response {
            status: upstream.status,
            reason: upstream.reason,
            headers: upstream
                .headers
                .into_iter()
                // A checksum of the upstream's body no longer matches.
                .filter(|(name, _)| !name.eq_ignore_ascii_case("x-amz-crc32"))
                .collect(),
            body,
        },
        None => {
            shared.count_global(|stats| stats.anomalies += 1);
            upstream
        }
    }
}

/// The upstream's answer for the kept entries with failed results inserted at the positions in
/// `failing`, out of `entries` in all; `None` if the answer has not one result per kept entry.
fn splice_failures(
    body: &[u8],
    shape: &BatchShape,
    failing: &BTreeSet<usize>,
    entries: usize,
) -> Option<Vec<u8>> {
    let mut json = Json::parse(body).ok()?;
    let failed_entry = Json::parse(shape.failed_entry.as_bytes()).ok()?;
    let Json::Array(results) = json.get_mut(shape.response_entries)? else {
        return None;
    };
    if results.len() + failing.len() != entries {
        return None;
    }
    let mut upstream_results = std::mem::take(results).into_iter();
    for index in 0..entries {
        if failing.contains(&index) {
            results.push(failed_entry.clone());
        } else {
            results.push(upstream_results.next()?);
        }
    }
    let failed_before = match json.get(shape.failed_count) {
        Some(Json::Number(number)) => number.parse::<u64>().ok()?,
        None | Some(Json::Null) => 0,
        Some(_) => return None,
    };
    json.set(
        shape.failed_count,
        Json::Number((failed_before + failing.len() as u64).to_string()),
    );
    Some(json.to_string().into_bytes())
}

/// Reads one request; `None` at a clean end of the connection before a request.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> io::Result<Option<Request>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    // Tolerate empty lines between requests.
    let mut line = String::new();
    let mut head_bytes = 0;
    loop {
        line.clear();
        let read = read_line(reader, &mut line, &mut head_bytes)?;
        if read == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {:?}", line.trim_end())));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("unsupported version {version:?}")));
    }
    let (method, target, http10) = (
        method.to_string(),
        target.to_string(),
        version == "HTTP/1.0",
    );
    let headers = read_headers(reader, &mut head_bytes)?;

    let connection = header(&headers, "connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let close = connection.contains("close") || (http10 && !connection.contains("keep-alive"));
    if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(length) = header(&headers, "content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };
    Ok(Some(Request {
        method,
        target,
        close,
        headers,
        body,
    }))
}

/// Appends a line to `line` (the caller clears it), counting its bytes against the head
/// limit; returns the bytes read (0 at end of file).
fn read_line(
    reader: &mut impl BufRead,
    line: &mut String,
    head_bytes: &mut usize,
) -> io::Result<usize> {
    let limit = MAX_HEAD_BYTES.saturating_sub(*head_bytes) as u64 + 1;
    let read = (&mut *reader).take(limit).read_line(line)?;
    *head_bytes += read;
    if *head_bytes > MAX_HEAD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message head is longer than {MAX_HEAD_BYTES} bytes"),
        ));
    }
    Ok(read)
}

/// Reads header lines up to the empty line that ends them.
fn read_headers(
    reader: &mut impl BufRead,
    head_bytes: &mut usize,
) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(reader, &mut line, head_bytes)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed within a message head",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Reads a `Transfer-Encoding: chunked` body (and its trailer, which is dropped).
fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if read_line(reader, &mut line, &mut 0)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed within a chunked body",
            ));
        }
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {:?}", line.trim_end())))?;
        if size == 0 {
            read_headers(reader, &mut 0)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut end = [0u8; 2];
        reader.read_exact(&mut end)?;
        if &end != b"\r\n" {
            return Err(invalid("a chunk does not end with CRLF".to_string()));
        }
    }
}

/// Headers that belong to one connection, never forwarded as they are.
fn hop_by_hop(name: &str) -> bool {
    [
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Sends the request with `body` to the upstream on a fresh connection and reads its whole answer.
fn forward(request: &Request, body: &[u8], shared: &Shared) -> io::Result<Response> {
    let mut upstream = TcpStream::connect_timeout(&shared.upstream_address, UPSTREAM_TIMEOUT)?;
    let key = shared.track(&upstream);
    let result = (|| {
        upstream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
        upstream.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method,
            request.target,
            shared.upstream_authority,
            body.len()
        );
        for (name, value) in &request.headers {
            if !hop_by_hop(name) {
                let _ = write!(head, "{name}: {value}\r\n");
            }
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        upstream.write_all(&message)?;
        upstream.flush()?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer)?;
        parse_upstream_response(&answer, &request.method)
    })();
    shared.forget(key);
    result
}

/// Parses a whole upstream answer (the upstream closed the connection after it).
fn parse_upstream_response(answer: &[u8], method: &str) -> io::Result<Response> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut reader = io::Cursor::new(answer);
    let mut head_bytes = 0;
    let mut status_line = String::new();
    if read_line(&mut reader, &mut status_line, &mut head_bytes)? == 0 {
        return Err(invalid(
            "the upstream closed the connection without answering".into(),
        ));
    }
    let mut parts = status_line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("bad status line {:?}", status_line.trim_end())))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let headers = read_headers(&mut reader, &mut head_bytes)?;
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let body = if no_body {
        Vec::new()
    } else if header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(&mut reader)?
    } else {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest)?;
        if let Some(length) = header(&headers, "content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            if rest.len() < length {
                return Err(invalid(format!(
                    "the upstream sent {} of {length} body bytes",
                    rest.len()
                )));
            }
            rest.truncate(length);
        }
        rest
    };
    let headers = if method.eq_ignore_ascii_case("HEAD") {
        // The length of the body a GET would get: keep it.
        headers
            .into_iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("content-length") || !hop_by_hop(name))
            .collect()
    } else {
        headers
            .into_iter()
            .filter(|(name, _)| !hop_by_hop(name))
            .collect()
    };
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

/// Writes a response as HTTP/1.1 with the body's length (for `HEAD`, the upstream's header).
fn write_response(
    writer: &mut TcpStream,
    response: &Response,
    method: &str,
    close: bool,
) -> io::Result<()> {
    let reason = if response.reason.is_empty() {
        reason_phrase(response.status)
    } else {
        &response.reason
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let head_request = method.eq_ignore_ascii_case("HEAD");
    if !head_request {
        let _ = write!(head, "Content-Length: {}\r\n", response.body.len());
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    if !head_request {
        message.extend_from_slice(&response.body);
    }
    writer.write_all(&message)?;
    writer.flush()
}

/// SplitMix64: a small, seeded pseudo-random sequence.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A JSON value as the AWS JSON protocols use them: object members keep their order, numbers keep
/// their text.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(bytes: &[u8]) -> Result<Json, String> {
        let mut parser = JsonParser { bytes, at: 0 };
        let value = parser.value(0)?;
        parser.skip_space();
        if parser.at != bytes.len() {
            return Err(format!("trailing characters at {}", parser.at));
        }
        Ok(value)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets member `key` of an object (appending it if missing); does nothing to other values.
    fn set(&mut self, key: &str, value: Json) {
        if let Json::Object(members) = self {
            match members.iter_mut().find(|(k, _)| k == key) {
                Some((_, existing)) => *existing = value,
                None => members.push((key.to_string(), value)),
            }
        }
    }

    /// The length of an array.
    fn len(&self) -> Option<usize> {
        match self {
            Json::Array(items) => Some(items.len()),
            _ => None,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Json::Number(text) => out.push_str(text),
            Json::String(text) => out.push_str(&json_string(text)),
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(&json_string(key));
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        self.write(&mut out);
        f.write_str(&out)
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &str) -> Result<(), String> {
        if self.bytes[self.at..].starts_with(literal.as_bytes()) {
            self.at += literal.len();
            Ok(())
        } else {
            Err(format!("expected {literal} at {}", self.at))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_JSON_DEPTH {
            return Err("nested too deeply".into());
        }
        self.skip_space();
        match self.bytes.get(self.at) {
            None => Err("unexpected end".into()),
            Some(b'n') => self.expect("null").map(|()| Json::Null),
            Some(b't') => self.expect("true").map(|()| Json::Bool(true)),
            Some(b'f') => self.expect("false").map(|()| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.at)),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.skip_space();
                    if self.bytes.get(self.at) != Some(&b'"') {
                        return Err(format!("expected a member name at {}", self.at));
                    }
                    let key = self.string()?;
                    self.skip_space();
                    self.expect(":")?;
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(format!("expected , or }} at {}", self.at)),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') =
                    self.bytes.get(self.at)
                {
                    self.at += 1;
                }
                let text =
                    std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| e.to_string())?;
                if text.parse::<f64>().is_err() {
                    return Err(format!("bad number {text:?}"));
                }
                Ok(Json::Number(text.to_string()))
            }
            Some(other) => Err(format!("unexpected {:?} at {}", *other as char, self.at)),
        }
    }

    /// A string literal, at its opening quote.
    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.at) else {
                        return Err("unterminated escape".into());
                    };
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                self.expect("\\u")?;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err("bad surrogate pair".into());
                                }
                                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or("bad \\u escape")?
                        }
                        other => return Err(format!("bad escape \\{}", other as char)),
                    };
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
                byte => out.push(byte),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or("bad \\u escape")?;
        self.at += 4;
        Ok(digits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_aws_bodies() {
        let text = r#"{"Records":[{"Data":"eyJhIjoxfQo=","PartitionKey":"u\u00e9\"1"}],"StreamName":"s","N":-1.5e3,"T":true,"X":null}"#;
        let json = Json::parse(text.as_bytes()).unwrap_or(Json::Null);
        assert_eq!(json.get("Records").and_then(Json::len), Some(1));
        let again = Json::parse(json.to_string().as_bytes()).unwrap_or(Json::Null);
        assert_eq!(again, json);
        assert!(Json::parse(b"{\"a\":1} x").is_err());
        assert!(Json::parse(b"[1,]").is_err());
    }

    #[test]
    fn failed_results_go_back_where_the_entries_were() {
        let shape = BatchShape::of(KINESIS_PUT_RECORDS).unwrap_or_else(|| unreachable!());
        let upstream = br#"{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"a"},{"SequenceNumber":"2","ShardId":"a"}]}"#;
        let failing: BTreeSet<usize> = [0, 2].into_iter().collect();
        let body = splice_failures(upstream, &shape, &failing, 4).unwrap_or_default();
        let json = Json::parse(&body).unwrap_or(Json::Null);
        assert_eq!(
            json.get("FailedRecordCount"),
            Some(&Json::Number("2".into()))
        );
        let Some(Json::Array(results)) = json.get("Records") else {
            panic!("no Records in {}", String::from_utf8_lossy(&body));
        };
        let codes: Vec<Option<&Json>> = results.iter().map(|r| r.get("ErrorCode")).collect();
        assert!(codes[0].is_some() && codes[1].is_none() && codes[2].is_some());
        assert_eq!(
            results[3].get("SequenceNumber"),
            Some(&Json::String("2".into()))
        );
        assert_eq!(splice_failures(upstream, &shape, &failing, 5), None);
    }
}
