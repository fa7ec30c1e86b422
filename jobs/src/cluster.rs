//! Several processes as one dataflow: the `[cluster]` section and how its processes connect.
//!
//! timely runs one dataflow over the workers of several processes when each process is given the
//! same list of addresses and its own index in it: worker indices are then global (process `p`
//! holds workers `p × threads .. (p + 1) × threads`), exchanges cross processes over TCP, and
//! progress (frontiers) is tracked over the whole cluster.
//!
//! timely's own start-up connects to its peers forever, printing to standard output, and a
//! stray connection panics it. pageflow connects the sockets itself and hands them to timely
//! (`initialize_networking_from_sockets`), so that
//!
//! - a peer that does not answer within `connect_timeout` stops the start with a message naming
//!   its address;
//! - each connection begins with a hello (a magic number, the number of processes, the sender's
//!   index, a fingerprint of the address list and the [`Agreement`] on where the run starts), so
//!   that a process started with another list, one that restored another checkpoint, or a stray
//!   client, is refused with a message saying what differs;
//! - nothing is printed to standard output;
//! - when a peer is lost mid-run (timely cannot go on without it), this process exits at once with
//!   [`PEER_LOST_EXIT_CODE`] and a message naming the peer, instead of panicking or hanging:
//!   restart every process, and the job resumes from its last checkpoint.
//!
//! The protocol keeps timely's direction: process `i` listens on `addresses[i]` for the higher
//! indices and connects to the lower ones.
//!
//! ```toml
//! [cluster]
//! addresses = ["10.0.1.10:7100", "10.0.1.11:7100"]   # the same list, in the same order, everywhere
//! process = 0                                         # or --process, or PAGEFLOW__CLUSTER__PROCESS
//! connect_timeout = "60s"
//! peer_timeout = "10s"                                # a silent peer counts as lost after this
//! ```
//!
//! What runs as a cluster today is `pageflow replay` (see `docs/cluster-design.md` for the plan
//! of the rest).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pageflow_dataflow::config::Millis;
use serde::{Deserialize, Serialize};
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Config as CommunicationConfig, Hooks};

/// The exit code of a process whose peer was lost (EX_TEMPFAIL): restart all of them.
pub const PEER_LOST_EXIT_CODE: i32 = 75;

/// Marks a pageflow hello ("pgflow" and a protocol version).
const HELLO_MAGIC: u64 = 0x7067_666c_6f77_0002;

/// What every process of a cluster must start from alike, checked in the hello: the checkpoint
/// each restored and the first checkpoint id of the run. Each process chooses them from the
/// shared checkpoint location on its own; a process that chose otherwise (another location, or a
/// checkpoint committed between their starts) would run the dataflow on another state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    /// The checkpoint restored; `None` for empty state.
    pub restored: Option<u64>,
    /// The first checkpoint id this run writes (0 without checkpoints).
    pub first_id: u64,
}
/// How often a connection is tried again while a peer is not up yet.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// The `[cluster]` section: the processes that together run one dataflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` of every process, the same list in the same order everywhere. Empty: one
    /// process, as without a `[cluster]` section.
    pub addresses: Vec<String>,
    /// This process's index in `addresses`.
    pub process: usize,
    /// How long to wait for every peer at start.
    pub connect_timeout: Millis,
    /// How long a peer may stay silent (a machine that died, a network cut: no connection
    /// reset arrives) before this process counts it as lost: TCP keepalive probes an idle
    /// connection, and data unacknowledged for this long fails it.
    pub peer_timeout: Millis,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            addresses: Vec::new(),
            process: 0,
            connect_timeout: Millis::seconds(60),
            peer_timeout: Millis::seconds(10),
        }
    }
}

impl ClusterConfig {
    /// A cluster of `addresses` in which this is process `process`.
    pub fn new(addresses: Vec<String>, process: usize) -> Self {
        ClusterConfig {
            addresses,
            process,
            ..ClusterConfig::default()
        }
    }

