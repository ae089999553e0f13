//! A TCP proxy between a client and PostgreSQL that adds latency and injects faults.
//!
//! Latency makes round trips countable: with a delay D each way, a batch that costs one
//! round trip takes about 2D longer than without. Faults make connection loss reproducible
//! at any byte: [`Fault::CutAfterClientBytes`] lets exactly k bytes of a request through
//! and closes the connection, [`Fault::CutAfterServerBytes`] does the same to the answers,
//! [`Fault::StallAfterClientBytes`] stops the traffic without closing, and
//! [`Fault::RewriteServer`] and [`Fault::RewriteClient`] change what one side said.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A fault armed on the proxy; it fires once, on the first connection whose traffic
/// reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forward the client's bytes that contain `pattern` (and whatever the client sends in
    /// the next moments) to the server, but none of the server's answers from then on;
    /// then close the connection. The server runs what it got, the client never hears.
    CutAfterClientSends {
        /// The bytes to wait for.
        pattern: Vec<u8>,
    },
    /// Forward the client's bytes up to the start of `pattern`, then close the connection:
    /// the server never receives the pattern.
    CutBeforeClientSends {
        /// The bytes to wait for.
        pattern: Vec<u8>,
    },
    /// Forward exactly this many more bytes from the client, then close the connection in
    /// both directions.
    CutAfterClientBytes(u64),
    /// Forward exactly this many more bytes from the server, then close the connection in
    /// both directions.
    CutAfterServerBytes(u64),
    /// Forward exactly this many more bytes from the client, then stop forwarding in both
    /// directions without closing anything: the network stalls, until
    /// [`Proxy::resume_all`] or [`Proxy::kill_all`].
    StallAfterClientBytes(u64),
    /// Forward the client's bytes up to the start of `pattern`, then stall as
    /// [`StallAfterClientBytes`](Fault::StallAfterClientBytes) does: the server has run
    /// the statements before it and waits for the rest.
    StallBeforeClientSends {
        /// The bytes to wait for.
        pattern: Vec<u8>,
    },
    /// When the client's bytes contain `pattern`, forward what comes before it, close the
    /// client's side at once, and deliver the bytes from the pattern on to the server
    /// `after` later: a middlebox (a load balancer, PgBouncer, a stalled path) still
    /// holding a request whose client gave up on the connection. The server's answers are
    /// read and dropped; the server's side closes once the held bytes are delivered.
    DeliverLater {
        /// The bytes to wait for.
        pattern: Vec<u8>,
        /// How long the bytes are held.
        after: Duration,
    },
    /// Replace the first occurrence of `from` in the server's bytes with `to`.
    RewriteServer {
        /// The bytes to find.
        from: Vec<u8>,
        /// What the client gets instead.
        to: Vec<u8>,
    },
    /// Replace the first occurrence of `from` in the client's bytes with `to`: a request
    /// that reaches the server other than it was sent (a statement that then fails as a
    /// cancel would, say).
    RewriteClient {
        /// The bytes to find.
        from: Vec<u8>,
        /// What the server gets instead.
        to: Vec<u8>,
    },
}

impl Fault {
    fn applies_to(&self, direction: Side) -> bool {
        match self {
            Fault::CutAfterServerBytes(_) | Fault::RewriteServer { .. } => direction == Side::Server,
            Fault::CutAfterClientSends { .. }
            | Fault::CutBeforeClientSends { .. }
            | Fault::CutAfterClientBytes(_)
            | Fault::StallAfterClientBytes(_)
            | Fault::StallBeforeClientSends { .. }
            | Fault::DeliverLater { .. }
            | Fault::RewriteClient { .. } => direction == Side::Client,
        }
    }
}

/// Which side's bytes a direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Configures a [`Proxy`].
#[derive(Debug)]
pub struct ProxyBuilder {
    target: SocketAddr,
    delay: Duration,
    precise: bool,
}

impl ProxyBuilder {
    /// Delays every chunk of bytes by `delay`, in each direction, keeping their order.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Keeps delays accurate to microseconds instead of tokio's millisecond timer ticks, by
    /// spinning through the last millisecond of each wait. Costs CPU while bytes are in
    /// flight: meant for latency measurements over a few connections.
    pub fn precise(mut self, precise: bool) -> Self {
        self.precise = precise;
        self
    }

