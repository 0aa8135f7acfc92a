// Pasted links and codes with separators are accepted wherever a code is typed (defect 5).
import assert from 'node:assert/strict';
import test from 'node:test';
import { codeFromInput } from '../js/lib/code-input.js';

test('a pasted share link gives its code', () => {
  for (const t of [
    'https://call.example.com/c/7KQ2ZD',
    'http://127.0.0.1:8000/c/7kq2zd',
    'https://call.example.com/c/7KQ2ZD/',
    'https://call.example.com/c/7KQ-2ZD?utm=x#y',
    '  https://call.example.com/c/7KQ2ZD\n',
    'call.example.com/c/7KQ2ZD',
    'Join my call: https://call.example.com/c/7KQ2ZD',
  ]) {
    assert.deepEqual(codeFromInput(t), { ok: true, code: '7KQ2ZD' }, t);
  }
});

test('separators anywhere in a typed code are ignored', () => {
  for (const t of ['7KQ-2ZD', '7kq 2zd', '7KQ.2ZD', '7 K Q 2 Z D', '7KQ–2ZD', '7KQ_2ZD', '“7KQ-2ZD”', '7KQ/2ZD', 'okq2zd'.replace('o', '7')]) {
    assert.deepEqual(codeFromInput(t), { ok: true, code: '7KQ2ZD' }, t);
  }
  // Look-alikes still map like the server does.
  assert.deepEqual(codeFromInput('OIL-2ZD'), { ok: true, code: '0112ZD' });
});

test('wrong input still gets the strict rules, in words', () => {
  assert.equal(codeFromInput('7KQ2ZU').reason, 'bad-char');
  assert.equal(codeFromInput('7KQ2Z').reason, 'too-short');
  assert.equal(codeFromInput('').reason, 'empty');
  const noCode = codeFromInput('https://call.example.com/');
  assert.equal(noCode.reason, 'no-code');
  assert.match(noCode.message, /no call code/);
  assert.equal(codeFromInput('https://call.example.com/c/7KQ2ZU').reason, 'bad-char');
});