    /// How many processes run the dataflow (1 without a cluster).
    pub fn processes(&self) -> usize {
        self.addresses.len().max(1)
    }

    /// Whether more than one process runs the dataflow.
    pub fn is_cluster(&self) -> bool {
        self.addresses.len() > 1
    }

    /// Adds every problem of the section to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.addresses.is_empty() {
            if self.process != 0 {
                problems.push(format!(
                    "[cluster] `process` = {} but there are no `addresses`: list every process's host:port, or leave `process` out",
                    self.process
                ));
            }
            return;
        }
        if self.process >= self.addresses.len() {
            problems.push(format!(
                "[cluster] `process` = {} is not an index of `addresses` (0 to {}): give each process its position in the list",
                self.process,
                self.addresses.len() - 1
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, address) in self.addresses.iter().enumerate() {
            if !looks_like_host_port(address) {
                problems.push(format!(
                    "[cluster] `addresses[{index}]` = `{address}` is not host:port: write e.g. `10.0.1.10:7100` or `pageflow-p{index}.pageflow.local:7100`"
                ));
            }
            if !seen.insert(address.as_str()) {
                problems.push(format!(
                    "[cluster] `{address}` is listed twice in `addresses`: each process needs its own address"
                ));
            }
        }
        if self.connect_timeout.ms() == 0 {
            problems.push("[cluster] `connect_timeout` must be positive, e.g. `60s`".to_string());
        }
        if self.peer_timeout.ms() < 2_000 {
            problems.push(format!(
                "[cluster] `peer_timeout` = {} is too short to tell a lost peer from a slow one: give at least `2s` (default `10s`)",
                self.peer_timeout
            ));
        }
    }

    /// The communication of `threads` worker threads per process: within this process only, or
    /// connected to every peer of the cluster (waiting up to `connect_timeout` for them).
    pub fn connect(
        &self,
        threads: usize,
        agreement: Agreement,
    ) -> Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>)> {
        let threads = threads.max(1);
        if !self.is_cluster() {
            return CommunicationConfig::Process(threads)
                .try_build()
                .map_err(|problem| anyhow!("cannot start the worker threads: {problem}"));
        }
        let sockets = connect_peers(
            &self.addresses,
            self.process,
            threads,
            agreement,
            self.connect_timeout.into(),
        )?;
        for socket in sockets.iter().flatten() {
            notice_silence(socket, self.peer_timeout.into())
                .context("cannot set keepalive on a connection to a peer")?;
        }
        exit_when_a_peer_is_lost(self.addresses.clone());
        tracing::info!(
            process = self.process,
            processes = self.addresses.len(),
            threads,
            "cluster formed: process {} of {} connected to every peer",
            self.process,
            self.addresses.len()
        );
        let hooks = Hooks::default();
        let process_allocators =
            ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) = initialize_networking_from_sockets(
            process_allocators,
            sockets,
            self.process,
            threads,
            hooks,
        )
        .context("cannot start the cluster's network threads")?;
        Ok((
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(NetworkThreads(Some(guard))),
        ))
    }
}

/// Timely's network threads, joined when the workers are done. Timely's guard panics ("Send
/// thread panic") when a send thread found its peer's connection closed, which is what a peer
/// that ended its part first leaves behind; once this process is leaving too (see [`leave`])
/// the threads are not joined: they end with the process, which exits next.
struct NetworkThreads(Option<timely::communication::allocator::zero_copy::initialize::CommsGuard>);

impl Drop for NetworkThreads {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            if is_leaving() {
                std::mem::forget(guard);
            } else {
                drop(guard);
            }
        }
    }
}

