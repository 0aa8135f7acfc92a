// Keyboard shortcuts: letters without modifiers, never while typing; Escape always closes.
import assert from 'node:assert/strict';
import test from 'node:test';
import { SHORTCUTS, shortcutFor } from '../js/lib/shortcuts.js';

test('each letter maps to its action, case-insensitive', () => {
  for (const [key, action] of Object.entries(SHORTCUTS)) {
    assert.equal(shortcutFor({ key, targetTag: 'BODY' }), action, key);
    if (key.length === 1) assert.equal(shortcutFor({ key: key.toUpperCase(), targetTag: 'BUTTON' }), action);
  }
  assert.equal(shortcutFor({ key: '/', targetTag: 'BODY' }), 'help');
  assert.equal(shortcutFor({ key: 'x', targetTag: 'BODY' }), null);
});

test('never while typing or with a modifier (browser shortcuts stay theirs)', () => {
  for (const tag of ['INPUT', 'TEXTAREA', 'SELECT']) assert.equal(shortcutFor({ key: 'm', targetTag: tag }), null);
  assert.equal(shortcutFor({ key: 'm', targetEditable: true }), null);
  assert.equal(shortcutFor({ key: 'c', ctrlKey: true }), null);
  assert.equal(shortcutFor({ key: 'v', metaKey: true }), null);
  assert.equal(shortcutFor({ key: 'h', altKey: true }), null);
  assert.equal(shortcutFor({ key: 'Escape', targetTag: 'INPUT' }), 'close');
});
