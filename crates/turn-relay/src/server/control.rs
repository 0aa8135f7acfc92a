//! The control plane: one handler per [`Request`] variant (Binding, Allocate, Refresh,
//! CreatePermission, ChannelBind; RFC 6062's Connect and ConnectionBind are in
//! `tcp_alloc.rs`), and the one authentication of a request (nonce, realm, REST username,
//! MESSAGE-INTEGRITY). Refusals become STUN error responses in [`Server::handle_stun`].

use std::net::SocketAddr;
use std::time::Duration;

use stun::agent::TransactionId;
use stun::message::{
    CLASS_SUCCESS_RESPONSE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, Setter,
};
use stun::xoraddr::XorMappedAddress;
use turn::proto::lifetime::Lifetime;

use super::allocation::{Allocation, Bucket, Channel, QuotaRefusal, State, bucket_capacity};
use super::request::{Body, Credentials, Request};
use super::response::{build, error_response};
use super::{Client, Command, EndReason, Event, Millis, RelayId, Server};
use crate::auth::{NonceCheck, long_term_key};
use crate::metrics::Quota;
use crate::peer_filter::Verdict;
use crate::wire;

/// Longest username we look at (RFC 8489: < 513 bytes).
pub(super) const MAX_USERNAME: usize = 512;

/// An authenticated request's credentials.
pub(super) struct Auth {
    pub(super) username: String,
    pub(super) user: String,
    pub(super) key: [u8; 16],
}

/// An error answer: code, reason, and whether to add REALM/NONCE (401/438).
pub(super) struct Reject {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) challenge: bool,
}

/// A refused request: its error answer and, once the request is authenticated, the key that
/// signs the answer.
pub(super) type Refusal = (Reject, Option<[u8; 16]>);

pub(super) const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject {
        code,
        reason,
        challenge: false,
    }
}

