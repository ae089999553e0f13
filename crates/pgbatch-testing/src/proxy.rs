//! A TCP proxy between a client and PostgreSQL that adds latency and cuts connections.
//!
//! Latency makes round trips countable: with a delay D each way, a batch that costs one
//! round trip takes about 2D longer than without. Cuts make connection loss reproducible:
//! [`Cut::AfterClientSends`] lets a `COMMIT` reach the server but loses its answer, and
//! [`Cut::BeforeClientSends`] loses the `COMMIT` itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// When to cut the next connection that sends a given byte pattern (for example `COMMIT`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// Forward the client's bytes that contain `pattern` (and whatever the client sends in
    /// the next moments) to the server, but none of the server's answers from then on;
    /// then close the connection. The server runs what it got, the client never hears.
    AfterClientSends {
        /// The bytes to wait for.
        pattern: Vec<u8>,
    },
    /// Forward the client's bytes up to the start of `pattern`, then close the connection:
    /// the server never receives the pattern.
    BeforeClientSends {
        /// The bytes to wait for.
        pattern: Vec<u8>,
    },
}

impl Cut {
    fn pattern(&self) -> &[u8] {
        match self {
            Cut::AfterClientSends { pattern } | Cut::BeforeClientSends { pattern } => pattern,
        }
    }
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
            cuts: AtomicUsize::new(0),
            client_bytes: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            delay: self.delay,
            precise: self.precise,
        });
        let target = self.target;
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
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
    armed: Mutex<Option<Cut>>,
    cuts: AtomicUsize,
    /// Bytes read from clients, whether or not they were forwarded.
    client_bytes: AtomicU64,
    /// Each connection's kill switch.
    connections: Mutex<Vec<Weak<watch::Sender<bool>>>>,
    delay: Duration,
    precise: bool,
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

    /// Arms a one-shot cut: the first connection whose client sends the pattern is cut.
    pub fn arm(&self, cut: Cut) {
        *self.shared.armed.lock().expect("proxy lock") = Some(cut);
    }

    /// Disarms a cut that has not fired.
    pub fn disarm(&self) {
        self.shared.armed.lock().expect("proxy lock").take();
    }

    /// How many bytes clients have sent through the proxy so far: a test can show that an
    /// operation sent nothing to the server.
    pub fn client_bytes(&self) -> u64 {
        self.shared.client_bytes.load(Ordering::SeqCst)
    }

    /// Closes every open connection at once, in both directions: whatever a client sends
    /// from now on on those connections never reaches the server.
    pub fn kill_all(&self) {
        for kill in self.shared.connections.lock().expect("proxy lock").drain(..) {
            if let Some(kill) = kill.upgrade() {
                kill.send_replace(true);
            }
        }
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How long the client's bytes keep flowing to the server after an `AfterClientSends` cut,
/// so that a request split over several reads arrives whole.
const GRACE: Duration = Duration::from_millis(200);

async fn serve(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // `kill` closes the connection; `mute` stops the server's answers from reaching the client.
    // `send_replace` below: the value must stick even before a direction subscribes.
    let kill = Arc::new(watch::Sender::new(false));
    shared.connections.lock().expect("proxy lock").push(Arc::downgrade(&kill));
    let mute = watch::Sender::new(false);
    let muted = mute.subscribe();
    let direction = |read, write, muted| Direction {
        read,
        write,
        delay: shared.delay,
        precise: shared.precise,
        kill: Arc::clone(&kill),
        muted,
    };
    let upstream = direction(client_read, server_write, None);
    let downstream = direction(server_read, client_write, Some(muted));
    let inspect = Inspector { shared: Arc::clone(&shared), tail: Vec::new(), kill, mute };
    tokio::join!(upstream.run(Some(inspect)), downstream.run(None));
}

struct Inspector {
    shared: Arc<Shared>,
    tail: Vec<u8>,
    kill: Arc<watch::Sender<bool>>,
    mute: watch::Sender<bool>,
}

enum Verdict {
    Forward,
    /// Forward the first `n` bytes of the chunk, then close.
    ForwardPrefixThenClose(usize),
}

impl Inspector {
    fn inspect(&mut self, chunk: &[u8]) -> Verdict {
        let mut armed = self.shared.armed.lock().expect("proxy lock");
        let Some(cut) = armed.as_ref() else {
            self.tail.clear();
            return Verdict::Forward;
        };
        let pattern = cut.pattern();
        let mut window = std::mem::take(&mut self.tail);
        let tail_len = window.len();
        window.extend_from_slice(chunk);
        let found = window.windows(pattern.len()).position(|w| w == pattern);
        let keep = pattern.len().saturating_sub(1).min(window.len());
        self.tail = window[window.len() - keep..].to_vec();
        let Some(start) = found else { return Verdict::Forward };
        let cut = armed.take().expect("checked above");
        self.shared.cuts.fetch_add(1, Ordering::SeqCst);
        match cut {
            Cut::AfterClientSends { .. } => {
                self.mute.send_replace(true);
                let kill = Arc::clone(&self.kill);
                tokio::spawn(async move {
                    tokio::time::sleep(GRACE).await;
                    kill.send_replace(true);
                });
                Verdict::Forward
            }
            Cut::BeforeClientSends { .. } => Verdict::ForwardPrefixThenClose(start.saturating_sub(tail_len)),
        }
    }
}

struct Direction {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    delay: Duration,
    precise: bool,
    /// Closes both directions of the connection.
    kill: Arc<watch::Sender<bool>>,
    muted: Option<watch::Receiver<bool>>,
}

impl Direction {
    /// Reads chunks and hands them to a writer that sends each one `delay` after it was
    /// read, so latency is added without limiting throughput.
    async fn run(self, mut inspector: Option<Inspector>) {
        let Direction { mut read, mut write, delay, precise, kill, muted } = self;
        let mut killed = kill.subscribe();
        let mut writer_killed = kill.subscribe();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, bool)>();
        let writer = async move {
            loop {
                tokio::select! {
                    () = until_killed(&mut writer_killed) => break,
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
                let n = tokio::select! {
                    () = until_killed(&mut killed) => break,
                    read = read.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                let is_muted = muted.as_ref().is_some_and(|m| *m.borrow());
                if is_muted {
                    continue;
                }
                if let Some(inspector) = &inspector {
                    inspector.shared.client_bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
                let verdict = inspector.as_mut().map_or(Verdict::Forward, |i| i.inspect(&buffer[..n]));
                let (bytes, close) = match verdict {
                    Verdict::Forward => (buffer[..n].to_vec(), false),
                    Verdict::ForwardPrefixThenClose(prefix) => (buffer[..prefix].to_vec(), true),
                };
                if tx.send((Instant::now() + delay, bytes, close)).is_err() || close {
                    break;
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

async fn until_killed(killed: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not across an await.
    let _ = killed.wait_for(|k| *k).await.map(|_| ());
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
