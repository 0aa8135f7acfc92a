//! Response encoding with the `stun`/`turn` crates: success and error responses (signed
//! with MESSAGE-INTEGRITY once a request is authenticated, always with FINGERPRINT), the
//! SOFTWARE attribute, and the transaction ids of the indications we originate. The data
//! path's Data indications are written in place by `wire` instead.

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_SOFTWARE};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;

use super::control::Reject;
use super::{Client, Command, Server};

impl Server {
    pub(super) fn reply(&mut self, to: Client, bytes: Vec<u8>) {
        self.commands.push_back(Command::ToClient { to, bytes });
    }

    /// Add SOFTWARE, when configured.
    pub(super) fn push_software(&self, setters: &mut Vec<Box<dyn Setter>>) {
        software(&self.cfg.software, setters);
    }

    /// A success response signed with the allocation's key.
    pub(super) fn succeed(
        &mut self,
        to: Client,
        method: Method,
        txid: TransactionId,
        mut setters: Vec<Box<dyn Setter>>,
        key: [u8; 16],
    ) {
        self.push_software(&mut setters);
        let bytes = build(method, CLASS_SUCCESS_RESPONSE, txid, setters, Some(&key));
        self.reply(to, bytes);
    }
}

/// Add a SOFTWARE attribute naming `name`, if any.
pub(super) fn software(name: &Option<String>, setters: &mut Vec<Box<dyn Setter>>) {
    if let Some(s) = name {
        setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, s.clone())));
    }
}

/// The transaction id of the next indication we originate (Data, ConnectionAttempt): a
/// counter from a random seed in the low 8 bytes.
#[inline]
pub(super) fn next_txid(counter: &mut u64) -> TransactionId {
    *counter = counter.wrapping_add(1);
    let mut txid = [0u8; 12];
    txid[4..].copy_from_slice(&counter.to_be_bytes());
    TransactionId(txid)
}

/// Encode a message with the stun crate: type, transaction id, attributes, then
/// MESSAGE-INTEGRITY (when `key`) and FINGERPRINT.
pub(super) fn build(
    method: Method,
    class: stun::message::MessageClass,
    txid: TransactionId,
    mut setters: Vec<Box<dyn Setter>>,
    key: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut all: Vec<Box<dyn Setter>> = Vec::with_capacity(setters.len() + 4);
    all.push(Box::new(txid));
    all.push(Box::new(MessageType::new(method, class)));
    all.append(&mut setters);
    if let Some(key) = key {
        all.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    all.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    // The setters only fail on oversized attributes, which we never build; an empty answer
    // is dropped by the I/O layer rather than panicking.
    if m.build(&all).is_err() {
        return Vec::new();
    }
    m.raw
}

pub(super) fn error_response(
    method: Method,
    txid: TransactionId,
    r: &Reject,
    challenge: Option<(&str, &str)>,
    key: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(ErrorCodeAttribute {
        code: ErrorCode(r.code),
        reason: r.reason.as_bytes().to_vec(),
    })];
    if let Some((realm, nonce)) = challenge {
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.to_string())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_string())));
    }
    // 401/438 answers are sent before authentication succeeded: no integrity on them.
    let key = if challenge.is_some() { None } else { key };
    build(method, CLASS_ERROR_RESPONSE, txid, setters, key)
}