impl Server {
    /// A STUN message that is not a Send indication: decode it once into a [`Request`] and
    /// hand it to its method's handler.
    pub(super) fn handle_stun(&mut self, from: Client, msg: &[u8], typ: u16, now: Millis) {
        // Only requests get answers; stray responses and other indications are ignored
        // before the codec copies them.
        if !wire::is_request(typ) {
            return;
        }
        let Some(Request {
            txid,
            method,
            body,
            mut credentials,
        }) = Request::decode(msg)
        else {
            return;
        };
        let creds = &mut credentials;
        let result = match body {
            Body::Binding => {
                self.binding(from, txid);
                Ok(())
            }
            Body::Allocate {
                transport,
                ipv6,
                lifetime,
            } => self.allocate(from, creds, txid, transport, ipv6, lifetime, now),
            Body::Refresh { lifetime } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.refresh(from, id, key, txid, lifetime, now)),
            Body::CreatePermission { peers } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.create_permission(from, id, key, txid, peers, now)),
            Body::ChannelBind { number, peer } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.channel_bind(from, id, key, txid, number, peer, now)),
            Body::Connect { peer } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.connect(id, key, txid, peer, now)),
            Body::ConnectionBind { id } => self.connection_bind(from, creds, txid, id, now),
            // RFC 8489 §6.3.1: an unknown method is a 400, said at once instead of letting the
            // client wait for its retransmission timeout.
            Body::Unsupported => Err((reject(400, "Bad Request: method not supported"), None)),
        };
        if let Err((r, key)) = result {
            let nonce = r
                .challenge
                .then(|| self.nonce.issue(from.addr.ip(), now.unix_secs()));
            let bytes = error_response(
                method,
                txid,
                &r,
                nonce.as_deref().map(|n| (self.cfg.realm.as_str(), n)),
                key.as_ref(),
            );
            self.reply(from, bytes);
        }
    }

    pub(super) fn refused(&mut self, from: Client, r: &Reject) {
        self.commands.push_back(Command::Event(Event::Refused {
            client: from.addr,
            code: r.code,
            reason: r.reason,
        }));
    }

    /// Binding (RFC 8489): the client's reflexive address, no authentication.
    pub(super) fn binding(&mut self, from: Client, txid: TransactionId) {
        let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(XorMappedAddress {
            ip: from.addr.ip(),
            port: from.addr.port(),
        })];
        self.push_software(&mut setters);
        let bytes = build(METHOD_BINDING, CLASS_SUCCESS_RESPONSE, txid, setters, None);
        self.reply(from, bytes);
    }

    /// Check nonce, realm, REST username (and expiry) and MESSAGE-INTEGRITY: the one
    /// authentication of a request. `known` short-cuts the key derivation for an existing
    /// allocation's username.
    pub(super) fn authenticate(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
        known: Option<(&str, [u8; 16])>,
    ) -> Result<Auth, Reject> {
        let challenge = |code, reason| Reject {
            code,
            reason,
            challenge: true,
        };
        if !creds.integrity {
            return Err(challenge(401, "Unauthorized"));
        }
        let (Some(username), Some(realm), Some(nonce)) =
            (&creds.username, &creds.realm, &creds.nonce)
        else {
            return Err(reject(
                400,
                "Bad Request: USERNAME, REALM and NONCE required",
            ));
        };
        match self
            .nonce
            .check(nonce.as_bytes(), from.addr.ip(), now.unix_secs())
        {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => return Err(challenge(438, "Stale Nonce")),
        }
        if *realm != self.cfg.realm {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized: wrong realm"));
        }
        if username.len() > MAX_USERNAME {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized"));
        }
        let user = match hermes_proto::turn_credentials::check_username(username, now.unix_secs()) {
            Ok((_, user)) => user.to_string(),
            Err(hermes_proto::ProtoError::TurnCredentialsExpired) => {
                self.metrics.auth_failures.inc();
                return Err(challenge(401, "Unauthorized: credentials expired"));
            }
            Err(_) => {
                self.metrics.auth_failures.inc();
                return Err(challenge(401, "Unauthorized: not a REST username"));
            }
        };
        let key = match known {
            Some((name, key)) if name == username => key,
            _ => long_term_key(self.cfg.secret.expose(), username, &self.cfg.realm),
        };
        let username = username.clone();
        if !creds.integrity_ok(&key) {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized"));
        }
        Ok(Auth {
            username,
            user,
            key,
        })
    }

    /// [`Server::authenticate`] for a request that must carry an existing allocation's
    /// credentials (`username`, `key`): another valid username is 441.
    pub(super) fn authenticate_as(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
        username: &str,
        key: [u8; 16],
    ) -> Result<(), Reject> {
        let auth = self.authenticate(from, creds, now, Some((username, key)))?;
        if auth.username != username {
            self.metrics.auth_failures.inc();
            return Err(reject(441, "Wrong Credentials"));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        txid: TransactionId,
        transport: Option<u8>,
        v6: bool,
        lifetime: Option<u32>,
        now: Millis,
    ) -> Result<(), Refusal> {
        // A retransmitted Allocate gets the same answer (RFC 8656 §7.2), without re-auth.
        if let Some(&id) = self.by_client.get(&from)
            && let Some(Some(a)) = self.allocs.get(id.index())
        {
            if a.allocate_txid == txid {
                if matches!(a.state, State::Active) {
                    let bytes = a.allocate_response.clone();
                    self.reply(from, bytes);
                }
                return Ok(());
            }
            let key = a.key;
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        }
        let auth = match self.authenticate(from, creds, now, None) {
            Ok(a) => a,
            Err(r) => {
                if r.code == 401 && creds.integrity {
                    self.refused(from, &r);
                }
                return Err((r, None));
            }
        };
        let key = Some(auth.key);
        let fail = |this: &mut Self, r: Reject| {
            this.refused(from, &r);
            Err((r, key))
        };
        let tcp = match transport {
            None => {
                return Err((
                    reject(400, "Bad Request: REQUESTED-TRANSPORT required"),
                    key,
                ));
            }
            Some(17) => false,
            // RFC 6062 §5.1: a TCP relay only for a client that came over TCP or TLS.
            Some(6) if !self.cfg.tcp_relay => {
                return Err((reject(442, "Unsupported Transport Protocol"), key));
            }
            Some(6) if from.is_stream() => true,
            Some(6) => {
                return Err((
                    reject(400, "Bad Request: TCP relay needs a TCP or TLS connection"),
                    key,
                ));
            }
            Some(_) => return Err((reject(442, "Unsupported Transport Protocol"), key)),
        };
        if self.draining {
            return fail(self, reject(508, "Insufficient Capacity: draining"));
        }
        let Some(relay_ip) = (if v6 {
            self.cfg.relay_v6
        } else {
            self.cfg.relay_v4
        }) else {
            return Err((reject(440, "Address Family not Supported"), key));
        };
        let lifetime = self.lifetime(lifetime);
        if lifetime == 0 {
            return Err((reject(400, "Bad Request: zero lifetime"), key));
        }
        match self
            .ledger
            .reserve(&auth.user, self.cfg.user_quota, self.cfg.total_quota)
        {
            Ok(()) => {}
            Err(QuotaRefusal::Total) => {
                self.metrics.quota(Quota::TotalAllocations).inc();
                return fail(self, reject(508, "Insufficient Capacity"));
            }
            Err(QuotaRefusal::User) => {
                self.metrics.quota(Quota::UserAllocations).inc();
                return fail(self, reject(486, "Allocation Quota Reached"));
            }
        }
        let Some(port) = self.pick_port(v6) else {
            self.ledger.release(&auth.user);
            return fail(self, reject(508, "Insufficient Capacity: no relay port"));
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.allocs.push(None);
                RelayId((self.allocs.len() - 1) as u32)
            }
        };
        let bind = SocketAddr::new(relay_ip.bind, port);
        let user: Box<str> = auth.user.into();
        let burst = bucket_capacity(self.cfg.max_bps);
        self.allocs[id.index()] = Some(Allocation {
            client: from,
            username: auth.username.into(),
            user,
            key: auth.key,
            public: SocketAddr::new(relay_ip.public, port),
            bind,
            state: State::Opening { txid, attempts: 0 },
            lifetime,
            expires: Millis::NEVER,
            allocate_txid: txid,
            allocate_response: Vec::new(),
            perms: Vec::new(),
            channels: Vec::new(),
            up: Bucket {
                tokens: burst,
                last: now,
            },
            down: Bucket {
                tokens: burst,
                last: now,
            },
            packets: 0,
            bytes: 0,
            tcp,
        });
        self.by_client.insert(from, id);
        self.commands.push_back(Command::OpenRelay {
            relay: id,
            bind,
            tcp,
        });
        Ok(())
    }

    /// The granted lifetime (seconds) for a requested one: capped at the maximum, raised to
    /// the default; 0 stays 0 (delete).
    pub(super) fn lifetime(&self, requested: Option<u32>) -> u32 {
        let default = self.cfg.default_lifetime.min(self.cfg.max_lifetime);
        match requested {
            Some(secs) => match secs.min(self.cfg.max_lifetime) {
                0 => 0,
                secs => secs.max(default),
            },
            None => default,
        }
    }

    /// The active allocation of `from`, with the request authenticated by its credentials
    /// (Refresh, CreatePermission, ChannelBind, Connect).
    pub(super) fn on_allocation(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
    ) -> Result<(RelayId, [u8; 16]), Refusal> {
        let Some(&id) = self.by_client.get(&from) else {
            return Err((reject(437, "Allocation Mismatch"), None));
        };
        let (username, key) = match self.allocs.get(id.index()) {
            Some(Some(a)) if matches!(a.state, State::Active) => (a.username.clone(), a.key),
            _ => return Err((reject(437, "Allocation Mismatch"), None)),
        };
        self.authenticate_as(from, creds, now, &username, key)
            .map_err(|r| (r, None))?;
        Ok((id, key))
    }

    /// Refresh (RFC 8656 §7): a new lifetime, or 0 to delete the allocation.
    pub(super) fn refresh(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        requested: Option<u32>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let lifetime = self.lifetime(requested);
        if lifetime == 0 {
            self.remove(id, EndReason::ClientDeleted);
        } else if let Some(Some(a)) = self.allocs.get_mut(id.index()) {
            a.expires = now.after_secs(lifetime);
        }
        let setters: Vec<Box<dyn Setter>> =
            vec![Box::new(Lifetime(Duration::from_secs(lifetime as u64)))];
        self.succeed(from, METHOD_REFRESH, txid, setters, key);
        Ok(())
    }

    /// Refuse peers the filter refuses (403, whatever their family), then peers of the
    /// other family than the relay (443).
    pub(super) fn check_peers(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        peers: &[SocketAddr],
    ) -> Result<(), Refusal> {
        let relay_v4 = match self.allocs.get(id.index()) {
            Some(Some(a)) => a.public.is_ipv4(),
            _ => return Err((reject(437, "Allocation Mismatch"), Some(key))),
        };
        for p in peers {
            if self.cfg.filter.check(p.ip()) != Verdict::Allowed {
                self.metrics.peers_refused.inc();
                return Err((
                    reject(403, "Forbidden: peer address not allowed"),
                    Some(key),
                ));
            }
        }
        if peers.iter().any(|p| p.is_ipv4() != relay_v4) {
            return Err((reject(443, "Peer Address Family Mismatch"), Some(key)));
        }
        Ok(())
    }

    /// Install or refresh permissions for `peers` on allocation `id` (within the quota).
    pub(super) fn permit(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        peers: &[SocketAddr],
        now: Millis,
    ) -> Result<(), Refusal> {
        let perm_exp = now.after_secs(self.cfg.permission_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        };
        let new = peers
            .iter()
            .filter(|p| !a.perms.iter().any(|(ip, _)| *ip == p.ip()))
            .count();
        if a.perms.len() + new > max {
            self.metrics.quota(Quota::Permissions).inc();
            return Err((reject(508, "Insufficient Capacity: permissions"), Some(key)));
        }
        for p in peers {
            match a.perms.iter_mut().find(|(ip, _)| *ip == p.ip()) {
                Some(entry) => entry.1 = perm_exp,
                None => a.perms.push((p.ip(), perm_exp)),
            }
        }
        Ok(())
    }

    /// CreatePermission (RFC 8656 §9).
    pub(super) fn create_permission(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        peers: Option<Vec<SocketAddr>>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let peers = match peers {
            Some(p) if !p.is_empty() => p,
            _ => return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), Some(key))),
        };
        self.check_peers(id, key, &peers)?;
        self.permit(id, key, &peers, now)?;
        self.succeed(from, METHOD_CREATE_PERMISSION, txid, Vec::new(), key);
        Ok(())
    }

    /// ChannelBind (RFC 8656 §12): binds (or refreshes) a channel number to one peer, and
    /// installs or refreshes that peer's permission.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn channel_bind(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        number: Option<u16>,
        peer: Option<SocketAddr>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if matches!(self.allocs.get(id.index()), Some(Some(a)) if a.tcp) {
            return Err((
                reject(400, "Bad Request: no channels on a TCP relay"),
                Some(key),
            ));
        }
        let Some(peer) = peer else {
            return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), Some(key)));
        };
        self.check_peers(id, key, &[peer])?;
        let Some(number) = number.filter(|n| (0x4000..=0x7FFF).contains(n)) else {
            return Err((reject(400, "Bad Request: CHANNEL-NUMBER"), Some(key)));
        };
        let chan_exp = now.after_secs(self.cfg.channel_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        };
        let by_num = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        match (by_num, by_peer) {
            (Some(i), Some(j)) if i == j => a.channels[i].expires = chan_exp,
            (None, None) => {
                if a.channels.len() >= max {
                    self.metrics.quota(Quota::Permissions).inc();
                    return Err((reject(508, "Insufficient Capacity: channels"), Some(key)));
                }
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: chan_exp,
                });
            }
            _ => {
                return Err((
                    reject(400, "Bad Request: channel bound to another peer"),
                    Some(key),
                ));
            }
        }
        self.permit(id, key, &[peer], now)?;
        self.succeed(from, METHOD_CHANNEL_BIND, txid, Vec::new(), key);
        Ok(())
    }
}
