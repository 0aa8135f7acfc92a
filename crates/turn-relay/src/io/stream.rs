//! TCP and TLS clients, accepted here: a tokio task per new connection does the TLS handshake
//! and reads the first frame (both bounded in time). A connection whose first frame is not
//! an RFC 6062 ConnectionBind (every control connection) is then handed to its worker, which
//! serves it on the data plane from then on (`io/stream_conn.rs`): the task ends.
//!
//! A data connection (first frame ConnectionBind) keeps its task: it splits the byte stream
//! into STUN messages and ChannelData frames (RFC 8656 §12.5 padding) and hands them to the
//! engine, routed to the worker named in the CONNECTION-ID (which holds the peer connection);
//! a writer task sends the engine's frames back. When the bind succeeds, the engine hands
//! the task the peer connection ([`StreamOut::Pipe`]) and the task stops framing: from then
//! on it only copies bytes between the two (`tcp_relay::pipe`). A connection that sends
//! something that is neither kind of frame, or stays silent past [`IDLE`], is closed; its
//! allocation goes with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::io::handoff::{EngineMsg, Engines, StreamOut};
use crate::io::stream_conn::{Close, RecordEdge};
use crate::io::tcp_relay;
use crate::io::tls::TlsReloader;
use crate::metrics::Metrics;
use crate::server::conn_worker;
use crate::wire;

/// STUN type of a ConnectionBind request (RFC 6062 §6.1).
const CONNECTION_BIND_REQUEST: u16 = 0x000B;

/// The worker a ConnectionBind request is meant for (from its CONNECTION-ID).
fn connection_bind_worker(frame: &[u8]) -> Option<usize> {
    match wire::classify(frame)? {
        wire::Kind::Stun { typ, .. } if typ == CONNECTION_BIND_REQUEST => {}
        _ => return None,
    }
    wire::connection_id(frame).map(conn_worker)
}

/// Longest silence on a client connection. Clients refresh allocations every few minutes
/// and keep permissions alive every 5, so 10 minutes of nothing means the client is gone.
pub const IDLE: Duration = Duration::from_secs(600);
/// Frames queued towards one client before further ones are dropped (like a full UDP buffer).
const OUT_QUEUE: usize = 1024;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A client socket under TLS that follows the record boundaries of everything read from it,
/// handshake included, so that the worker taking the connection over knows whether rustls
/// holds part of a record (`StreamConn::check`).
struct Tracked {
    io: tokio::net::TcpStream,
    edge: RecordEdge,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.edge.feed(&buf.filled()[before..]);
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Read until the buffer holds a whole first frame (within `stall`); the bytes read, and
/// whether that frame is a ConnectionBind.
async fn first_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    stall: Duration,
) -> Result<(Vec<u8>, bool), Close> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            match wire::stream_frame_len(&buf) {
                Some(Err(())) => return Err(Close::Garbage),
                Some(Ok(len)) if buf.len() >= len => {
                    let bind = connection_bind_worker(&buf[..len]).is_some();
                    return Ok(bind);
                }
                _ => {}
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(Close::Gone),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(stall, read).await {
        Ok(Ok(bind)) => Ok((buf, bind)),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(Close::Stalled),
    }
}