    /// Starts listening on an ephemeral port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// The listener's I/O error.
    pub async fn start(self) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            armed: Mutex::new(None),
            fired: AtomicUsize::new(0),
            client_bytes: AtomicU64::new(0),
            server_bytes: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            delay: self.delay,
            precise: self.precise,
        });
        let target = self.target;
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_shared.accepted.fetch_add(1, Ordering::Relaxed);
                if accept_shared.refusing.load(Ordering::SeqCst) {
                    // Closed at once: the client's start-up meets a closed connection.
                    drop(client);
                    continue;
                }
                let shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        serve(client, server, shared).await;
                    }
                });
            }
        });
        Ok(Proxy { addr, shared, accept })
    }
}

/// A running proxy; it stops accepting when dropped (open connections run to their end).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    armed: Mutex<Option<Armed>>,
    fired: AtomicUsize,
    /// Bytes read from clients, whether or not they were forwarded.
    client_bytes: AtomicU64,
    /// Bytes read from the server, whether or not they were forwarded.
    server_bytes: AtomicU64,
    /// Each connection's switches.
    connections: Mutex<Vec<Weak<Switches>>>,
    /// Connections accepted from clients, cancel requests included.
    accepted: AtomicUsize,
    /// Whether new connections are closed as soon as they are accepted.
    refusing: AtomicBool,
    delay: Duration,
    precise: bool,
}

/// A fault and what is left of it.
#[derive(Debug)]
struct Armed {
    fault: Fault,
    /// Bytes still to forward, for the byte-count faults.
    remaining: u64,
    /// The last bytes seen, for the pattern faults (a pattern can straddle chunks).
    tail: Vec<u8>,
}

/// A connection's kill and stall switches: `kill` closes both directions, `stall` stops
/// them, `mute` drops the server's answers.
#[derive(Debug)]
struct Switches {
    kill: watch::Sender<bool>,
    stall: watch::Sender<bool>,
    mute: watch::Sender<bool>,
    /// Closes the client's side only, while the server's side stays open.
    release_client: watch::Sender<bool>,
}

impl Proxy {
    /// A proxy to `target` (the PostgreSQL server's address).
    pub fn builder(target: SocketAddr) -> ProxyBuilder {
        ProxyBuilder { target, delay: Duration::ZERO, precise: false }
    }

    /// The address clients connect to instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Arms a one-shot fault (replacing one that has not fired).
    pub fn arm(&self, fault: Fault) {
        // Every fault named: a new one must say whether it counts bytes.
        let remaining = match fault {
            Fault::CutAfterClientBytes(n) | Fault::CutAfterServerBytes(n) | Fault::StallAfterClientBytes(n) => n,
            Fault::CutAfterClientSends { .. }
            | Fault::CutBeforeClientSends { .. }
            | Fault::StallBeforeClientSends { .. }
            | Fault::DeliverLater { .. }
            | Fault::RewriteServer { .. }
            | Fault::RewriteClient { .. } => 0,
        };
        *self.shared.armed.lock().expect("proxy lock") = Some(Armed { fault, remaining, tail: Vec::new() });
    }

    /// Disarms a fault that has not fired.
    pub fn disarm(&self) {
        self.shared.armed.lock().expect("proxy lock").take();
    }

    /// How many bytes clients have sent through the proxy so far: a test can show that an
    /// operation sent nothing to the server, or measure a request.
    pub fn client_bytes(&self) -> u64 {
        self.shared.client_bytes.load(Ordering::SeqCst)
    }

    /// How many bytes the server has sent through the proxy so far.
    pub fn server_bytes(&self) -> u64 {
        self.shared.server_bytes.load(Ordering::SeqCst)
    }

    /// Closes every open connection at once, in both directions: whatever a client sends
    /// from now on on those connections never reaches the server.
    pub fn kill_all(&self) {
        for switches in self.live() {
            switches.kill.send_replace(true);
        }
    }

    /// Lets stalled connections flow again.
    pub fn resume_all(&self) {
        for switches in self.live() {
            switches.stall.send_replace(false);
        }
    }

