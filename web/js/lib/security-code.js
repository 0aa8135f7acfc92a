// The security code both people compare: derived from the DTLS certificate fingerprints of
// both sides as they appear in the SDP offer and answer. The two fingerprints are sorted (so
// both sides compute the same input whoever offered), joined and hashed with SHA-256; the first
// 30 bits pick five words from a list of 64. A man in the middle (even a compromised signaling
// server) must terminate DTLS with its own certificates, so each side would see a different
// pair and a different code. Pure: the SubtleCrypto implementation is a parameter.

export const WORDS = Object.freeze([
  'apple', 'arrow', 'bagel', 'basil', 'beach', 'berry', 'bison', 'cabin',
  'camel', 'candy', 'cedar', 'chalk', 'cider', 'cloud', 'coral', 'crane',
  'daisy', 'delta', 'dingo', 'eagle', 'ember', 'fable', 'ferry', 'flute',
  'frost', 'gecko', 'ginger', 'grape', 'harbor', 'hazel', 'heron', 'igloo',
  'ivory', 'jelly', 'koala', 'lemon', 'lilac', 'llama', 'mango', 'maple',
  'melon', 'meteor', 'nutmeg', 'ocean', 'olive', 'otter', 'panda', 'pearl',
  'pepper', 'piano', 'pilot', 'quartz', 'radar', 'raven', 'robin', 'salmon',
  'tiger', 'tulip', 'velvet', 'violin', 'walnut', 'willow', 'yacht', 'zebra',
]);

export const CODE_WORDS = 5;

/**
 * The DTLS fingerprint of an SDP, normalised to `algo HEX:HEX:…` (algorithm lower case, hex
 * upper case). The session-level attribute wins; otherwise the first media-level one. Null
 * when the SDP has none.
 */
export function extractFingerprint(sdp) {
  const lines = String(sdp ?? '').split(/\r?\n/);
  let sessionLevel = null;
  let mediaLevel = null;
  let inMedia = false;
  for (const line of lines) {
    if (line.startsWith('m=')) inMedia = true;
    const m = /^a=fingerprint:\s*(\S+)\s+([0-9A-Fa-f:]+)\s*$/.exec(line);
    if (!m) continue;
    const fp = `${m[1].toLowerCase()} ${m[2].toUpperCase()}`;
    if (!inMedia && sessionLevel === null) sessionLevel = fp;
    if (inMedia && mediaLevel === null) mediaLevel = fp;
  }
  return sessionLevel ?? mediaLevel;
}

/** The five-word code from a 32-byte digest (or any byte array of at least 4 bytes). */
export function wordsFromDigest(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (b.length < 4) throw new Error('digest too short');
  const bits = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  const words = [];
  for (let i = 0; i < CODE_WORDS; i++) {
    words.push(WORDS[(bits >>> (26 - 6 * i)) & 63]);
  }
  return words;
}

/** The input that is hashed: both fingerprints, sorted, one per line. */
export function securityInput(fpA, fpB) {
  return [fpA, fpB].sort().join('\n');
}

/**
 * Derive the security code from the local and remote SDP. Resolves to `{ words, text }` or
 * null when either SDP lacks a fingerprint.
 */
export async function securityCode(localSdp, remoteSdp, subtle = globalThis.crypto?.subtle) {
  const a = extractFingerprint(localSdp);
  const b = extractFingerprint(remoteSdp);
  if (!a || !b || !subtle) return null;
  const digest = await subtle.digest('SHA-256', new TextEncoder().encode(securityInput(a, b)));
  const words = wordsFromDigest(new Uint8Array(digest));
  return { words, text: words.join(' ') };
}