/// Set once this process knows the job is ending (see [`leave`]).
static LEAVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process is ending its part of the job on purpose (a final checkpoint, a stop every
/// process has heard of, the end of the input): from now on a peer that goes away has left, not
/// failed, and its broken connection is no reason to exit with [`PEER_LOST_EXIT_CODE`].
pub fn leave() {
    LEAVING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether this process is leaving the job (see [`leave`]).
pub fn is_leaving() -> bool {
    LEAVING.load(std::sync::atomic::Ordering::SeqCst)
}

/// From now on, a panic of one of timely's network threads (`timely:recv-<peer>` or
/// `timely:send-<peer>`: the connection to that peer broke, it died or the network failed) ends
/// this process with [`PEER_LOST_EXIT_CODE`] and a message naming the peer. Without it, the
/// network thread's panic poisons the workers' queues, they panic in turn, and the process ends
/// with a wall of backtraces (or, blocked elsewhere, not at all).
fn exit_when_a_peer_is_lost(addresses: Vec<String>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let peer = thread.name().and_then(|name| {
            name.strip_prefix("timely:recv-")
                .or_else(|| name.strip_prefix("timely:send-"))
                .and_then(|index| index.parse::<usize>().ok())
        });
        let Some(peer) = peer else {
            previous(info);
            return;
        };
        if is_leaving() {
            // A peer that finished its part and exited first: expected, said nothing about.
            tracing::debug!("process {peer} has left the cluster");
            return;
        }
        let reason = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the connection failed".to_string());
        let address = addresses.get(peer).map_or("?", String::as_str);
        crate::say!(
            "pageflow: lost process {peer} ({address}) of the cluster ({reason}); this process stops too: restart every process, and the job resumes from its last checkpoint"
        );
        std::process::exit(PEER_LOST_EXIT_CODE);
    }));
}

/// `host:port` with a port number (the host may be a name that resolves later).
fn looks_like_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A fingerprint of the address list, the threads per process and pageflow's build: processes
/// started with different lists, or another number of worker threads, refuse each other (timely
/// numbers the workers `process × threads + i`, so every process must run as many); so do two
/// releases, whose dataflows and messages may differ (a rollout that replaces one process's task
/// before another's must not form a mixed cluster).
fn fingerprint(addresses: &[String], threads: usize) -> u64 {
    let threads = (threads as u64).to_le_bytes();
    let build = this_build().to_le_bytes();
    let parts = addresses
        .iter()
        .map(|a| a.as_bytes())
        .chain([threads.as_slice(), build.as_slice()]);
    pageflow_dataflow::ids::stable_hash(parts)
}

/// What tells this build of pageflow from any other: a hash of the running executable's bytes
/// (read once, ~50 ms for a release binary), or of the version when the executable cannot be
/// read. Two builds of one version differ too, so a cluster is formed only by one image.
fn this_build() -> u64 {
    static BUILD: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BUILD.get_or_init(|| {
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| xxhash_rust::xxh3::xxh3_64(&bytes))
            .unwrap_or_else(|_| xxhash_rust::xxh3::xxh3_64(env!("CARGO_PKG_VERSION").as_bytes()))
    })
}

/// The hello a process sends first on each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    processes: u64,
    sender: u64,
    fingerprint: u64,
    /// The checkpoint restored plus one (0: none).
    restored: u64,
    first_id: u64,
}

/// A hello's size: six little-endian words.
const HELLO_BYTES: usize = 48;

impl Hello {
    fn new(addresses: &[String], me: usize, threads: usize, agreement: Agreement) -> Self {
        Hello {
            processes: addresses.len() as u64,
            sender: me as u64,
            fingerprint: fingerprint(addresses, threads),
            restored: agreement.restored.map_or(0, |id| id.saturating_add(1)),
            first_id: agreement.first_id,
        }
    }

    fn restored(self) -> Option<u64> {
        self.restored.checked_sub(1)
    }

