//! A client's STUN request, decoded once into a typed [`Request`]: one [`Body`] variant per
//! method, one handler each in the server.
//!
//! The `stun` crate (webrtc-rs, through our `turn` dependency) is the control-plane codec and
//! this is its one parse of a request: [`Message::unmarshal_binary`] and the crate's attribute
//! getters. Every attribute a handler needs is read here; handlers then match on the typed
//! body and never look at the bytes again. Attribute errors are kept in the body (as `None`)
//! rather than answered at once, so that the handler answers them in protocol order (an
//! unauthenticated request hears 401 before it hears about a malformed attribute).
//!
//! Where the crate costs a copy: `unmarshal_binary` copies the message and every attribute
//! value into owned buffers. That is fine at the control-plane rate; the data path
//! (ChannelData, Send and Data indications) never comes here, it stays on the borrowing
//! `wire` module. The crate's getters only return an attribute's first occurrence, so the
//! XOR-PEER-ADDRESS list of CreatePermission (which may repeat) is read from the crate's
//! decoded attribute list with `wire::decode_xor_addr`, a decoder of one value.

use std::net::SocketAddr;

use stun::agent::TransactionId;
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CONNECT,
    METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, Message, Method,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV6, RequestedAddressFamily};
use turn::proto::reqtrans::RequestedTransport;

use super::ConnId;
use crate::wire;

/// A decoded STUN request.
pub struct Request {
    pub txid: TransactionId,
    pub method: Method,
    pub body: Body,
    pub credentials: Credentials,
}

/// What a request asks for.
pub enum Body {
    Binding,
    Allocate {
        /// REQUESTED-TRANSPORT's protocol number.
        transport: Option<u8>,
        /// REQUESTED-ADDRESS-FAMILY says IPv6.
        ipv6: bool,
        lifetime: Option<u32>,
    },
    Refresh {
        lifetime: Option<u32>,
    },
    CreatePermission {
        /// Every XOR-PEER-ADDRESS; `None` when one of them does not decode.
        peers: Option<Vec<SocketAddr>>,
    },
    ChannelBind {
        number: Option<u16>,
        peer: Option<SocketAddr>,
    },
    /// RFC 6062 §5.2.
    Connect {
        peer: Option<SocketAddr>,
    },
    /// RFC 6062 §5.4.
    ConnectionBind {
        id: Option<ConnId>,
    },
    /// A method we do not implement (RFC 5780, mobility, …).
    Unsupported,
}

/// The long-term credential attributes, as sent, and what MESSAGE-INTEGRITY covers.
pub struct Credentials {
    /// MESSAGE-INTEGRITY is present.
    pub integrity: bool,
    pub username: Option<String>,
    pub realm: Option<String>,
    pub nonce: Option<String>,
    /// The crate's message, kept for the MESSAGE-INTEGRITY check (an HMAC over its bytes).
    msg: Message,
}

impl Request {
    /// Decode a STUN message whose header says it is a request. `None` for anything to
    /// ignore silently: not a request, undecodable, or a wrong FINGERPRINT.
    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let mut msg = Message::new();
        msg.unmarshal_binary(bytes).ok()?;
        if msg.typ.class != CLASS_REQUEST {
            return None;
        }
        if msg.contains(stun::attributes::ATTR_FINGERPRINT) && FINGERPRINT.check(&msg).is_err() {
            return None;
        }
        let method = msg.typ.method;
        let body = match method {
            METHOD_BINDING => Body::Binding,
            METHOD_ALLOCATE => {
                let mut transport = RequestedTransport::default();
                let mut family = RequestedAddressFamily::default();
                Body::Allocate {
                    transport: transport
                        .get_from(&msg)
                        .is_ok()
                        .then_some(transport.protocol.0),
                    ipv6: family.get_from(&msg).is_ok() && family == REQUESTED_FAMILY_IPV6,
                    lifetime: lifetime(&msg),
                }
            }
            METHOD_REFRESH => Body::Refresh {
                lifetime: lifetime(&msg),
            },
            METHOD_CREATE_PERMISSION => Body::CreatePermission { peers: peers(&msg) },
            METHOD_CHANNEL_BIND => {
                let mut n = ChannelNumber::default();
                Body::ChannelBind {
                    number: n.get_from(&msg).is_ok().then_some(n.0),
                    peer: one_peer(&msg),
                }
            }
            METHOD_CONNECT => Body::Connect {
                peer: one_peer(&msg),
            },
            METHOD_CONNECTION_BIND => Body::ConnectionBind {
                id: msg
                    .get(ATTR_CONNECTION_ID)
                    .ok()
                    .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                    .map(|b| ConnId(u32::from_be_bytes(b))),
            },
            _ => Body::Unsupported,
        };
        let text = |attr| TextAttribute::get_from_as(&msg, attr).ok().map(|t| t.text);
        let credentials = Credentials {
            integrity: msg.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY),
            username: text(ATTR_USERNAME),
            realm: text(ATTR_REALM),
            nonce: text(ATTR_NONCE),
            msg,
        };
        Some(Request {
            txid: credentials.msg.transaction_id,
            method,
            body,
            credentials,
        })
    }
}

