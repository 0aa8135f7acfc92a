// A small QR code encoder (ISO/IEC 18004) for the share link on the waiting screen, so a phone
// can join by scanning it: generated in the page, never by a third-party service. Byte mode,
// error correction level M, versions 1-10 (up to 213 bytes: any share link fits). Pure: returns
// the module matrix; the UI draws it. Checked against python-qrcode's matrices
// (web/test/qr.test.js) and, in the browser test, by decoding a screenshot with zbarimg.

/** Level M block layout per version: [ec codewords per block, [blocks, data codewords]...]. */
const LAYOUT_M = [
  null,
  [10, [1, 16]],
  [16, [1, 28]],
  [26, [1, 44]],
  [18, [2, 32]],
  [24, [2, 43]],
  [16, [4, 27]],
  [18, [4, 31]],
  [22, [2, 38], [2, 39]],
  [22, [3, 36], [2, 37]],
  [26, [4, 43], [1, 44]],
];

/** Centre coordinates of the alignment patterns per version. */
const ALIGNMENT = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34], [6, 22, 38], [6, 24, 42], [6, 26, 46], [6, 28, 50]];

export const MAX_VERSION = 10;

// GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1.
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
}
const mul = (a, b) => (a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]]);

/** Generator polynomial of degree n (coefficients, highest first, leading 1 left out). */
function generator(n) {
  let g = [1];
  for (let i = 0; i < n; i++) {
    const next = new Array(g.length + 1).fill(0);
    for (let j = 0; j < g.length; j++) {
      next[j] ^= g[j];
      next[j + 1] ^= mul(g[j], EXP[i]);
    }
    g = next;
  }
  return g.slice(1);
}

/** Reed-Solomon error correction codewords of `data` (array of bytes). */
export function reedSolomon(data, n) {
  const g = generator(n);
  const rem = new Array(n).fill(0);
  for (const byte of data) {
    const factor = byte ^ rem[0];
    rem.shift();
    rem.push(0);
    for (let i = 0; i < n; i++) rem[i] ^= mul(g[i], factor);
  }
  return rem;
}

function dataCapacity(version) {
  const [, ...groups] = LAYOUT_M[version];
  return groups.reduce((sum, [blocks, words]) => sum + blocks * words, 0);
}

/** The smallest version whose level-M byte-mode capacity holds `length` bytes, or null. */
export function versionFor(length) {
  for (let v = 1; v <= MAX_VERSION; v++) {
    const countBits = v < 10 ? 8 : 16;
    if (4 + countBits + 8 * length <= dataCapacity(v) * 8) return v;
  }
  return null;
}

/** Data codewords: mode, count, bytes, terminator, padding. */
function dataCodewords(bytes, version) {
  const capacity = dataCapacity(version);
  const bits = [];
  const put = (value, n) => {
    for (let i = n - 1; i >= 0; i--) bits.push((value >>> i) & 1);
  };
  put(0b0100, 4);
  put(bytes.length, version < 10 ? 8 : 16);
  for (const b of bytes) put(b, 8);
  put(0, Math.min(4, capacity * 8 - bits.length));
  while (bits.length % 8) bits.push(0);
  const words = [];
  for (let i = 0; i < bits.length; i += 8) words.push(bits.slice(i, i + 8).reduce((a, b) => (a << 1) | b, 0));
  for (let pad = 0xec; words.length < capacity; pad ^= 0xec ^ 0x11) words.push(pad);
  return words;
}

/** Split into blocks, add error correction, interleave. */
function finalCodewords(data, version) {
  const [ecLen, ...groups] = LAYOUT_M[version];
  const blocks = [];
  let at = 0;
  for (const [count, words] of groups) {
    for (let i = 0; i < count; i++) {
      const d = data.slice(at, at + words);
      at += words;
      blocks.push({ d, ec: reedSolomon(d, ecLen) });
    }
  }
  const out = [];
  const longest = Math.max(...blocks.map((b) => b.d.length));
  for (let i = 0; i < longest; i++) for (const b of blocks) if (i < b.d.length) out.push(b.d[i]);
  for (let i = 0; i < ecLen; i++) for (const b of blocks) out.push(b.ec[i]);
  return out;
}

