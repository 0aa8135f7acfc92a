// What the page remembers (defects 2 and 9): the live call for a reload, the last call for a
// rejoin after closing the tab, the chat (bounded), the display name. Storage is a Map here.
import assert from 'node:assert/strict';
import test from 'node:test';
import * as store from '../js/lib/store.js';

function memory() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
    map: m,
  };
}

test('the live call: merged patches, chat kept and bounded, forgotten at the end', () => {
  const s = memory();
  assert.equal(store.loadSession(s), null);
  store.saveSession(s, { token: 't', path: '/call', callId: 'c' });
  store.saveSession(s, { startedAt: 1234 });
  assert.deepEqual(store.loadSession(s), { token: 't', path: '/call', callId: 'c', startedAt: 1234 });
  for (let i = 0; i < store.MAX_CHAT_LINES + 5; i++) store.appendChat(s, i % 2 ? 'mine' : 'theirs', `line ${i}`);
  const chat = store.loadSession(s).chat;
  assert.equal(chat.length, store.MAX_CHAT_LINES);
  assert.equal(chat.at(-1).text, `line ${store.MAX_CHAT_LINES + 4}`);
  store.forgetSession(s);
  assert.equal(store.loadSession(s), null);
  // No call stored: chat lines are not kept anywhere.
  store.appendChat(s, 'mine', 'x');
  assert.equal(s.map.size, 0);
});

test('a broken or foreign entry is ignored, a throwing storage is survived', () => {
  const s = memory();
  s.setItem(store.SESSION_KEY, '{not json');
  assert.equal(store.loadSession(s), null);
  s.setItem(store.SESSION_KEY, JSON.stringify({ token: 5 }));
  assert.equal(store.loadSession(s), null);
  const throwing = { getItem() { throw new Error('denied'); }, setItem() { throw new Error('full'); }, removeItem() {} };
  assert.equal(store.loadSession(throwing), null);
  assert.doesNotThrow(() => store.saveSession(throwing, { token: 't', path: '/' }));
});

test('the last call: offered by code and on the home screen while recent', () => {
  const s = memory();
  const now = 1_000_000;
  store.saveRecent(s, { token: 't', callId: 'c', code: '7KQ2ZD', path: '/c/7KQ2ZD' }, now);
  assert.equal(store.loadRecent(s, now + 1000).code, '7KQ2ZD');
  assert.equal(store.recentForCode(s, '7KQ2ZD', now + 1000).token, 't');
  assert.equal(store.recentForCode(s, 'ABCDEF', now + 1000), null);
  assert.equal(store.loadRecent(s, now + store.RECENT_TTL_MS + 1), null);
  store.forgetRecent(s);
  assert.equal(store.loadRecent(s, now), null);
});

test('display name: trimmed, at most 40 characters, empty removes it', () => {
  const s = memory();
  assert.equal(store.saveName(s, '  Ada  '), 'Ada');
  assert.equal(store.loadName(s), 'Ada');
  assert.equal(store.saveName(s, 'x'.repeat(50)).length, 40);
  store.saveName(s, '   ');
  assert.equal(store.loadName(s), '');
});
