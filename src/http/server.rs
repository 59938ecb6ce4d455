//! The accept loop of `serve`'s HTTP side: hyper's HTTP/1 connections with its header read
//! timeout, a cap on open connections below the process's open-file limit (room kept for the
//! database pool), and a graceful stop. A client that opens many connections and trickles
//! their headers can hold none of them longer than the header timeout, cannot take the files
//! the database pool needs, and cannot keep a client that sends its request from being
//! served: at the cap, the oldest connection without a request in flight makes room.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rlimit::Resource;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Notify};
use tower::ServiceExt;

use super::HttpConfigError;

/// The default of `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";

/// Open files kept for everything but the HTTP connections, besides the database pool: the
/// listener, the watchdog's and projector's own connections, standard streams, logs.
pub const RESERVED_FILES: u64 = 64;

/// How `serve` treats its HTTP clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a request's line and headers, from its first byte
    /// (or from the previous response on a kept-alive connection); then the connection is
    /// closed.
    pub header_timeout: Duration,
    /// Connections open at once. At the cap, the oldest connection without a request in
    /// flight is closed to make room for a new one; if every one has a request in flight, new
    /// connections wait in the listen backlog instead of taking a file each.
    pub max_connections: usize,
}

impl Limits {
    /// The limits for `serve`: the open-file limit raised to its hard maximum, and the
    /// connection cap `requested` or, by default, that limit less the database pool
    /// (`pool_size` connections) and [`RESERVED_FILES`]. A `requested` cap above that is
    /// refused: it would let clients take the pool's files.
    pub fn for_this_process(
        header_timeout: Duration,
        requested: Option<usize>,
        pool_size: u32,
    ) -> Result<Limits, HttpConfigError> {
        // Raising the soft limit to the hard one is what every server does at start; the
        // hard limit is the administrator's (systemd's LimitNOFILE=).
        let files = rlimit::increase_nofile_limit(u64::MAX)
            .or_else(|_| rlimit::getrlimit(Resource::NOFILE).map(|(soft, _)| soft))
            .unwrap_or(1024);
        let available = files
            .saturating_sub(RESERVED_FILES + u64::from(pool_size))
            .min(usize::MAX as u64) as usize;
        let max_connections = match requested {
            Some(requested) if requested > available => {
                return Err(HttpConfigError::TooManyConnections {
                    requested,
                    available,
                    files,
                })
            }
            Some(requested) => requested,
            None => available,
        };
        if max_connections == 0 {
            return Err(HttpConfigError::TooManyConnections {
                requested: 1,
                available,
                files,
            });
        }
        Ok(Limits {
            header_timeout,
            max_connections,
        })
    }
}

/// The listen backlog asked for: connections the kernel completes while the loop is busy or at
/// the cap. The kernel caps it at `net.core.somaxconn` (4096 by default). Past the backlog it
/// drops connection attempts, which clients retry only after a second; a flood of stalled
/// clients that `--header-timeout` closes together reconnects together, so the queue should
/// hold the whole burst (deploy/retrylog.sysctl.conf raises the cap).
pub const BACKLOG: u32 = 65535;

/// Binds `addr` with [`BACKLOG`] (tokio's `bind` asks for 1024), address reuse as `bind` has.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The backlog the kernel gives [`listen`]: [`BACKLOG`] capped by `net.core.somaxconn`, or
/// `None` where that setting cannot be read (not Linux).
pub fn effective_backlog() -> Option<u32> {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?;
    let somaxconn: u32 = somaxconn.trim().parse().ok()?;
    Some(somaxconn.min(BACKLOG))
}