    fn encode(self) -> [u8; HELLO_BYTES] {
        let mut bytes = [0u8; HELLO_BYTES];
        let words = [
            HELLO_MAGIC,
            self.processes,
            self.sender,
            self.fingerprint,
            self.restored,
            self.first_id,
        ];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    fn decode(bytes: &[u8; HELLO_BYTES]) -> Option<Hello> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..(i + 1) * 8]);
            u64::from_le_bytes(w)
        };
        (word(0) == HELLO_MAGIC).then(|| Hello {
            processes: word(1),
            sender: word(2),
            fingerprint: word(3),
            restored: word(4),
            first_id: word(5),
        })
    }
}

/// One socket per peer, in process order, `None` at `me`: connected to every lower index, accepted
/// from every higher one, each opened by a checked hello. Fails, naming the peer, when one does not
/// answer within `timeout` or answers with another cluster's hello.
fn connect_peers(
    addresses: &[String],
    me: usize,
    threads: usize,
    agreement: Agreement,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>> {
    let deadline = Instant::now() + timeout;
    let ours = Hello::new(addresses, me, threads, agreement);
    // Listen first, so that higher peers can connect while we connect to lower ones.
    let listener = bind(&addresses[me])?;
    let mut sockets: Vec<Option<TcpStream>> = (0..addresses.len()).map(|_| None).collect();
    for (peer, address) in addresses.iter().enumerate().take(me) {
        let mut stream = connect_until(address, peer, deadline)?;
        stream
            .write_all(&ours.encode())
            .with_context(|| format!("cannot greet process {peer} at {address}"))?;
        let theirs = read_hello(&mut stream, deadline)
            .with_context(|| format!("process {peer} at {address} did not answer the hello"))?;
        check_hello(theirs, ours, peer, address)?;
        sockets[peer] = Some(stream);
    }
    listener
        .set_nonblocking(true)
        .context("cannot poll the cluster listener")?;
    while sockets.iter().skip(me + 1).any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false)?;
                let Ok(theirs) = read_hello(&mut stream, deadline) else {
                    tracing::warn!(%from, "a connection to the cluster port sent no pageflow hello; closed");
                    continue;
                };
                let peer = theirs.sender as usize;
                if peer <= me || peer >= addresses.len() || sockets[peer].is_some() {
                    tracing::warn!(%from, peer, "a connection claimed an unexpected process index; closed");
                    continue;
                }
                // Answer before checking, so that a peer of another cluster learns why too.
                stream
                    .write_all(&ours.encode())
                    .with_context(|| format!("cannot answer process {peer}"))?;
                check_hello(theirs, ours, peer, &addresses[peer])?;
                sockets[peer] = Some(stream);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (me + 1..addresses.len())
                        .filter(|p| sockets[*p].is_none())
                        .map(|p| format!("process {p} ({})", addresses[p]))
                        .collect();
                    bail!(
                        "{} did not connect within {timeout:?}: start every process of [cluster] addresses with its own --process, or check that they can reach {}",
                        missing.join(", "),
                        addresses[me]
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot accept peers on {}", addresses[me]));
            }
        }
    }
    for socket in sockets.iter().flatten() {
        socket.set_nodelay(true)?;
        socket.set_read_timeout(None)?;
    }
    Ok(sockets)
}

/// Makes a connection to a peer fail, rather than wait forever, when the peer falls silent
/// for about `timeout`: keepalive probes start after half of it on an idle connection (one a
/// second), and data left unacknowledged for `timeout` fails the connection (`TCP_USER_TIMEOUT`).
/// timely's network thread then fails, and this process exits naming the peer (see
/// [`PEER_LOST_EXIT_CODE`]). A process that dies is noticed at once anyway: its kernel resets
/// the connection.
fn notice_silence(socket: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    let idle = (timeout / 2).max(Duration::from_secs(1));
    let interval = Duration::from_secs(1);
    let probes = ((timeout.saturating_sub(idle)).as_secs() as u32).max(1);
    let socket = socket2::SockRef::from(socket);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(probes),
    )?;
    socket.set_tcp_user_timeout(Some(timeout))
}

