//! RFC 6062 TCP relays, on the tokio side: the relay's listener (peers connecting in), the
//! connections the server opens to peers on a client's Connect, and the byte pipe that joins a
//! client's data connection with its peer connection once ConnectionBind succeeded.
//!
//! The engine thread owns the decisions (its sans-IO core says which connection may be made,
//! announced, bound or dropped); the tasks here only do the socket work and report back with
//! [`EngineMsg`]s. Piped bytes never cross into the engine: they go straight from one socket
//! to the other, counted in the same metrics as datagrams and held to the same per-allocation
//! bandwidth cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hermes_service::metrics::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::io::handoff::{Budget, EngineHandle, EngineMsg, Pipe};
use crate::server::{ConnId, RelayId};

/// How long the server tries to reach a peer on Connect before answering 447.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size of a pipe direction.
const PIPE_CHUNK: usize = 16 * 1024;

/// One TCP relay's listener task, the switch that closes its piped connections when the
/// allocation ends, and the bandwidth budget its pipes share.
#[derive(Debug)]
pub struct TcpRelay {
    pub bind: SocketAddr,
    accept: tokio::task::AbortHandle,
    closed: watch::Sender<bool>,
    budget: Arc<Budget>,
}

impl TcpRelay {
    /// A receiver that sees `true` (or the relay dropped) when the allocation ends.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.closed.send(true);
    }
}

/// A TCP socket bound to a relay address. SO_REUSEPORT lets the connections the server opens
/// to peers share the listener's address, as RFC 6062 requires (the peer sees the relayed
/// transport address).
fn relay_socket(bind: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
    if bind.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(s)
}

/// Listen on `bind` for relay `relay`; accepted peers are reported to `engine`.
pub fn listen(
    rt: &Handle,
    relay: RelayId,
    bind: SocketAddr,
    max_bps: u64,
    engine: EngineHandle,
) -> std::io::Result<TcpRelay> {
    let s = relay_socket(bind)?;
    s.listen(64)?;
    let std_listener: std::net::TcpListener = s.into();
    let listener = {
        let _guard = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    let accept = rt
        .spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        engine.send(EngineMsg::PeerAccepted {
                            relay,
                            bind,
                            peer,
                            stream,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TCP relay accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .abort_handle();
    let (closed, _) = watch::channel(false);
    Ok(TcpRelay {
        bind,
        accept,
        closed,
        budget: Arc::new(Budget::new(max_bps)),
    })
}

/// Connect from relay address `bind` to `peer` (bounded by [`CONNECT_TIMEOUT`]) and report
/// the outcome of connection `id` to `engine`.
pub fn connect(rt: &Handle, id: ConnId, bind: SocketAddr, peer: SocketAddr, engine: EngineHandle) {
    rt.spawn(async move {
        let stream = async {
            let s = relay_socket(bind)?;
            let socket = TcpSocket::from_std_stream(s.into());
            socket.connect(peer).await
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, stream).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TCP relay connect failed");
                None
            }
            Err(_) => None,
        };
        engine.send(EngineMsg::PeerConnected { id, stream });
    });
}

/// Join a client's data connection with its peer until both sides are done or the
/// allocation ends. `early` holds bytes the client sent after ConnectionBind that were
/// already read; they go to the peer first.
pub async fn pipe<R, W>(mut from_client: R, mut to_client: W, early: Vec<u8>, pipe: Pipe)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Pipe {
        peer,
        mut closed,
        budget,
        metrics,
        done: _done,
        ..
    } = pipe;
    let (mut from_peer, mut to_peer) = peer.into_split();
    let up = async {
        if !early.is_empty() {
            to_peer.write_all(&early).await?;
            metrics.packets_to_peer.inc();
            metrics.bytes_to_peer.add(early.len() as u64);
        }
        copy(
            &mut from_client,
            &mut to_peer,
            (&budget, true),
            &metrics.packets_to_peer,
            &metrics.bytes_to_peer,
        )
        .await
    };
    let down = copy(
        &mut from_peer,
        &mut to_client,
        (&budget, false),
        &metrics.packets_to_client,
        &metrics.bytes_to_client,
    );
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}

/// Copy until end of stream (then half-close the writer), counting each read as a packet and
/// holding to the allocation's budget for this direction.
async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    (budget, to_peer): (&Budget, bool),
    packets: &Counter,
    bytes: &Counter,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        packets.inc();
        bytes.add(n as u64);
        if let Some(wait) = budget.take(to_peer, n) {
            tokio::time::sleep(wait).await;
        }
    }
}
