// One-time call codes: the same rules as hermes_proto::code (crates/hermes-proto/src/code.rs).
// Crockford base32 without I, L, O, U; case-insensitive; spaces and dashes ignored; the
// look-alikes people type are mapped (O -> 0, I and L -> 1). Pure: no DOM, no network.

export const CODE_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
export const CODE_LEN = 6;

/**
 * Normalise what a person typed. Returns `{ ok: true, code }` with the canonical 6-character
 * code, or `{ ok: false, reason, message }` where reason is `empty`, `bad-char`, `too-short` or
 * `too-long` and message is a sentence for people.
 */
export function normaliseCode(input) {
  const text = String(input ?? '');
  let out = '';
  for (const ch of text) {
    // ASCII-only upper case, like Rust's to_ascii_uppercase: Unicode would turn ı into I and
    // ſ into S, accepting codes the server refuses.
    let c = ch >= 'a' && ch <= 'z' ? ch.toUpperCase() : ch;
    if (c === ' ' || c === '-' || c === '\t') continue;
    if (c === 'O') c = '0';
    else if (c === 'I' || c === 'L') c = '1';
    if (c.length !== 1 || !CODE_ALPHABET.includes(c)) {
      return {
        ok: false,
        reason: 'bad-char',
        message: `“${ch}” cannot be part of a code. Codes use digits and letters except I, L, O and U.`,
      };
    }
    out += c;
  }
  if (out.length === 0) {
    return { ok: false, reason: 'empty', message: 'Type the 6-character code you were given.' };
  }
  if (out.length < CODE_LEN) {
    return {
      ok: false,
      reason: 'too-short',
      message: `A code has ${CODE_LEN} characters; this one has ${out.length}.`,
    };
  }
  if (out.length > CODE_LEN) {
    return {
      ok: false,
      reason: 'too-long',
      message: `A code has ${CODE_LEN} characters; this one has ${out.length}.`,
    };
  }
  return { ok: true, code: out };
}

/** `7KQ2ZD` -> `7KQ-2ZD`, easier to read out loud. */
export function formatCode(code) {
  const c = String(code);
  return c.length === CODE_LEN ? `${c.slice(0, 3)}-${c.slice(3)}` : c;
}

/** The code in a `/c/CODE` path, or null. The code is returned as typed (normalise it next). */
export function codeFromPath(pathname) {
  const m = /^\/c\/([^/?#]+)\/?$/.exec(String(pathname));
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

/** The share link for a code, on the given origin. */
export function shareLink(origin, code) {
  return `${String(origin).replace(/\/+$/, '')}/c/${encodeURIComponent(code)}`;
}
