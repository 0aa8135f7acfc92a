//! One WebSocket connection: a thin loop around [`crate::room::Conn`] that reads frames,
//! talks to the [`crate::hub::Hub`], forwards deliveries and runs the timers. The rules (what
//! a frame means, who is admitted or refused with which codes, which channel frames reach the
//! client, which event is logged) are `room`'s; this file carries them out on the socket and
//! the hub.
//!
//! Life of a connection: upgrade → `join` within the join timeout (token verified, seat taken
//! in Redis, subscribed to the call's channel *before* the seat is taken so nothing published
//! afterwards is missed) → `joined` → replay from the senders' logs if resuming → relay loop → on exit the seat
//! is marked away (peers see `peer-reconnecting`) unless the call ended or another connection
//! replaced this one. SIGTERM closes with 1012.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use hermes_proto::signal::{
    CLOSE_CALL_ENDED, CLOSE_POLICY_VIOLATION, CLOSE_REPLACED, CLOSE_SERVICE_RESTART,
    CLOSE_UNAUTHORIZED, ServerMessage, SignalErrorCode,
};
use hermes_proto::{CallEvent, CallId};
use hermes_service::unix_now_ms;
use rand::RngCore;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::hub::{DELIVERY_QUEUE, Delivery, JoinOutcome, RelayOutcome, Resume};
use crate::room::{self, Admission, Conn, Decision, Fences, JoinStep, Refusal, Relay, Seat, Tick};
use crate::state::{AppState, SessionGuard};

/// Close code after the client's `leave` (RFC 6455 1000, normal closure).
const CLOSE_NORMAL: u16 = 1000;
/// Close code for an internal failure (RFC 6455 1011).
const CLOSE_INTERNAL: u16 = 1011;
/// Close code for a message above [`crate::HARD_MESSAGE_LIMIT`] (RFC 6455 1009).
const CLOSE_TOO_BIG: u16 = 1009;

/// How long a server-initiated close waits for the client's Close frame, reading and dropping
/// whatever the client still sends. Closing the socket with unread data makes the kernel send
/// a TCP reset, which can destroy our Close frame (and the replies before it) before the client
/// reads them; a client that saw 1006 instead of 1008 would reconnect. A client that never
/// answers costs at most this long.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How the connection ended, for the seat bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The client went away or was closed: its seat waits for a resume.
    Away,
    /// Closed for good (the client's `leave`, 1008 abuse, 1009 too big): the seat is freed
    /// at once and the others hear `peer-left` with this reason.
    Left(&'static str),
    /// The call ended or another connection took the seat: nothing to mark.
    Final,
}

/// `peer-left` reasons of terminal closes.
const LEFT_POLICY_VIOLATION: &str = "policy-violation";
const LEFT_MESSAGE_TOO_BIG: &str = "message-too-big";
/// The client sent `leave`.
const LEFT_BY_CLIENT: &str = "left";

struct Joined {
    seat: Seat,
    /// Set by the router when it had to drop a delivery (queue full).
    resync: Arc<AtomicBool>,
    rx: mpsc::Receiver<Delivery>,
    /// This connection's next `seq` (numbers are per sender; the join set the first).
    next_seq: u64,
    relayed: u64,
    delivered: u64,
}

struct Session {
    state: Arc<AppState>,
    socket: WebSocket,
    conn: Conn,
    id: u64,
    conn_id: Arc<str>,
    joined: Option<Joined>,
    /// We sent a Close frame: the handshake is completed in [`Session::linger`].
    close_sent: bool,
}

