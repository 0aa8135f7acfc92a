import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CODE_ALPHABET, codeFromPath, formatCode, normaliseCode, shareLink } from '../js/lib/code.js';
import { fixture } from './fixtures.js';

test('alphabet matches hermes_proto::code (Crockford without I L O U)', () => {
  assert.equal(CODE_ALPHABET, '0123456789ABCDEFGHJKMNPQRSTVWXYZ');
  for (const c of 'ILOU') assert.ok(!CODE_ALPHABET.includes(c));
});

test('normalises case, spaces, dashes and look-alikes', () => {
  assert.deepEqual(normaliseCode('7kq-2zd'), { ok: true, code: '7KQ2ZD' });
  assert.deepEqual(normaliseCode(' 7k q 2 z d '), { ok: true, code: '7KQ2ZD' });
  assert.deepEqual(normaliseCode('oil0io'), { ok: true, code: '011010' });
  assert.deepEqual(normaliseCode('abc\tdef'), { ok: true, code: 'ABCDEF' });
});

test('the resolve-request fixture code normalises to the create-response code', () => {
  const typed = fixture('api.resolve-request').code;
  const created = fixture('api.create-call-response').code;
  assert.deepEqual(normaliseCode(typed), { ok: true, code: created });
});

test('refuses bad characters with a clear message', () => {
  const r = normaliseCode('7KQ2ZU');
  assert.equal(r.ok, false);
  assert.equal(r.reason, 'bad-char');
  assert.match(r.message, /“U”/);
  assert.equal(normaliseCode('7KQ2Z!').reason, 'bad-char');
  assert.equal(normaliseCode('7KQ2ZÉ').reason, 'bad-char');
  // Unicode letters whose upper case is ASCII are not letters of a code (server agrees).
  assert.equal(normaliseCode('ı23456').reason, 'bad-char');
  assert.equal(normaliseCode('ſ23456').reason, 'bad-char');
  assert.equal(normaliseCode('\u212A23456').reason, 'bad-char');
});

test('refuses wrong lengths and empty input', () => {
  assert.equal(normaliseCode('').reason, 'empty');
  assert.equal(normaliseCode(' - ').reason, 'empty');
  assert.equal(normaliseCode(undefined).reason, 'empty');
  const short = normaliseCode('7KQ2Z');
  assert.equal(short.reason, 'too-short');
  assert.match(short.message, /has 5/);
  assert.equal(normaliseCode('7KQ2ZD7').reason, 'too-long');
});

test('every alphabet character round-trips, lower case too', () => {
  for (let i = 0; i + 6 <= CODE_ALPHABET.length; i += 6) {
    const c = CODE_ALPHABET.slice(i, i + 6);
    assert.deepEqual(normaliseCode(c.toLowerCase()), { ok: true, code: c });
  }
});

test('formats, parses paths and builds share links', () => {
  assert.equal(formatCode('7KQ2ZD'), '7KQ-2ZD');
  assert.equal(formatCode('ABC'), 'ABC');
  assert.equal(codeFromPath('/c/7KQ2ZD'), '7KQ2ZD');
  assert.equal(codeFromPath('/c/7kq-2zd/'), '7kq-2zd');
  assert.equal(codeFromPath('/c/7KQ%202ZD'), '7KQ 2ZD');
  assert.equal(codeFromPath('/c/%E0%A4%A'), null);
  assert.equal(codeFromPath('/'), null);
  assert.equal(codeFromPath('/c/'), null);
  assert.equal(codeFromPath('/c/a/b'), null);
  assert.equal(shareLink('https://call.example.com/', '7KQ2ZD'), 'https://call.example.com/c/7KQ2ZD');
});
