import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, webcrypto } from 'node:crypto';
import {
  CODE_WORDS,
  WORDS,
  extractFingerprint,
  securityCode,
  securityInput,
  wordsFromDigest,
} from '../js/lib/security-code.js';

const FP_A = '6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08';
const FP_B = 'AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99';
const sdp = (fp, where = 'media') =>
  where === 'session'
    ? `v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:SHA-256 ${fp}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n`
    : `v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 ${fp.toLowerCase()}\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 ${FP_B}\r\n`;

test('word list has 64 distinct words', () => {
  assert.equal(WORDS.length, 64);
  assert.equal(new Set(WORDS).size, 64);
});

test('fingerprints are extracted and normalised from session or media level', () => {
  assert.equal(extractFingerprint(sdp(FP_A, 'session')), `sha-256 ${FP_A}`);
  assert.equal(extractFingerprint(sdp(FP_A, 'media')), `sha-256 ${FP_A}`);
  assert.equal(extractFingerprint('v=0\r\nm=audio 9 x 0\r\n'), null);
  assert.equal(extractFingerprint(undefined), null);
});

// Golden vectors, computed once outside this code from the documented formula (Python:
// hashlib.sha256 of the two `sha-256 HEX` fingerprints sorted and joined by a newline; the
// top 30 bits of the digest, six at a time, index WORDS). Pinned so that a change to the
// formula on one side shows up here instead of being recomputed the same way.
const GOLDEN = [
  {
    fps: [FP_A, FP_B],
    digestHex: 'b7e24c1668325105a322aa11eb63e13e1c325869ba33913b0ff14312f945a83d',
    text: 'otter yacht candy cider berry',
  },
  {
    fps: [FP_A, FP_B.replace(/^AA/, 'AB')],
    digestHex: '1f4c1f9ded73967699c221c0fd096dafd76f13930d61cfb16312e13ced37c2fc',
    text: 'cabin radar pepper igloo maple',
  },
];

test('the code is symmetric and matches the golden vectors', async () => {
  for (const { fps: [x, y], digestHex, text } of GOLDEN) {
    const a = await securityCode(sdp(x), sdp(y, 'session'), webcrypto.subtle);
    const b = await securityCode(sdp(y, 'session'), sdp(x), webcrypto.subtle);
    assert.deepEqual(a, b);
    assert.equal(a.words.length, CODE_WORDS);
    assert.equal(a.text, text);
    assert.equal(a.text, a.words.join(' '));
    // The hashed input is exactly the sorted pair, whatever the argument order.
    const input = securityInput(`sha-256 ${y}`, `sha-256 ${x}`);
    assert.equal(input, securityInput(`sha-256 ${x}`, `sha-256 ${y}`));
    assert.equal(createHash('sha256').update(input).digest('hex'), digestHex);
    assert.deepEqual(wordsFromDigest(Buffer.from(digestHex, 'hex')), text.split(' '));
  }
});

test('a different certificate on either side changes the code', async () => {
  const FP_C = FP_B.replace(/^AA/, 'AB');
  const base = await securityCode(sdp(FP_A), sdp(FP_B, 'session'), webcrypto.subtle);
  const mitm = await securityCode(sdp(FP_A), sdp(FP_C, 'session'), webcrypto.subtle);
  assert.notEqual(base.text, mitm.text);
});

test('no code without both fingerprints', async () => {
  assert.equal(await securityCode(sdp(FP_A), 'v=0\r\n', webcrypto.subtle), null);
  assert.equal(await securityCode('', sdp(FP_A), webcrypto.subtle), null);
});

test('words come from the top 30 bits of the digest', () => {
  assert.deepEqual(wordsFromDigest([0, 0, 0, 0]), Array(5).fill(WORDS[0]));
  assert.deepEqual(wordsFromDigest([0xff, 0xff, 0xff, 0xff]), Array(5).fill(WORDS[63]));
  // 000001 000010 000011 000100 000101 00 -> 1 2 3 4 5
  const bits = (1 << 26) | (2 << 20) | (3 << 14) | (4 << 8) | (5 << 2);
  const bytes = [bits >>> 24, (bits >>> 16) & 255, (bits >>> 8) & 255, bits & 255];
  assert.deepEqual(wordsFromDigest(bytes), [1, 2, 3, 4, 5].map((i) => WORDS[i]));
  assert.throws(() => wordsFromDigest([1, 2]), /too short/);
});
