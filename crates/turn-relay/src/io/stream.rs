//! TCP and TLS clients: one tokio task per connection splits the byte stream into STUN
//! messages and ChannelData frames (RFC 8656 §12.5 padding) and hands them to the engine;
//! a writer task sends the engine's frames back. A connection that sends something that is
//! neither, or stays silent past [`IDLE`], is closed; its allocation goes with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::io::engine::{EngineHandle, EngineMsg, Engines};
use crate::io::tls::TlsReloader;
use crate::metrics::Metrics;
use crate::wire;

/// Longest silence on a client connection. Clients refresh allocations every few minutes
/// and keep permissions alive every 5, so 10 minutes of nothing means the client is gone.
pub const IDLE: Duration = Duration::from_secs(600);
/// Frames queued towards one client before further ones are dropped (like a full UDP buffer).
const OUT_QUEUE: usize = 1024;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accept TCP (and, with `tls`, TLS) connections until the task is aborted. Each connection
/// holds one of `slots` while it lives; with none left, a new connection is closed at once.
pub async fn accept_loop(
    listener: TcpListener,
    engines: Engines,
    metrics: Arc<Metrics>,
    tls: Option<Arc<TlsReloader>>,
    slots: Arc<Semaphore>,
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
        let engine = engines.for_stream(conn).clone();
        match &tls {
            None => {
                metrics.tcp_connections.inc();
                tokio::spawn(async move {
                    serve(stream, peer, conn, engine).await;
                    drop(slot);
                });
            }
            Some(tls) => {
                metrics.tls_connections.inc();
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => serve(s, peer, conn, engine).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Serve one client connection (number `conn`) on the engine that owns it.
pub async fn serve<S>(stream: S, peer: SocketAddr, conn: u64, engine: EngineHandle)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    engine.send(EngineMsg::StreamOpened { conn, tx });
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if w.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    'read: loop {
        match tokio::time::timeout(IDLE, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        let mut start = 0;
        loop {
            match wire::stream_frame_len(&buf[start..]) {
                None => break,
                Some(Err(())) => break 'read,
                Some(Ok(len)) if buf.len() - start >= len => {
                    let frame = buf[start..start + len].to_vec();
                    start += len;
                    engine.send(EngineMsg::StreamFrame { conn, peer, frame });
                }
                Some(Ok(_)) => break,
            }
        }
        buf.drain(..start);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
    }
    engine.send(EngineMsg::StreamClosed { conn, peer });
    writer.abort();
}
