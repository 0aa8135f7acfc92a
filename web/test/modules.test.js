// Every browser module parses and exports what client.js imports (client.js itself runs at
// import and needs a DOM: the browser end-to-end test covers it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const web = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

test('browser modules load and export their classes', async () => {
  const api = await import('../js/api.js');
  assert.equal(typeof api.createCall, 'function');
  assert.equal(typeof api.resolveCode, 'function');
  assert.equal(typeof api.joinCall, 'function');
  assert.equal(typeof api.ApiError, 'function');
  assert.equal(typeof (await import('../js/media-session.js')).MediaSession, 'function');
  assert.equal(typeof (await import('../js/ui-controls.js')).Ui, 'function');
  assert.equal(typeof (await import('../js/signaling-session.js')).SignalingSession, 'function');
});

test('ApiError carries status, code and words', async () => {
  const { ApiError } = await import('../js/api.js');
  const e = new ApiError('resolve', 404, { error: { code: 'code-not-found', message: 'x' } }, null);
  assert.equal(e.status, 404);
  assert.equal(e.code, 'code-not-found');
  assert.match(e.message, /already used/);
});

test('every import in web/js resolves to a file that exists', () => {
  const files = [];
  const walk = (d) => {
    for (const f of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, f.name);
      if (f.isDirectory()) walk(p);
      else if (p.endsWith('.js')) files.push(p);
    }
  };
  walk(path.join(web, 'js'));
  assert.ok(files.length >= 12, `found ${files.length} modules`);
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    assert.match(text, /^\/\/ /, `${f} starts with a module comment`);
    for (const m of text.matchAll(/^import .* from '([^']+)';$/gm)) {
      const target = path.resolve(path.dirname(f), m[1]);
      assert.ok(readdirSync(path.dirname(target)).includes(path.basename(target)), `${f}: ${m[1]}`);
    }
  }
});

test('index.html references only files that exist, and no inline code', () => {
  const html = readFileSync(path.join(web, 'index.html'), 'utf8');
  for (const m of html.matchAll(/(?:src|href)="\/([^"]+)"/g)) {
    const p = path.join(web, m[1]);
    assert.ok(readFileSync(p).length > 0, m[1]);
  }
  assert.doesNotMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, 'inline script');
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, 'inline style or handler');
});
