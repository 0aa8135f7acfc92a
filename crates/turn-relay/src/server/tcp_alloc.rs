//! RFC 6062 TCP relays in the core: Connect, ConnectionAttempt and ConnectionBind, the
//! CONNECTION-IDs that name peer connections across workers, and their deadlines. The bytes
//! of a joined connection never pass through here; the I/O layer pipes them.

use std::net::SocketAddr;

use stun::agent::TransactionId;
use stun::attributes::ATTR_CONNECTION_ID;
use stun::message::{
    CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, METHOD_CONNECT, METHOD_CONNECTION_ATTEMPT,
    METHOD_CONNECTION_BIND, Message, Setter,
};
use turn::proto::peeraddr::PeerAddress;

use super::allocation::State;
use super::control::{Refusal, reject};
use super::request::Credentials;
use super::response::{build, error_response, next_txid};
use super::{Client, Command, ConnId, Millis, RelayId, Server};
use crate::metrics::Quota;
use crate::peer_filter::Verdict;

/// How long a connected peer waits for the client's ConnectionBind (RFC 6062 §5.2, §5.3).
pub const CONNECTION_BIND_TIMEOUT_MS: u64 = 30_000;
/// TCP peer connections one allocation may hold, in every state (being connected, waiting
/// for ConnectionBind, piped).
pub const MAX_TCP_CONNECTIONS: usize = 16;

/// An RFC 6062 connection between a TCP relay and a peer.
#[derive(Debug)]
pub(super) struct PeerConn {
    pub(super) relay: RelayId,
    pub(super) peer: SocketAddr,
    pub(super) state: PeerConnState,
}