fn random_conn_id() -> Arc<str> {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Run one connection to completion.
pub async fn run(socket: WebSocket, state: Arc<AppState>) {
    let _guard = SessionGuard::new(state.clone());
    let mut session = Session {
        conn: Conn::new(state.config.limits, unix_now_ms()),
        id: state.next_id(),
        conn_id: random_conn_id(),
        state,
        socket,
        joined: None,
        close_sent: false,
    };
    let exit = session.run().await;
    session.finish(exit).await;
    session.linger().await;
}

async fn recv_delivery(rx: Option<&mut mpsc::Receiver<Delivery>>) -> Option<Delivery> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(&mut self) -> Exit {
        let limits = self.state.config.limits;
        let ping_every = Duration::from_millis((limits.idle_timeout_ms / 3).max(100));
        // One timer for the life of the connection, reset after each tick (not re-created per
        // message).
        let timer = tokio::time::sleep(Duration::from_millis(limits.join_timeout_ms));
        tokio::pin!(timer);
        let stop = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(stop);
        loop {
            let rx = self.joined.as_mut().map(|j| &mut j.rx);
            tokio::select! {
                frame = self.socket.recv() => {
                    let now = unix_now_ms();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(exit) = self.on_text(&text, now).await {
                                return exit;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let d = self.conn.on_binary_frame(now);
                            if let Some(exit) = self.decide(d, now).await {
                                return exit;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => self.conn.on_activity(now),
                        Some(Ok(Message::Close(_))) | None => return Exit::Away,
                        Some(Err(e)) => {
                            let too_big = e.to_string().to_ascii_lowercase().contains("too long")
                                || e.to_string().to_ascii_lowercase().contains("capacity");
                            if too_big {
                                self.close(CLOSE_TOO_BIG, "message too big").await;
                                return Exit::Left(LEFT_MESSAGE_TOO_BIG);
                            }
                            return Exit::Away;
                        }
                    }
                }
                delivery = recv_delivery(rx) => {
                    match delivery {
                        Some(d) => {
                            if let Some(exit) = self.on_delivery(d).await {
                                return exit;
                            }
                            let lagged = self
                                .joined
                                .as_ref()
                                .is_some_and(|j| j.resync.swap(false, Ordering::Relaxed));
                            if lagged {
                                self.conn.open_presence();
                                if let Err(exit) = self.replay().await {
                                    return exit;
                                }
                            }
                        }
                        None => {
                            self.close(CLOSE_INTERNAL, "hub stopped").await;
                            return Exit::Away;
                        }
                    }
                }
                () = &mut timer => {
                    let now = unix_now_ms();
                    match self.conn.on_tick(now) {
                        Tick::Close(code, reason) => {
                            if code == CLOSE_UNAUTHORIZED {
                                self.send_error(SignalErrorCode::Unauthorized, reason).await;
                            }
                            self.close(code, reason).await;
                            return Exit::Away;
                        }
                        Tick::Ping => {
                            if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                                return Exit::Away;
                            }
                        }
                        Tick::Nothing => {}
                    }
                    self.flush_ack().await;
                    timer.as_mut().reset(Instant::now() + if self.joined.is_some() {
                        ping_every
                    } else {
                        Duration::from_millis(limits.join_timeout_ms)
                    });
                }
                () = &mut stop => {
                    self.close(CLOSE_SERVICE_RESTART, "service restart; reconnect and resume").await;
                    return Exit::Away;
                }
            }
        }
    }

    async fn on_text(&mut self, text: &str, now: u64) -> Option<Exit> {
        let d = self.conn.on_frame(text, now);
        self.decide(d, now).await
    }

    async fn decide(&mut self, decision: Decision, now: u64) -> Option<Exit> {
        match decision {
            Decision::Join {
                token,
                last_seq,
                last_seqs,
                call_id,
            } => {
                let resume = Resume {
                    last_seq,
                    per_sender: last_seqs,
                };
                self.join(&token, resume, call_id, now).await
            }
            Decision::Relay(relay) => self.relay(relay, now).await,
            Decision::Ack(_) => None,
            Decision::Leave => {
                self.close(CLOSE_NORMAL, "left").await;
                Some(Exit::Left(LEFT_BY_CLIENT))
            }
            Decision::Pong(ts) => {
                self.send(&ServerMessage::Pong { ts }).await;
                None
            }
            Decision::Stats(stats) => {
                if let Some(j) = &self.joined {
                    let mut detail = match serde_json::to_value(&stats) {
                        Ok(serde_json::Value::Object(fields)) => fields,
                        _ => serde_json::Map::new(),
                    };
                    detail.insert("participantId".into(), json!(j.seat.participant));
                    detail.insert("role".into(), json!(j.seat.role));
                    self.state
                        .events
                        .publish(Some(&j.seat.call), CallEvent::CallStats(detail));
                }
                None
            }
            Decision::Reply(code, message) => {
                self.send_error(code, &message).await;
                None
            }
            Decision::Close {
                error,
                message,
                code,
            } => {
                self.send_error(error, &message).await;
                if code == CLOSE_POLICY_VIOLATION {
                    self.state.metrics.abuse_closes.inc();
                    let call = self.joined.as_ref().map(|j| j.seat.call.clone());
                    self.state.events.publish(
                        call.as_ref(),
                        CallEvent::PeerAbuse {
                            reason: message.to_string(),
                        },
                    );
                }
                self.close(code, "policy violation").await;
                Some(if code == CLOSE_POLICY_VIOLATION {
                    Exit::Left(LEFT_POLICY_VIOLATION)
                } else {
                    Exit::Away
                })
            }
        }
    }

    /// The join flow: room decides (token, admission, log event), this does the I/O (verify,
    /// subscribe, the join script, `joined`, the replay).
    async fn join(
        &mut self,
        token: &str,
        resume: Resume,
        call_id: Option<CallId>,
        now: u64,
    ) -> Option<Exit> {
        let state = self.state.clone();
        let verified = state.keys.verify(token, now / 1000);
        let seat = match self.conn.on_token(verified, call_id.as_ref()) {
            Ok(seat) => seat,
            Err(refusal) => return Some(self.refuse(refusal).await),
        };
        let (tx, rx) = mpsc::channel(DELIVERY_QUEUE);
        let resync = Arc::new(AtomicBool::new(false));
        // Subscribe first: everything published after the seat is taken reaches us.
        let subscribed = state
            .hub
            .register(
                self.id,
                &seat.call,
                &seat.participant,
                seat.role,
                self.conn_id.clone(),
                tx,
                resync.clone(),
            )
            .await;
        let mut first_seq = 0;
        let mut call_fences = Fences::default();
        let (admission, peers) = match subscribed {
            Err(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                (Admission::Unavailable, Vec::new())
            }
            Ok(()) => match state
                .hub
                .join(
                    &seat.call,
                    &seat.participant,
                    seat.role,
                    &self.conn_id,
                    &resume,
                    now,
                )
                .await
            {
                Ok(JoinOutcome::Admitted {
                    resumed,
                    next_seq,
                    after,
                    fences,
                    peers,
                }) => {
                    first_seq = next_seq;
                    // The router may have subscribed after these fences' `seat` markers: it
                    // gets them with `seated`, and this connection drops what the router
                    // routed to it before that.
                    call_fences = fences.clone();
                    (
                        Admission::Admitted {
                            resumed,
                            after,
                            fences,
                        },
                        peers,
                    )
                }
                Ok(JoinOutcome::Full) => (Admission::Full, Vec::new()),
                Ok(JoinOutcome::Ended) => (Admission::Ended, Vec::new()),
                Err(e) => {
                    tracing::warn!(error = %e, "join script failed");
                    (Admission::Unavailable, Vec::new())
                }
            },
        };
        if admission == Admission::Unavailable {
            state.metrics.redis_errors.inc();
        }
        let resumed = match self.conn.on_admission(seat.clone(), admission) {
            JoinStep::Seated { resumed } => resumed,
            JoinStep::Refuse(refusal) => {
                state.hub.unregister(self.id, &seat.call);
                return Some(self.refuse(refusal).await);
            }
        };
        state.hub.seated(self.id, &seat.call, call_fences);
        state.metrics.joins.inc();
        if resumed {
            state.metrics.resumes.inc();
        }
        self.conn.note_peers(&peers);
        let joined = ServerMessage::Joined {
            call_id: seat.call.clone(),
            participant_id: seat.participant.clone(),
            role: seat.role,
            peers,
            resumed,
        };
        self.joined = Some(Joined {
            seat: seat.clone(),
            resync,
            rx,
            next_seq: first_seq,
            relayed: 0,
            delivered: 0,
        });
        if !self.send(&joined).await {
            return Some(Exit::Away);
        }
        let mut replayed = 0;
        if resumed {
            match self.replay().await {
                Ok(n) => replayed = n,
                Err(exit) => return Some(exit),
            }
        }
        state
            .events
            .publish(Some(&seat.call), room::join_event(&seat, resumed, replayed));
        None
    }

    /// Send every message of the other senders' logs after the last one delivered from each.
    /// `Err` when the socket is gone.
    async fn replay(&mut self) -> Result<u64, Exit> {
        let Some(j) = &self.joined else { return Ok(0) };
        let (call, participant) = (j.seat.call.clone(), j.seat.participant.clone());
        let entries = match self
            .state
            .hub
            .logs_after(&call, &participant, self.conn.delivered())
            .await
        {
            Ok(e) => e,
            Err(e) => {
                // The messages stay in the log; the next resync or resume gets them.
                self.state.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "log read failed");
                return Ok(0);
            }
        };
        let mut n = 0;
        for (from, seq, text) in entries {
            if self.conn.accept_delivery(from, seq) {
                if self.socket.send(Message::Text(text.into())).await.is_err() {
                    return Err(Exit::Away);
                }
                n += 1;
            }
        }
        self.state.metrics.replayed.add(n);
        self.state.metrics.delivered.add(n);
        if let Some(j) = &mut self.joined {
            j.delivered += n;
        }
        Ok(n)
    }

    async fn relay(&mut self, relay: Relay, now: u64) -> Option<Exit> {
        let state = self.state.clone();
        let j = self.joined.as_ref()?;
        let seat = j.seat.clone();
        let from = seat.participant.clone();
        let hangup = matches!(relay, Relay::Hangup);
        let message = match relay {
            Relay::Offer(sdp) => ServerMessage::Offer { from, seq: 0, sdp },
            Relay::Answer(sdp) => ServerMessage::Answer { from, seq: 0, sdp },
            Relay::IceCandidate(candidate) => ServerMessage::IceCandidate {
                from,
                seq: 0,
                candidate,
            },
            Relay::Hangup => ServerMessage::Hangup { from, seq: 0 },
        };
        let seq = j.next_seq;
        let policy = state.config.replica_ack;
        let (call, pid, conn) = (&seat.call, &seat.participant, &*self.conn_id);
        // A peer away gets this only through the call's log: a replica must hold it first.
        let outcome = if self.conn.relay_waits_for_replica(policy) {
            let hub = &state.hub;
            let outcome = hub
                .relay_replicated(call, pid, seat.role, conn, &message, seq, now)
                .await;
            // Check that belief against the seats (a `peer-resumed` lost with pub/sub in a
            // failover would otherwise keep every later relay on this path).
            if let Ok(away) = hub.away_peers(call, now).await {
                self.conn.note_away(away);
            }
            outcome
        } else {
            let hub = &state.hub;
            hub.relay(call, pid, seat.role, conn, &message, seq, now)
                .await
        };
        let outcome = match outcome {
            Ok(RelayOutcome::NotReplicated(seq)) => {
                state.metrics.replica_ack_missing.inc();
                if let Some(j) = &mut self.joined {
                    // Stored under that number all the same: the next one follows it.
                    j.next_seq = j.next_seq.max(seq + 1);
                }
                match room::unreplicated_relay(policy) {
                    Some((code, text)) => {
                        tracing::warn!(
                            "no Redis replica acknowledged a relay: answering unavailable"
                        );
                        self.send_error(code, text).await;
                        return None;
                    }
                    None => {
                        tracing::warn!(
                            "no Redis replica acknowledged a relay: sent anyway (best-effort)"
                        );
                        Ok(RelayOutcome::Sent(seq))
                    }
                }
            }
            other => other,
        };
        match outcome {
            Ok(RelayOutcome::Sent(seq)) => {
                state.metrics.relayed.inc();
                if let Some(j) = &mut self.joined {
                    j.next_seq = j.next_seq.max(seq + 1);
                    j.relayed += 1;
                }
                if hangup {
                    return self.end_call(&seat.call).await;
                }
                None
            }
            Ok(RelayOutcome::Replaced) => {
                self.close(CLOSE_REPLACED, "replaced by a newer connection")
                    .await;
                Some(Exit::Final)
            }
            Ok(RelayOutcome::NotReplicated(_)) => None,
            Ok(RelayOutcome::Ended) => {
                self.send_error(SignalErrorCode::CallEnded, "this call has ended")
                    .await;
                self.close(CLOSE_CALL_ENDED, "call ended").await;
                Some(Exit::Final)
            }
            Err(e) => {
                state.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "relay failed");
                self.send_error(
                    SignalErrorCode::Unavailable,
                    "message not relayed (storage unavailable); resend it",
                )
                .await;
                None
            }
        }
    }

    async fn end_call(&mut self, call: &CallId) -> Option<Exit> {
        match self.state.hub.end(call, "hangup", true).await {
            Ok(_) => {
                self.state.events.publish(
                    Some(call),
                    CallEvent::CallEnded {
                        participant_id: None,
                        role: None,
                        reason: "hangup".to_owned(),
                    },
                );
                self.send(&ServerMessage::CallEnded {
                    reason: "hangup".into(),
                })
                .await;
                self.close(CLOSE_CALL_ENDED, "call ended").await;
                Some(Exit::Final)
            }
            Err(e) => {
                self.state.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "ending the call failed");
                self.send_error(
                    SignalErrorCode::Unavailable,
                    "hangup relayed but the call could not be ended; resend hangup",
                )
                .await;
                None
            }
        }
    }

    async fn on_delivery(&mut self, delivery: Delivery) -> Option<Exit> {
        match delivery {
            Delivery::Frame { text, relayed } => {
                if !self.conn.accept_frame(relayed) {
                    return None;
                }
                if relayed.is_none() {
                    // A presence event: whether relays must wait for a replica follows it.
                    self.conn.on_presence(&text);
                }
                if self.socket.send(Message::Text(text)).await.is_err() {
                    return Some(Exit::Away);
                }
                self.state.metrics.delivered.inc();
                if let Some(j) = &mut self.joined {
                    j.delivered += 1;
                }
                None
            }
            Delivery::Ended(text) => {
                let _ = self.socket.send(Message::Text(text)).await;
                self.close(CLOSE_CALL_ENDED, "call ended").await;
                Some(Exit::Final)
            }
            Delivery::Replaced => {
                // A primary that hung and came back runs the commands queued on it (a join
                // that timed out) before it learns it was demoted, and publishes their frames:
                // a `replaced` counts only if the seat is really another connection's now.
                if let Some(j) = &self.joined
                    && let Ok(true) = self
                        .state
                        .hub
                        .holds_seat(&j.seat.call, &j.seat.participant, &self.conn_id)
                        .await
                {
                    tracing::warn!("ignored a replaced notice: this connection holds the seat");
                    return None;
                }
                self.close(CLOSE_REPLACED, "replaced by a newer connection")
                    .await;
                Some(Exit::Final)
            }
            Delivery::Resync => {
                self.conn.open_presence();
                self.replay().await.err()
            }
            Delivery::Seam => {
                self.conn.open_presence();
                None
            }
        }
    }

    async fn flush_ack(&mut self) {
        let Some(acked) = self.conn.take_ack_to_flush() else {
            return;
        };
        let Some(j) = &self.joined else { return };
        if let Err(e) = self
            .state
            .hub
            .ack(&j.seat.call, &j.seat.participant, &self.conn_id, acked)
            .await
        {
            tracing::debug!(error = %e, "ack not recorded (the next ack carries it)");
        }
    }

    async fn refuse(&mut self, refusal: Refusal) -> Exit {
        self.state.metrics.refused.inc();
        self.state.events.publish(
            refusal.call.as_ref(),
            CallEvent::PeerRefused {
                code: refusal.error,
                reason: refusal.message.clone(),
            },
        );
        self.send_error(refusal.error, &refusal.message).await;
        self.close(refusal.close, &refusal.message).await;
        Exit::Final
    }

    async fn send(&mut self, message: &ServerMessage) -> bool {
        match serde_json::to_string(message) {
            Ok(text) => self
                .socket
                .send(Message::Text(Utf8Bytes::from(text)))
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    async fn send_error(&mut self, code: SignalErrorCode, message: &str) {
        self.state.metrics.errors.inc();
        self.send(&ServerMessage::Error {
            code,
            message: message.to_owned(),
        })
        .await;
    }

    /// Send our Close frame; [`Session::linger`] completes the handshake after the seat
    /// bookkeeping (so the other participants hear of it without waiting for this client).
    async fn close(&mut self, code: u16, reason: &str) {
        // Close reasons are limited to 123 bytes.
        let reason: String = reason.chars().take(120).collect();
        self.close_sent = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })))
            .await
            .is_ok();
    }

    /// The rest of a closing handshake we started: read (and drop) until the client's Close
    /// or [`CLOSE_LINGER`], so the client reads everything we sent, the Close frame included.
    async fn linger(&mut self) {
        if !self.close_sent {
            return;
        }
        let socket = &mut self.socket;
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Seat bookkeeping after the loop: mark away (the peer sees `peer-reconnecting`) and
    /// leave the call's channel.
    async fn finish(&mut self, exit: Exit) {
        let Some(j) = self.joined.take() else { return };
        let seat = &j.seat;
        let recorded = match exit {
            Exit::Away => self
                .state
                .hub
                .disconnect(
                    &seat.call,
                    &seat.participant,
                    seat.role,
                    &self.conn_id,
                    unix_now_ms(),
                )
                .await
                .map(drop),
            Exit::Left(reason) => self
                .state
                .hub
                .leave(&seat.call, &seat.participant, &self.conn_id, reason)
                .await
                .map(drop),
            Exit::Final => Ok(()),
        };
        if let Err(e) = recorded {
            // The lease lapses on its own and the sweep announces it.
            self.state.metrics.redis_errors.inc();
            tracing::debug!(error = %e, "disconnect not recorded");
        }
        self.state.hub.unregister(self.id, &seat.call);
        self.state.events.publish(
            Some(&seat.call),
            CallEvent::PeerLeft {
                participant_id: seat.participant.clone(),
                relayed: j.relayed,
                delivered: j.delivered,
                final_: exit != Exit::Away,
            },
        );
    }
}