    /// Closes every new connection as soon as it is accepted (`true`), as a server that
    /// refuses connections does, or stops doing so (`false`). Open connections are not
    /// touched.
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
    }

    /// How many connections clients opened through the proxy, cancel requests included
    /// (a cancel request is a connection of its own).
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// How many armed faults have fired so far.
    pub fn cuts(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    fn live(&self) -> Vec<Arc<Switches>> {
        let mut connections = self.shared.connections.lock().expect("proxy lock");
        connections.retain(|c| c.strong_count() > 0);
        connections.iter().filter_map(Weak::upgrade).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How long the client's bytes keep flowing to the server after a `CutAfterClientSends`,
/// so that a request split over several reads arrives whole.
const GRACE: Duration = Duration::from_millis(200);

async fn serve(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // `send_replace` everywhere: a switch must stick even before a direction subscribes.
    let switches = Arc::new(Switches {
        kill: watch::Sender::new(false),
        stall: watch::Sender::new(false),
        mute: watch::Sender::new(false),
        release_client: watch::Sender::new(false),
    });
    shared.connections.lock().expect("proxy lock").push(Arc::downgrade(&switches));
    let direction = |side, read, write| Direction {
        side,
        read,
        write,
        shared: Arc::clone(&shared),
        switches: Arc::clone(&switches),
    };
    tokio::join!(
        direction(Side::Client, client_read, server_write).run(),
        direction(Side::Server, server_read, client_write).run()
    );
}

/// What to do with a chunk.
enum Verdict {
    Forward(Vec<u8>),
    /// Forward these bytes, then close the connection.
    ForwardThenClose(Vec<u8>),
    /// Forward these bytes, then stall the connection.
    ForwardThenStall(Vec<u8>),
    /// Forward the first bytes now and the second after the delay, and close the client's
    /// side at once.
    ForwardThenHold(Vec<u8>, Vec<u8>, Duration),
}

impl Shared {
    /// Applies the armed fault, if it concerns this side, to a chunk.
    fn inspect(&self, side: Side, chunk: &[u8], switches: &Switches) -> Verdict {
        let mut armed = self.armed.lock().expect("proxy lock");
        let Some(state) = armed.as_mut().filter(|a| a.fault.applies_to(side)) else {
            return Verdict::Forward(chunk.to_vec());
        };
        let fire = |armed: &mut Option<Armed>| {
            armed.take();
            self.fired.fetch_add(1, Ordering::SeqCst);
        };
        match &state.fault {
            Fault::CutAfterClientBytes(_) | Fault::CutAfterServerBytes(_) | Fault::StallAfterClientBytes(_) => {
                if (chunk.len() as u64) < state.remaining {
                    state.remaining -= chunk.len() as u64;
                    return Verdict::Forward(chunk.to_vec());
                }
                let prefix = chunk[..state.remaining as usize].to_vec();
                let stall = matches!(state.fault, Fault::StallAfterClientBytes(_));
                fire(&mut armed);
                if stall { Verdict::ForwardThenStall(prefix) } else { Verdict::ForwardThenClose(prefix) }
            }
            Fault::CutAfterClientSends { pattern }
            | Fault::CutBeforeClientSends { pattern }
            | Fault::StallBeforeClientSends { pattern }
            | Fault::DeliverLater { pattern, .. }
            | Fault::RewriteServer { from: pattern, .. }
            | Fault::RewriteClient { from: pattern, .. } => {
                let mut window = std::mem::take(&mut state.tail);
                let tail_len = window.len();
                window.extend_from_slice(chunk);
                let found = window.windows(pattern.len()).position(|w| w == pattern);
                let keep = pattern.len().saturating_sub(1).min(window.len());
                state.tail = window[window.len() - keep..].to_vec();
                let Some(start) = found else { return Verdict::Forward(chunk.to_vec()) };
                let fault = state.fault.clone();
                fire(&mut armed);
                match fault {
                    Fault::CutAfterClientSends { .. } => {
                        switches.mute.send_replace(true);
                        let kill = switches.kill.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(GRACE).await;
                            kill.send_replace(true);
                        });
                        Verdict::Forward(chunk.to_vec())
                    }
                    Fault::RewriteServer { from, to } | Fault::RewriteClient { from, to } if start >= tail_len => {
                        let at = start - tail_len;
                        let mut out = chunk[..at].to_vec();
                        out.extend_from_slice(&to);
                        out.extend_from_slice(&chunk[at + from.len()..]);
                        Verdict::Forward(out)
                    }
                    // A pattern split across chunks cannot be rewritten any more: say so
                    // by closing, rather than pass the original on.
                    Fault::RewriteServer { .. } | Fault::RewriteClient { .. } => Verdict::ForwardThenClose(Vec::new()),
                    Fault::StallBeforeClientSends { .. } => {
                        Verdict::ForwardThenStall(chunk[..start.saturating_sub(tail_len)].to_vec())
                    }
                    Fault::DeliverLater { after, .. } => {
                        let at = start.saturating_sub(tail_len);
                        Verdict::ForwardThenHold(chunk[..at].to_vec(), chunk[at..].to_vec(), after)
                    }
                    Fault::CutBeforeClientSends { .. } => {
                        Verdict::ForwardThenClose(chunk[..start.saturating_sub(tail_len)].to_vec())
                    }
                    Fault::CutAfterClientBytes(_) | Fault::CutAfterServerBytes(_) | Fault::StallAfterClientBytes(_) => {
                        unreachable!("counted faults are matched above")
                    }
                }
            }
        }
    }
}