#[derive(Debug)]
pub(super) enum PeerConnState {
    /// The client's Connect (transaction `txid`) is being carried out.
    Connecting { txid: TransactionId },
    /// Connected; ConnectionBind must come before `deadline`.
    Waiting { deadline: Millis },
    /// Bound: the I/O layer pipes it to a client data connection until
    /// [`Server::pipe_closed`].
    Piped,
}
impl Server {
    /// A CONNECTION-ID not in use, naming this worker.
    pub(super) fn new_conn_id(&mut self) -> ConnId {
        loop {
            self.next_conn = (self.next_conn + 1) & 0x00FF_FFFF;
            let id = ConnId((u32::from(self.worker) << 24) | self.next_conn);
            if self.next_conn != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn tcp_connections(&self, relay: RelayId) -> usize {
        self.conns.values().filter(|c| c.relay == relay).count()
    }

    /// Connect (RFC 6062 §5.2) on allocation `id`, authenticated: check the peer, install its
    /// permission and ask the I/O layer to connect; the answer waits for
    /// [`Server::peer_connected`].
    pub(super) fn connect(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        peer: Option<SocketAddr>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let key = Some(key);
        let (tcp, relay_v4, bind) = match self.allocs.get(id.index()) {
            Some(Some(a)) => (a.tcp, a.public.is_ipv4(), a.bind),
            _ => return Err((reject(437, "Allocation Mismatch"), key)),
        };
        if !tcp {
            return Err((reject(400, "Bad Request: Connect needs a TCP relay"), key));
        }
        let Some(peer) = peer else {
            return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), key));
        };
        if self.cfg.filter.check(peer.ip()) != Verdict::Allowed {
            self.metrics.peers_refused.inc();
            return Err((reject(403, "Forbidden: peer address not allowed"), key));
        }
        if peer.is_ipv4() != relay_v4 {
            return Err((reject(443, "Peer Address Family Mismatch"), key));
        }
        if self.conns.values().any(|c| c.relay == id && c.peer == peer) {
            return Err((reject(446, "Connection Already Exists"), key));
        }
        if self.tcp_connections(id) >= MAX_TCP_CONNECTIONS {
            self.metrics.quota(Quota::Permissions).inc();
            return Err((reject(508, "Insufficient Capacity: connections"), key));
        }
        let perm_exp = now.after_secs(self.cfg.permission_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), key));
        };
        let full = a.perms.len() >= max;
        match a.perms.iter_mut().find(|(ip, _)| *ip == peer.ip()) {
            Some(entry) => entry.1 = entry.1.max(perm_exp),
            None if full => {
                self.metrics.quota(Quota::Permissions).inc();
                return Err((reject(508, "Insufficient Capacity: permissions"), key));
            }
            None => a.perms.push((peer.ip(), perm_exp)),
        }
        let cid = self.new_conn_id();
        self.conns.insert(
            cid,
            PeerConn {
                relay: id,
                peer,
                state: PeerConnState::Connecting { txid },
            },
        );
        self.commands.push_back(Command::ConnectPeer {
            id: cid,
            bind,
            peer,
        });
        Ok(())
    }

    /// The I/O layer's answer to [`Command::ConnectPeer`]: answers the client's Connect.
    /// `false` when the connection is not wanted (any more): the I/O layer closes it.
    pub fn peer_connected(&mut self, id: ConnId, ok: bool, now: Millis) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let PeerConnState::Connecting { txid } = c.state else {
            return false;
        };
        let (client, key) = match self.allocs.get(c.relay.index()) {
            Some(Some(a)) => (a.client, a.key),
            _ => {
                self.conns.remove(&id);
                return false;
            }
        };
        let bytes = if ok {
            c.state = PeerConnState::Waiting {
                deadline: now.after_ms(CONNECTION_BIND_TIMEOUT_MS),
            };
            let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(ConnectionId(id))];
            self.push_software(&mut setters);
            build(
                METHOD_CONNECT,
                CLASS_SUCCESS_RESPONSE,
                txid,
                setters,
                Some(&key),
            )
        } else {
            self.conns.remove(&id);
            error_response(
                METHOD_CONNECT,
                txid,
                &reject(447, "Connection Timeout or Failure"),
                None,
                Some(&key),
            )
        };
        self.reply(client, bytes);
        ok
    }

    /// A peer opened a TCP connection to the relay of `relay` (RFC 6062 §5.3). With a
    /// permission for its address (and the peer filter's consent), the client is told with a
    /// ConnectionAttempt and the connection waits for its ConnectionBind under the returned
    /// id; `None`: the I/O layer closes it.
    pub fn peer_accepted(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Millis,
    ) -> Option<ConnId> {
        let Some(Some(a)) = self.allocs.get(relay.index()) else {
            return None;
        };
        if !a.tcp || !matches!(a.state, State::Active) {
            return None;
        }
        if self.cfg.filter.check(peer.ip()) != Verdict::Allowed {
            self.metrics.peers_refused.inc();
            return None;
        }
        if !a.permitted(peer.ip(), now)
            || self.tcp_connections(relay) >= MAX_TCP_CONNECTIONS
            || self
                .conns
                .values()
                .any(|c| c.relay == relay && c.peer == peer)
        {
            self.stats.dropped += 1;
            return None;
        }
        let client = a.client;
        let id = self.new_conn_id();
        self.conns.insert(
            id,
            PeerConn {
                relay,
                peer,
                state: PeerConnState::Waiting {
                    deadline: now.after_ms(CONNECTION_BIND_TIMEOUT_MS),
                },
            },
        );
        let txid = next_txid(&mut self.data_txid);
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(ConnectionId(id)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
        ];
        let bytes = build(
            METHOD_CONNECTION_ATTEMPT,
            CLASS_INDICATION,
            txid,
            setters,
            None,
        );
        self.reply(client, bytes);
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §5.4) on a new client connection: with the allocation's
    /// credentials and a waiting CONNECTION-ID, the I/O layer joins the two connections.
    pub(super) fn connection_bind(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        txid: TransactionId,
        id: Option<ConnId>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if !from.is_stream() {
            return Err((
                reject(400, "Bad Request: ConnectionBind needs TCP or TLS"),
                None,
            ));
        }
        if self.by_client.contains_key(&from) {
            return Err((
                reject(400, "Bad Request: ConnectionBind on a control connection"),
                None,
            ));
        }
        let id = id.ok_or((reject(400, "Bad Request: CONNECTION-ID"), None))?;
        let relay = match self.conns.get(&id) {
            Some(c) if matches!(c.state, PeerConnState::Waiting { .. }) => c.relay,
            _ => return Err((reject(400, "Bad Request: unknown CONNECTION-ID"), None)),
        };
        let (username, key) = match self.allocs.get(relay.index()) {
            Some(Some(a)) => (a.username.clone(), a.key),
            _ => return Err((reject(400, "Bad Request: unknown CONNECTION-ID"), None)),
        };
        self.authenticate_as(from, creds, now, &username, key)
            .map_err(|r| (r, None))?;
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = PeerConnState::Piped;
        }
        let mut setters: Vec<Box<dyn Setter>> = Vec::new();
        self.push_software(&mut setters);
        let response = build(
            METHOD_CONNECTION_BIND,
            CLASS_SUCCESS_RESPONSE,
            txid,
            setters,
            Some(&key),
        );
        self.commands.push_back(Command::BindConnection {
            to: from,
            relay,
            id,
            response,
        });
        Ok(())
    }

    /// A pipe made for [`Command::BindConnection`] ended (either side closed, or it could
    /// not be set up): the allocation may open another connection in its place.
    pub fn pipe_closed(&mut self, id: ConnId) {
        if self
            .conns
            .get(&id)
            .is_some_and(|c| matches!(c.state, PeerConnState::Piped))
        {
            self.conns.remove(&id);
        }
    }

    /// RFC 6062 connections in every state (tests and metrics).
    pub fn tcp_connection_count(&self) -> usize {
        self.conns.len()
    }
}

/// The CONNECTION-ID attribute (RFC 6062 §6.2.1).
pub(super) struct ConnectionId(ConnId);

impl Setter for ConnectionId {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(ATTR_CONNECTION_ID, &self.0.0.to_be_bytes());
        Ok(())
    }
}