/// Listens on this process's own address (on every interface when it names another host).
fn bind(address: &str) -> Result<TcpListener> {
    let port = address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("[cluster] address `{address}` has no port"))?;
    // The address others use may be a name or an outside address (a load balancer, Cloud Map);
    // binding it directly fails on those, binding the port on every interface does not.
    TcpListener::bind(address)
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .with_context(|| {
            format!("cannot listen on {address} for the other processes: is the port free?")
        })
}

/// Connects to `address`, trying again until `deadline`.
fn connect_until(address: &str, peer: usize, deadline: Instant) -> Result<TcpStream> {
    let mut last_error = None;
    while Instant::now() < deadline {
        let targets: Vec<SocketAddr> = match address.to_socket_addrs() {
            Ok(resolved) => resolved.collect(),
            Err(error) => {
                last_error = Some(error.to_string());
                std::thread::sleep(RETRY_EVERY);
                continue;
            }
        };
        for target in targets {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(
                &target,
                left.clamp(Duration::from_millis(1), Duration::from_secs(5)),
            ) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error.to_string()),
            }
        }
        std::thread::sleep(RETRY_EVERY);
    }
    bail!(
        "process {peer} at {address} does not answer ({}): start it, or check [cluster] addresses and the network between the processes",
        last_error.unwrap_or_else(|| "no attempt finished in time".to_string())
    )
}

/// Reads a hello, giving up at `deadline`.
fn read_hello(stream: &mut TcpStream, deadline: Instant) -> Result<Hello> {
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left.max(Duration::from_millis(100))))?;
    let mut bytes = [0u8; HELLO_BYTES];
    stream.read_exact(&mut bytes)?;
    Hello::decode(&bytes).ok_or_else(|| anyhow!("not a pageflow cluster hello"))
}