struct Direction {
    side: Side,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    shared: Arc<Shared>,
    switches: Arc<Switches>,
}

impl Direction {
    /// Reads chunks and hands them to a writer that sends each one `delay` after it was
    /// read, so latency is added without limiting throughput.
    async fn run(self) {
        let Direction { side, mut read, mut write, shared, switches } = self;
        let (delay, precise) = (shared.delay, shared.precise);
        let mut killed = switches.kill.subscribe();
        let mut writer_killed = switches.kill.subscribe();
        let mut stalled = switches.stall.subscribe();
        let muted = switches.mute.subscribe();
        let mut client_released = switches.release_client.subscribe();
        let kill = switches.kill.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, bool)>();
        let writer = async move {
            loop {
                tokio::select! {
                    () = until(&mut writer_killed, true) => break,
                    // The writer toward the client closes the client's side alone.
                    () = until(&mut client_released, true), if side == Side::Server => break,
                    next = rx.recv() => {
                        let Some((due, bytes, close)) = next else { break };
                        wait_until(due, precise).await;
                        if write.write_all(&bytes).await.is_err() {
                            break;
                        }
                        if close {
                            let _ = write.shutdown().await;
                            kill.send_replace(true);
                            break;
                        }
                    }
                }
            }
            let _ = write.shutdown().await;
        };
        let reader = async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                // A stalled connection reads nothing: its bytes wait in the kernel's buffers.
                tokio::select! {
                    () = until(&mut killed, true) => break,
                    () = until(&mut stalled, false) => {}
                }
                let n = tokio::select! {
                    () = until(&mut killed, true) => break,
                    read = read.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                if side == Side::Server && *muted.borrow() {
                    continue;
                }
                let counter = if side == Side::Client { &shared.client_bytes } else { &shared.server_bytes };
                counter.fetch_add(n as u64, Ordering::SeqCst);
                let (bytes, close, stall) = match shared.inspect(side, &buffer[..n], &switches) {
                    Verdict::Forward(bytes) => (bytes, false, false),
                    Verdict::ForwardThenClose(bytes) => (bytes, true, false),
                    Verdict::ForwardThenStall(bytes) => (bytes, false, true),
                    Verdict::ForwardThenHold(now, held, after) => {
                        // The client's side closes now (its reader by leaving this loop);
                        // the server gets the held bytes later, then end of stream.
                        switches.mute.send_replace(true);
                        switches.release_client.send_replace(true);
                        let _ = tx.send((Instant::now() + delay, now, false));
                        let _ = tx.send((Instant::now() + delay + after, held, false));
                        break;
                    }
                };
                if tx.send((Instant::now() + delay, bytes, close)).is_err() || close {
                    break;
                }
                if stall {
                    switches.stall.send_replace(true);
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

/// Waits until the switch reads `value`.
async fn until(switch: &mut watch::Receiver<bool>, value: bool) {
    // The guard `wait_for` returns is not `Send`; drop it here, not across an await.
    let _ = switch.wait_for(|v| *v == value).await.map(|_| ());
}

/// Waits until `due`. tokio's timer fires on millisecond ticks, rounding every wait up;
/// `precise` sleeps to a millisecond before and yields in a loop for the rest.
async fn wait_until(due: Instant, precise: bool) {
    if !precise {
        tokio::time::sleep_until(due).await;
        return;
    }
    let coarse = due.checked_sub(Duration::from_millis(2)).unwrap_or(due);
    if Instant::now() < coarse {
        tokio::time::sleep_until(coarse).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}
