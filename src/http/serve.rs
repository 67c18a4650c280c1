//! The accept loop: HTTP/1.1 (with WebSocket upgrades) on hyper, with the limits a
//! server on the open internet needs and `axum::serve` does not set.
//!
//! - **Slow or silent clients.** A connection has `HTTP_READ_TIMEOUT` to send a request's
//!   headers, an idle keep-alive connection too (its wait for the next request is a header
//!   read), and a request body may pause that long between two of its parts; past it the
//!   connection is closed. Without this, a connection that sent half a request line, or
//!   nothing, stayed open for good, and twenty thousand of them took every file descriptor:
//!   the listener then failed every accept and the server answered no one. The server speaks
//!   HTTP/1.1 (with WebSocket upgrades): hyper's HTTP/2 server has no such timeout, and behind
//!   a proxy that terminates TLS, HTTP/2 ends at the proxy.
//! - **A cap on connections** (`HTTP_MAX_CONNECTIONS`, by default the open-file limit less 256).
//!   A connection holds its permit for as long as its socket lives, through a WebSocket
//!   upgrade; at the cap the loop stops accepting, so new clients wait in the kernel's listen
//!   queue, and the descriptors the database, Redis and media files need stay free. At start
//!   the process raises its soft open-file limit to the hard one.
//! - TCP_NODELAY on every socket (see [`serve`]), and a graceful shutdown that stops accepting
//!   and lets connections finish their requests, as `axum::serve` did.

use std::{
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// Descriptors kept free of connections: the database pool, Redis, media files, logs.
const RESERVED_FDS: u64 = 256;

/// The connection cap: `configured`, or what the open-file limit leaves after [`RESERVED_FDS`]
/// (raised to its hard limit first).
pub fn max_connections(configured: Option<usize>) -> usize {
    if let Some(n) = configured {
        return n;
    }
    let limit = raise_open_file_limit();
    usize::try_from(limit.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX)
}

/// Raises the soft open-file limit to the hard one, as servers do at start; returns the soft
/// limit in force.
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = signal_tx.closed() => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: wait instead of spinning on the error.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            },
            _ = signal_tx.closed() => break,
        };
        // Nagle's algorithm would hold each small write (a subscription's `next` frame, a
        // response) while an earlier one is unacknowledged, and the peer delays its ACK by up to
        // 40 ms: at a thousand frames a second that was most of an event's way to a subscriber.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted socket");
        }
        let probe = SocketProbe(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let io = TokioIo::new(Counted {
            tcp,
            _permit: permit,
        });
        let service = TowerToHyperService::new(app.clone().map_request(
            move |req: hyper::Request<Incoming>| {
                let mut req = req.map(|body| Body::new(TimeoutBody::new(read_timeout, body)));
                req.extensions_mut().insert(ConnectInfo(remote));
                req.extensions_mut().insert(probe);
                req
            },
        ));
        let (signal_tx, close_rx) = (signal_tx.clone(), close_rx.clone());
        tokio::spawn(async move {
            if !http1_begins(&io.inner().tcp, read_timeout).await {
                return;
            }
            // HTTP/1.1 only: behind a proxy that terminates TLS, HTTP/2 ends at the proxy, and
            // hyper's HTTP/2 server has no idle or first-bytes timeout (silent HTTP/2
            // connections held the connection cap, and a graceful shutdown, for good).
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
            let mut signal = pin!(signal_tx.closed());
            let mut draining = false;
            loop {
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            tracing::trace!(error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = &mut signal, if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// Waits, at most `timeout`, for a connection's first bytes; `false` when the client closed,
/// sent nothing in time, or opened with HTTP/2's preface (`PRI * HTTP/2.0`), which this
/// HTTP/1.1 server does not speak. hyper's header timer starts only with the first byte, and
/// hyper answers the preface 505 and then waits on the connection for good.
async fn http1_begins(tcp: &TcpStream, timeout: Duration) -> bool {
    let look = async {
        let mut head = [0u8; 4];
        loop {
            // Returns once anything is readable; 0 at end of stream.
            let n = tcp.peek(&mut head).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(false);
            }
            if n == head.len() || head[..n] != b"PRI "[..n] {
                return Ok(&head[..n] != b"PRI ");
            }
            // A prefix of the preface so far: look again shortly.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    matches!(tokio::time::timeout(timeout, look).await, Ok(Ok(true)))
}

/// A look at a connection's socket: how many bytes sent to the peer its TCP has not yet
/// acknowledged. A peer whose count shrinks is reading, even while a large write to it is under
/// way and its answer to a ping waits behind the data. In every request's extensions; the
/// WebSocket keep-alive reads it (`http::graphql::serve_ws`). The descriptor is only read while
/// the socket lives: the WebSocket that uses it owns the socket.
#[derive(Clone, Copy, Debug)]
pub struct SocketProbe(std::os::fd::RawFd);

impl SocketProbe {
    /// Bytes sent and not yet acknowledged by the peer (`SIOCOUTQ`), or `None` when the kernel
    /// does not say.
    pub fn unacknowledged(&self) -> Option<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer; the descriptor is
        // the connection's socket, alive while its WebSocket runs.
        let rc = unsafe { libc::ioctl(self.0, libc::TIOCOUTQ, &mut n) };
        (rc == 0).then(|| u64::try_from(n).unwrap_or(0))
    }
}

/// An accepted socket and its place under the connection cap, held for as long as the socket
/// lives (a WebSocket upgrade moves it along).
struct Counted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