/// Serves `app` on `listener` until `shutdown` turns true; requests in flight finish (for at
/// most the header timeout and 10 seconds more).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let open = Arc::new(OpenConnections::default());
    let graceful = GracefulShutdown::new();
    loop {
        // 1. A free place first. At the cap, the connection that has waited longest without
        //    a request in flight (a client trickling its headers, or an idle keep-alive) is
        //    closed to make room: clients that send their requests are served however many
        //    stalled ones are held open. Only when every connection has a request in flight
        //    does the loop wait, and the kernel's backlog holds new connections meanwhile.
        tokio::select! {
            () = open.make_room(limits.max_connections) => {}
            () = stop_requested(&mut shutdown) => break,
        }
        // 2. Then a connection. An accept error (the connection reset before it was taken, or
        //    a file limit below the cap, set by someone else) costs a moment, not the loop.
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_requested(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // 3. hyper serves it, counting its requests in flight; closed early if evicted.
        let (id, busy, evicted) = open.register();
        let service = {
            let (app, open) = (app.clone(), open.clone());
            hyper::service::service_fn(move |request| {
                let app = app.clone();
                let in_flight = InFlight::start(&busy, &open);
                async move {
                    let response = app.oneshot(request).await;
                    drop(in_flight);
                    response
                }
            })
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, "HTTP connection ended");
                    }
                }
                // Dropping the connection closes its socket.
                _ = evicted => tracing::debug!("HTTP connection closed to make room"),
            }
            // The select has dropped the connection, and with it the socket.
            open.remove(id);
        });
    }
    drop(listener);
    let grace = limits.header_timeout + Duration::from_secs(10);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {grace:?}: closing them");
    }
    Ok(())
}

/// The open connections, oldest first, each with its requests in flight and the means to
/// close it.
#[derive(Default)]
struct OpenConnections {
    state: Mutex<OpenState>,
    /// Woken when a connection closes or a request ends: room may have appeared.
    changed: Notify,
}

#[derive(Default)]
struct OpenState {
    /// The next connection's id; ids grow, so the map's order is the order of arrival.
    next_id: u64,
    /// By id: the connection's requests in flight, and its eviction.
    connections: BTreeMap<u64, (Arc<AtomicUsize>, oneshot::Sender<()>)>,
    /// Connections evicted whose task has not closed the socket yet: each still holds a file,
    /// so each still counts against the cap. Without them a flood of stalled clients, each
    /// new one evicting an old one, had the loop accept faster than the evicted tasks ran,
    /// and the process ran out of files (EMFILE) above the cap it had computed.
    closing: usize,
}

impl OpenConnections {
    /// Returns once fewer than `cap` connections hold a socket, evicting the oldest
    /// connection without a request in flight if that makes room; the room counts once the
    /// evicted connection's socket is closed.
    async fn make_room(&self, cap: usize) {
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.state.lock().expect("never poisoned");
                if state.connections.len() + state.closing < cap {
                    return;
                }
                let idle = state
                    .connections
                    .iter()
                    .find(|(_, (busy, _))| busy.load(Ordering::Acquire) == 0)
                    .map(|(id, _)| *id);
                if let Some(id) = idle {
                    if let Some((_, evict)) = state.connections.remove(&id) {
                        state.closing += 1;
                        let _ = evict.send(());
                    }
                }
            }
            notified.await;
        }
    }

    /// A new connection: its id, its in-flight counter, and the signal that evicts it.
    fn register(&self) -> (u64, Arc<AtomicUsize>, oneshot::Receiver<()>) {
        let mut state = self.state.lock().expect("never poisoned");
        let id = state.next_id;
        state.next_id += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (evict, evicted) = oneshot::channel();
        state.connections.insert(id, (busy.clone(), evict));
        (id, busy, evicted)
    }

    /// A connection's socket is closed: it was open (it ended by itself), or evicted.
    fn remove(&self, id: u64) {
        let mut state = self.state.lock().expect("never poisoned");
        if state.connections.remove(&id).is_none() {
            state.closing -= 1;
        }
        drop(state);
        self.changed.notify_one();
    }
}

/// One request in flight on a connection, for as long as it lives.
struct InFlight {
    busy: Arc<AtomicUsize>,
    open: Arc<OpenConnections>,
}

impl InFlight {
    fn start(busy: &Arc<AtomicUsize>, open: &Arc<OpenConnections>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        InFlight {
            busy: busy.clone(),
            open: open.clone(),
        }
    }
}

impl Drop for InFlight {
    /// The connection may be evicted again, which a full loop waits for.
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.open.changed.notify_one();
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