/// Refuses a peer of another cluster.
fn check_hello(theirs: Hello, ours: Hello, peer: usize, address: &str) -> Result<()> {
    if theirs.processes != ours.processes || theirs.fingerprint != ours.fingerprint {
        bail!(
            "process {peer} at {address} was started with another [cluster] addresses list ({} processes), another number of worker threads or another pageflow release: give every process the same list, in the same order, the same [runtime] workers and the same image",
            theirs.processes
        );
    }
    if theirs.restored != ours.restored {
        let said = |restored: Option<u64>| {
            restored.map_or("started from empty state".to_string(), |id| {
                format!("restored checkpoint {id}")
            })
        };
        bail!(
            "process {peer} at {address} {}, but this process {}: every process must start from the same checkpoint; give them all the same [checkpoint] location and start them together (none may start while another is still writing checkpoints)",
            said(theirs.restored()),
            said(ours.restored())
        );
    }
    if theirs.first_id != ours.first_id {
        bail!(
            "process {peer} at {address} would number its checkpoints from {}, this process from {}: a checkpoint was written to the location between their starts; stop every process and start them together",
            theirs.first_id,
            ours.first_id
        );
    }
    if theirs.sender as usize != peer {
        bail!(
            "the process at {address} says it is process {}, not {peer}: give each process its own --process",
            theirs.sender
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addresses(n: usize) -> Vec<String> {
        // Ports the OS hands out, released at once; the test binds them again right after.
        (0..n)
            .map(|_| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn three_processes_connect_to_each_other() {
        let addresses = free_addresses(3);
        let handles: Vec<_> = (0..3)
            .map(|me| {
                let addresses = addresses.clone();
                std::thread::spawn(move || {
                    connect_peers(
                        &addresses,
                        me,
                        2,
                        Agreement::default(),
                        Duration::from_secs(20),
                    )
                })
            })
            .collect();
        for (me, handle) in handles.into_iter().enumerate() {
            let sockets = handle.join().unwrap().unwrap();
            assert_eq!(sockets.len(), 3);
            for (peer, socket) in sockets.iter().enumerate() {
                assert_eq!(socket.is_some(), peer != me, "process {me}, peer {peer}");
            }
        }
    }

    #[test]
    fn a_missing_peer_is_named_after_the_timeout() {
        let addresses = free_addresses(2);
        // Process 1 connects to process 0, which never starts.
        let error = connect_peers(
            &addresses,
            1,
            1,
            Agreement::default(),
            Duration::from_millis(600),
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(&addresses[0]), "{message}");
        assert!(message.contains("process 0"), "{message}");
        // Process 0 waits for process 1, which never starts.
        let error = connect_peers(
            &addresses,
            0,
            1,
            Agreement::default(),
            Duration::from_millis(600),
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("process 1"), "{message}");
    }

    #[test]
    fn a_peer_with_another_address_list_is_refused() {
        let addresses = free_addresses(2);
        let first = {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                connect_peers(
                    &addresses,
                    0,
                    1,
                    Agreement::default(),
                    Duration::from_secs(3),
                )
            })
        };
        // Process 1 of a three-process list connects to process 0 of a two-process list: both
        // refuse, each saying why.
        let mut longer = addresses.clone();
        longer.push("127.0.0.1:1".to_string());
        let error =
            connect_peers(&longer, 1, 1, Agreement::default(), Duration::from_secs(3)).unwrap_err();
        assert!(
            format!("{error:#}").contains("another [cluster] addresses list"),
            "{error:#}"
        );
        let error = first.join().unwrap().unwrap_err();
        assert!(
            format!("{error:#}").contains("another [cluster] addresses list"),
            "{error:#}"
        );
    }

    /// Connects process 1 (with `second`) to process 0 (with `first`); both must refuse each
    /// other: their messages, process 1's first.
    fn refused_pair(first: Agreement, second: Agreement) -> (String, String) {
        let addresses = free_addresses(2);
        let zero = {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                connect_peers(&addresses, 0, 1, first, Duration::from_secs(3))
            })
        };
        let one = connect_peers(&addresses, 1, 1, second, Duration::from_secs(3)).unwrap_err();
        let zero = zero.join().unwrap().unwrap_err();
        (format!("{one:#}"), format!("{zero:#}"))
    }

    #[test]
    fn a_peer_that_restored_another_checkpoint_is_refused_naming_both() {
        let restored = |restored, first_id| Agreement { restored, first_id };
        let (one, zero) = refused_pair(restored(Some(7), 8), restored(None, 8));
        assert!(
            one.contains("process 0")
                && one.contains("restored checkpoint 7")
                && one.contains("this process started from empty state"),
            "{one}"
        );
        assert!(
            zero.contains("process 1") && zero.contains("started from empty state"),
            "{zero}"
        );

        // The same checkpoint but another first id: a checkpoint came between their starts.
        let (one, zero) = refused_pair(restored(Some(7), 9), restored(Some(7), 8));
        assert!(one.contains("from 9, this process from 8"), "{one}");
        assert!(zero.contains("from 8, this process from 9"), "{zero}");
    }

    #[test]
    fn the_section_is_validated() {
        let mut problems = Vec::new();
        ClusterConfig::new(vec!["a:1".into(), "a:1".into(), "b".into()], 3).validate(&mut problems);
        let text = problems.join("\n");
        assert!(text.contains("`process` = 3"), "{text}");
        assert!(text.contains("listed twice"), "{text}");
        assert!(text.contains("`b` is not host:port"), "{text}");
        let mut problems = Vec::new();
        ClusterConfig::default().validate(&mut problems);
        assert!(problems.is_empty());
        let mut problems = Vec::new();
        ClusterConfig {
            peer_timeout: Millis(500),
            ..ClusterConfig::new(vec!["a:1".into(), "b:1".into()], 0)
        }
        .validate(&mut problems);
        assert!(
            problems.join("\n").contains("`peer_timeout`"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_connection_to_a_peer_gives_up_on_silence() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        notice_silence(&stream, Duration::from_secs(10)).unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(10))
        );
    }
}