/** BCH remainder of `value` (already shifted) by `poly` of degree `deg`. */
function bch(value, poly, deg) {
  let v = value;
  for (let i = Math.floor(Math.log2(v || 1)); i >= deg; i--) if ((v >>> i) & 1) v ^= poly << (i - deg);
  return v;
}

/** 15 format bits for level M and `mask`. */
export function formatBits(mask) {
  const data = (0b00 << 3) | mask; // level M is 00
  return ((data << 10) | bch(data << 10, 0x537, 10)) ^ 0x5412;
}

/** 18 version bits (versions 7 and up). */
export function versionBits(version) {
  return (version << 12) | bch(version << 12, 0x1f25, 12);
}

const MASKS = [
  (r, c) => (r + c) % 2 === 0,
  (r) => r % 2 === 0,
  (r, c) => c % 3 === 0,
  (r, c) => (r + c) % 3 === 0,
  (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0,
  (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
  (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0,
  (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
];

/** The matrix with function patterns drawn and marked reserved. */
function baseMatrix(version) {
  const size = 17 + 4 * version;
  const dark = Array.from({ length: size }, () => new Array(size).fill(false));
  const fixed = Array.from({ length: size }, () => new Array(size).fill(false));
  const set = (r, c, v) => {
    if (r < 0 || c < 0 || r >= size || c >= size) return;
    dark[r][c] = v;
    fixed[r][c] = true;
  };
  for (const [r0, c0] of [[0, 0], [0, size - 7], [size - 7, 0]]) {
    for (let r = -1; r <= 7; r++) {
      for (let c = -1; c <= 7; c++) {
        const ring = Math.max(Math.abs(r - 3), Math.abs(c - 3));
        set(r0 + r, c0 + c, ring !== 2 && ring !== 4);
      }
    }
  }
  for (let i = 8; i < size - 8; i++) {
    set(6, i, i % 2 === 0);
    set(i, 6, i % 2 === 0);
  }
  const centres = ALIGNMENT[version];
  const last = centres.length - 1;
  for (const [i, r] of centres.entries()) {
    for (const [j, c] of centres.entries()) {
      if ((i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0)) continue; // finders
      for (let dr = -2; dr <= 2; dr++) {
        for (let dc = -2; dc <= 2; dc++) set(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
      }
    }
  }
  // Format areas (written later) and the dark module.
  for (let i = 0; i < 9; i++) {
    if (i === 6) continue; // timing
    set(8, i, false);
    set(i, 8, false);
  }
  for (let i = 0; i < 8; i++) {
    set(8, size - 1 - i, false);
    set(size - 1 - i, 8, false);
  }
  set(size - 8, 8, true);
  if (version >= 7) {
    const bits = versionBits(version);
    for (let i = 0; i < 18; i++) {
      const on = ((bits >>> i) & 1) === 1;
      const a = size - 11 + (i % 3);
      const b = Math.floor(i / 3);
      set(a, b, on);
      set(b, a, on);
    }
  }
  return { size, dark, fixed };
}

function placeData({ size, dark, fixed }, codewords) {
  let bit = 0;
  const total = codewords.length * 8;
  let upward = true;
  for (let right = size - 1; right >= 1; right -= 2) {
    if (right === 6) right = 5; // the vertical timing column is skipped
    for (let k = 0; k < size; k++) {
      const r = upward ? size - 1 - k : k;
      for (const c of [right, right - 1]) {
        if (fixed[r][c]) continue;
        dark[r][c] = bit < total && ((codewords[bit >> 3] >>> (7 - (bit & 7))) & 1) === 1;
        bit += 1;
      }
    }
    upward = !upward;
  }
}

function applyMask({ size, dark, fixed }, mask) {
  const out = dark.map((row) => row.slice());
  const fn = MASKS[mask];
  for (let r = 0; r < size; r++) for (let c = 0; c < size; c++) if (!fixed[r][c] && fn(r, c)) out[r][c] = !out[r][c];
  const bits = formatBits(mask);
  const bitAt = (i) => ((bits >>> i) & 1) === 1;
  // First copy around the top-left finder, second split under/right of the other two.
  for (let i = 0; i <= 5; i++) out[i][8] = bitAt(i);
  out[7][8] = bitAt(6);
  out[8][8] = bitAt(7);
  out[8][7] = bitAt(8);
  for (let i = 9; i < 15; i++) out[8][14 - i] = bitAt(i);
  for (let i = 0; i < 8; i++) out[8][size - 1 - i] = bitAt(i);
  for (let i = 8; i < 15; i++) out[size - 15 + i][8] = bitAt(i);
  return out;
}

/** Penalty score of a masked matrix (rules N1-N4 of the standard). */
export function penalty(m) {
  const size = m.length;
  let score = 0;
  const lineScore = (get) => {
    let s = 0;
    for (let a = 0; a < size; a++) {
      let run = 1;
      for (let b = 1; b <= size; b++) {
        if (b < size && get(a, b) === get(a, b - 1)) run += 1;
        else {
          if (run >= 5) s += 3 + (run - 5);
          run = 1;
        }
      }
      // Finder-like 1:1:3:1:1 with four light modules on one side.
      for (let b = 0; b + 7 <= size; b++) {
        const p = [1, 0, 1, 1, 1, 0, 1].every((v, k) => get(a, b + k) === (v === 1));
        if (!p) continue;
        const lightBefore = [1, 2, 3, 4].every((k) => b - k < 0 || !get(a, b - k));
        const lightAfter = [7, 8, 9, 10].every((k) => b + k >= size || !get(a, b + k));
        if (lightBefore) s += 40;
        if (lightAfter) s += 40;
      }
    }
    return s;
  };
  score += lineScore((a, b) => m[a][b]);
  score += lineScore((a, b) => m[b][a]);
  for (let r = 0; r + 1 < size; r++) {
    for (let c = 0; c + 1 < size; c++) {
      const v = m[r][c];
      if (m[r][c + 1] === v && m[r + 1][c] === v && m[r + 1][c + 1] === v) score += 3;
    }
  }
  let darkCount = 0;
  for (const row of m) for (const v of row) if (v) darkCount += 1;
  const percent = (darkCount * 100) / (size * size);
  score += Math.floor(Math.abs(percent - 50) / 5) * 10;
  return score;
}

/**
 * Encode `text` (UTF-8) as a level-M QR code. Returns `{ version, mask, size, modules }` where
 * `modules[row][col]` is true for a dark module (no quiet zone: leave four modules around it),
 * or null when the text is too long. `opts.mask` forces a mask (tests), `opts.version` a
 * minimum version.
 */
export function encodeQr(text, opts = {}) {
  const bytes = [...new TextEncoder().encode(String(text))];
  let version = versionFor(bytes.length);
  if (version === null) return null;
  if (opts.version && opts.version > version) version = Math.min(opts.version, MAX_VERSION);
  const base = baseMatrix(version);
  placeData(base, finalCodewords(dataCodewords(bytes, version), version));
  let best = null;
  for (let mask = 0; mask < 8; mask++) {
    if (opts.mask !== undefined && mask !== opts.mask) continue;
    const modules = applyMask(base, mask);
    const score = opts.mask !== undefined ? 0 : penalty(modules);
    if (!best || score < best.score) best = { mask, modules, score };
  }
  return { version, mask: best.mask, size: base.size, modules: best.modules };
}

/**
 * An SVG path (`d`) drawing the dark modules as unit squares, offset by `quiet` modules, and
 * the side of the whole square: draw it with `viewBox="0 0 side side"`.
 */
export function qrPath(qr, quiet = 4) {
  const parts = [];
  for (let r = 0; r < qr.size; r++) {
    for (let c = 0; c < qr.size; c++) {
      if (!qr.modules[r][c]) continue;
      // Merge horizontal runs into one rectangle.
      let end = c;
      while (end + 1 < qr.size && qr.modules[r][end + 1]) end += 1;
      parts.push(`M${c + quiet} ${r + quiet}h${end - c + 1}v1h-${end - c + 1}z`);
      c = end;
    }
  }
  return { d: parts.join(''), side: qr.size + 2 * quiet };
}