/// Accept TCP (and, with `tls`, TLS) connections until the task is aborted. Each connection
/// holds one of `slots` while it lives; with none left, a new connection is closed at once.
/// A connection that does not complete its TLS handshake and first frame within `stall` is
/// closed.
pub async fn accept_loop(
    listener: TcpListener,
    engines: Engines,
    metrics: Arc<Metrics>,
    tls: Option<Arc<TlsReloader>>,
    slots: Arc<Semaphore>,
    stall: Duration,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.stream_connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let engines = engines.clone();
        let metrics = metrics.clone();
        match &tls {
            None => {
                metrics.tcp_connections.inc();
                tokio::spawn(async move {
                    let mut stream = stream;
                    match first_frame(&mut stream, stall).await {
                        Ok((early, true)) => {
                            serve(stream, peer, conn, engines, early).await;
                            drop(slot);
                        }
                        Ok((early, false)) => match stream.into_std() {
                            Ok(sock) => engines.for_stream(conn).send(EngineMsg::StreamAdopt {
                                conn,
                                peer,
                                sock,
                                tls: None,
                                early,
                                slot: Some(slot),
                            }),
                            Err(e) => tracing::debug!(error = %e, "client connection lost"),
                        },
                        Err(why) => metrics.stream_closed(why.as_str()),
                    }
                });
            }
            Some(tls) => {
                metrics.tls_connections.inc();
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let stream = Tracked {
                        io: stream,
                        edge: RecordEdge::default(),
                    };
                    let mut s = match tokio::time::timeout(stall, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            metrics.stream_closed(Close::Garbage.as_str());
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            metrics.stream_closed(Close::Stalled.as_str());
                            return;
                        }
                    };
                    match first_frame(&mut s, stall).await {
                        Ok((early, true)) => {
                            serve(s, peer, conn, engines, early).await;
                            drop(slot);
                        }
                        Ok((early, false)) => {
                            let (Tracked { io, edge }, tls) = s.into_inner();
                            match io.into_std() {
                                Ok(sock) => engines.for_stream(conn).send(EngineMsg::StreamAdopt {
                                    conn,
                                    peer,
                                    sock,
                                    tls: Some((Box::new(tls), edge)),
                                    early,
                                    slot: Some(slot),
                                }),
                                Err(e) => tracing::debug!(error = %e, "client connection lost"),
                            }
                        }
                        Err(why) => metrics.stream_closed(why.as_str()),
                    }
                });
            }
        }
    }
}

/// Serve one RFC 6062 data connection (number `conn`, which sent `early` so far) on the
/// engine that owns it.
pub async fn serve<S>(stream: S, peer: SocketAddr, conn: u64, engines: Engines, early: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let home = engines.index_for_stream(conn);
    // Workers told about this connection: its own, and the one of a ConnectionBind.
    let mut told = vec![home];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StreamOut>(OUT_QUEUE);
    engines.for_stream(conn).send(EngineMsg::StreamOpened {
        conn,
        tx: tx.clone(),
    });
    let (mut r, mut w) = tokio::io::split(stream);
    // The writer hands its half back with the pipe when a ConnectionBind succeeds.
    let (bound_tx, mut bound_rx) = oneshot::channel();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                StreamOut::Frame(frame) => {
                    if w.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                StreamOut::Pipe(pipe) => {
                    if w.write_all(&pipe.response).await.is_ok() {
                        let _ = bound_tx.send((w, pipe));
                        return;
                    }
                    break;
                }
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf: Vec<u8> = early;
    let mut bound = None;
    'read: loop {
        let mut start = 0;
        loop {
            match wire::stream_frame_len(&buf[start..]) {
                None => break,
                Some(Err(())) => break 'read,
                Some(Ok(len)) if buf.len() - start >= len => {
                    let frame = buf[start..start + len].to_vec();
                    start += len;
                    let worker = connection_bind_worker(&frame)
                        .filter(|&i| engines.get(i).is_some())
                        .unwrap_or(home);
                    let Some(engine) = engines.get(worker) else {
                        break 'read;
                    };
                    if !told.contains(&worker) {
                        told.push(worker);
                        engine.send(EngineMsg::StreamOpened {
                            conn,
                            tx: tx.clone(),
                        });
                    }
                    engine.send(EngineMsg::StreamFrame { conn, peer, frame });
                }
                Some(Ok(_)) => break,
            }
        }
        buf.drain(..start);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = tokio::select! {
            got = &mut bound_rx => {
                bound = got.ok();
                break;
            }
            read = tokio::time::timeout(IDLE, r.read_buf(&mut buf)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    drop(tx);
    for &i in &told {
        if let Some(engine) = engines.get(i) {
            engine.send(EngineMsg::StreamClosed { conn, peer });
        }
    }
    match bound {
        Some((w, pipe)) => tcp_relay::pipe(r, w, buf, *pipe).await,
        None => writer.abort(),
    }
}
