// Small SDP readers the media session needs. Pure.

/** The session id of the `o=` line: it changes only when the sender made a new RTCPeerConnection. */
export function sdpSessionId(sdp) {
  const m = /^o=\S+\s+(\d+)\s+/m.exec(String(sdp ?? ''));
  return m ? m[1] : null;
}

/** The first `a=ice-ufrag` of an SDP: it changes on every ICE restart. */
export function sdpIceUfrag(sdp) {
  const m = /^a=ice-ufrag:(\S+)/m.exec(String(sdp ?? ''));
  return m ? m[1] : null;
}
