// What people paste or type where a code is asked for: the code itself with any separators,
// or the whole share link (`https://host/c/7KQ2ZD`). Pure. The strict rules stay in code.js
// (they mirror hermes_proto::code exactly); this only finds the code in the text first.

import { normaliseCode } from './code.js';

/** Characters people put between code groups when they copy or dictate a code. */
const SEPARATORS = /[\s\-‐‑‒–—_.·•/\\:,;'"“”‘’()]+/gu;

/**
 * The code in `text`: a share link's `/c/CODE` part if there is one, else the text without
 * separators. Returns what normaliseCode returns.
 */
export function codeFromInput(text) {
  const s = String(text ?? '').trim();
  const link = /(?:^|[/\s])c\/([^/?#\s]+)\/?(?:[?#]\S*)?$/i.exec(s);
  if (link && /[/:]/.test(s)) {
    let seg = link[1];
    try {
      seg = decodeURIComponent(seg);
    } catch {
      // keep it as it is
    }
    return normaliseCode(seg.replace(SEPARATORS, ''));
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
    return { ok: false, reason: 'no-code', message: 'This link has no call code in it. Paste the link you were sent, or type the 6-character code.' };
  }
  return normaliseCode(s.replace(SEPARATORS, ''));
}