impl Credentials {
    /// Whether MESSAGE-INTEGRITY verifies with the long-term `key` (constant-time compare).
    pub fn integrity_ok(&mut self, key: &[u8]) -> bool {
        MessageIntegrity(key.to_vec()).check(&mut self.msg).is_ok()
    }
}

/// LIFETIME in seconds.
fn lifetime(m: &Message) -> Option<u32> {
    let mut l = Lifetime::default();
    l.get_from(m)
        .ok()
        .map(|()| u32::try_from(l.0.as_secs()).unwrap_or(u32::MAX))
}

/// Every XOR-PEER-ADDRESS, or `None` when one does not decode.
fn peers(m: &Message) -> Option<Vec<SocketAddr>> {
    let txid = m.transaction_id.0;
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == stun::attributes::ATTR_XOR_PEER_ADDRESS)
        .map(|a| wire::decode_xor_addr(&a.value, &txid))
        .collect()
}

/// Exactly one XOR-PEER-ADDRESS, decoded.
fn one_peer(m: &Message) -> Option<SocketAddr> {
    match peers(m)?.as_slice() {
        [p] => Some(*p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wire::tests::hex;

    // RFC 5769 §2.1 sample request (short-term credentials).
    const REQ: &str = "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
        9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf";
    // §2.4 request with long-term credentials.
    const REQ_LT: &str = "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3
        82 b9 00 00 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36
        4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
        65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14 f6 70 24 65
        6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

    #[test]
    fn rfc5769_short_term_request() {
        let m = hex(REQ);
        let mut r = Request::decode(&m).unwrap();
        assert!(matches!(r.body, Body::Binding));
        assert_eq!(r.txid.0, m[8..20]);
        assert!(r.credentials.integrity);
        assert_eq!(r.credentials.username.as_deref(), Some("evtj:h6vY"));
        assert!(r.credentials.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!r.credentials.integrity_ok(b"wrong"));
        // A wrong FINGERPRINT: dropped without an answer.
        let mut bad = m.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(Request::decode(&bad).is_none());
        // A flipped bit under MESSAGE-INTEGRITY (SOFTWARE text), fingerprint recomputed by
        // nobody: the fingerprint catches it first; without FINGERPRINT the HMAC does.
        let mut tampered = m[..m.len() - 8].to_vec();
        tampered[3] -= 8;
        tampered[24] ^= 1;
        let mut r = Request::decode(&tampered).unwrap();
        assert!(!r.credentials.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let m = hex(REQ_LT);
        // key = MD5("マトリックス:example.org:TheMatrIX"), the SASLprep'd password.
        let key = MessageIntegrity::new_long_term_integrity(
            "マトリックス".into(),
            "example.org".into(),
            "TheMatrIX".into(),
        );
        let mut r = Request::decode(&m).unwrap();
        assert_eq!(r.credentials.username.as_deref(), Some("マトリックス"));
        assert_eq!(
            r.credentials.nonce.as_deref(),
            Some("f//499k954d6OL34oL9FSTvy64sA")
        );
        assert_eq!(r.credentials.realm.as_deref(), Some("example.org"));
        assert!(r.credentials.integrity_ok(&key.0));
    }

    #[test]
    fn responses_and_indications_are_not_requests() {
        // RFC 5769 §2.2 response header on the §2.1 body: ignored.
        let mut m = hex(REQ);
        m[0] = 0x01;
        m[1] = 0x01;
        assert!(Request::decode(&m).is_none());
        assert!(!wire::is_request(0x0101));
        assert!(!wire::is_request(wire::SEND_INDICATION));
        assert!(wire::is_request(0x0003));
        assert!(Request::decode(&m[..19]).is_none());
    }
}
