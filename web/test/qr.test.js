// The QR encoder against matrices made by an independent implementation (python-qrcode 7.4,
// Debian's python3-qrcode; `web/test/qr-vectors.py` regenerates qr-vectors.json), with the
// version and mask forced so both must agree bit for bit; plus the parts on their own.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import test from 'node:test';
import { encodeQr, formatBits, penalty, qrPath, reedSolomon, versionBits, versionFor } from '../js/lib/qr.js';

const vectors = JSON.parse(readFileSync(new URL('./qr-vectors.json', import.meta.url)));

test('matrices equal python-qrcode for versions 1, 2, 3, 7 and 10 and several masks', () => {
  assert.ok(vectors.length >= 6);
  for (const v of vectors) {
    const q = encodeQr(v.text, { mask: v.mask, version: v.version });
    assert.equal(q.version, v.version, v.text);
    const rows = q.modules.map((r) => r.map((x) => (x ? '1' : '0')).join(''));
    assert.deepEqual(rows, v.rows, `${v.text} (version ${v.version}, mask ${v.mask})`);
  }
});

test('Reed-Solomon: the worked example of the standard (version 1-M "01234567")', () => {
  // ISO/IEC 18004 Annex I: data codewords and their 10 error correction codewords.
  const data = [0x10, 0x20, 0x0c, 0x56, 0x61, 0x80, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11];
  assert.deepEqual(reedSolomon(data, 10), [0xa5, 0x24, 0xd4, 0xc1, 0xed, 0x36, 0xc7, 0x87, 0x2c, 0x55]);
});

test('format and version information: known BCH words', () => {
  // Level M mask 0 is 101010000010010 in the standard's table; version 7 is 000111110010010100.
  assert.equal(formatBits(0), 0b101010000010010);
  assert.equal(versionBits(7), 0b000111110010010100);
});

test('version choice: the smallest that fits, null above version 10', () => {
  assert.equal(versionFor(14), 1);
  assert.equal(versionFor(15), 2);
  assert.equal(versionFor(40), 3);
  assert.equal(versionFor(213), 10);
  assert.equal(versionFor(214), null);
  assert.equal(encodeQr('x'.repeat(214)), null);
  // A share link fits a small code.
  assert.ok(encodeQr('https://call.example.com/c/7KQ2ZD').version <= 3);
});

test('automatic mask: the lowest penalty of the eight', () => {
  const text = 'https://call.example.com/c/7KQ2ZD';
  const chosen = encodeQr(text);
  for (let mask = 0; mask < 8; mask++) {
    assert.ok(penalty(chosen.modules) <= penalty(encodeQr(text, { mask }).modules), `mask ${mask}`);
  }
});

test('SVG path: one rectangle per horizontal run, inside the quiet zone', () => {
  const q = encodeQr('hello, world', { mask: 0 });
  const { d, side } = qrPath(q, 4);
  assert.equal(side, 21 + 8);
  const runs = q.modules.reduce((n, row) => n + row.filter((v, i) => v && !row[i - 1]).length, 0);
  assert.equal(d.split('M').length - 1, runs);
  assert.ok(d.startsWith('M4 4h7'), d.slice(0, 20)); // the top-left finder's first row
});
