// Drives two headless Chromium instances (Debian's /usr/bin/chromium through playwright-core)
// through real Hermes calls served by Caddy on loopback. Run by the hermes-e2e Rust tests,
// which start the stack; this script only talks to the browsers and to its parent.
//
// Usage: node call.mjs --base http://127.0.0.1:PORT --policy all|relay --runs N --out DIR
//                      [--scenarios timing,media,security,chat,screenshots,drop-ws,restart-signal,ice-restart,fresh-pc,hangup]
//                      [--ignore-https-errors true]   (a deployment test's Caddy with its local CA)
// Network lab (tests/e2e/src/netlab.rs): --chromium-a / --chromium-b are the executables of the
// two browsers (wrappers that start Chromium inside a lab site's network namespace), and
// `--scenarios lab --lab-rows '[{"name":…,"runs":N,"expect":"media"|"blocked","change":bool,
// "quality":bool}]'` makes calls row by row, asking the parent `lab-row NAME` before each row
// and `lab-change NAME` mid-call (it moves B's network); one `lab-call` line per call.
// Output: one JSON object per line on stdout. `{"event":"request","action":"restart-signal"}`
// asks the parent to restart the signal process; the parent answers with a line on stdin.
// `{"event":"request","action":"kill-signal"}` (scenario kill-signal) asks it to kill a signal
// replica that holds a participant of the call (scripts/deploy/compose_test.py).
// The last line is `{"event":"done","ok":true|false,...}`; exit code 0 only when ok.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const BASE = args.base;
const POLICY = args.policy ?? 'all';
const RUNS = Number(args.runs ?? 5);
const OUT = args.out ?? 'test-output';
const SCENARIOS = new Set((args.scenarios ?? 'denied,timing,media,security,chat,screenshots,drop-ws,restart-signal,ice-restart,glare,fresh-pc,reload,hangup').split(','));
// Scenarios of the web client as a product (tests/e2e/tests/web_client.rs): each runs alone.
const PRODUCT_SCENARIOS = ['typed-lobby', 'remote-state', 'share-screen', 'invite-again', 'rejoin', 'leave', 'devices', 'view', 'reload-keeps', 'lobby', 'code-expiry', 'keyboard', 'screens'];
const CHROMIUM = process.env.HERMES_CHROMIUM ?? '/usr/bin/chromium';
const IGNORE_HTTPS_ERRORS = args['ignore-https-errors'] === 'true';

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
];

const t0 = Date.now();
function emit(obj) {
  process.stdout.write(`${JSON.stringify({ ...obj, atMs: Date.now() - t0 })}\n`);
}

const stdinLines = readline.createInterface({ input: process.stdin });
const stdinQueue = [];
const stdinWaiters = [];
stdinLines.on('line', (l) => (stdinWaiters.length ? stdinWaiters.shift()(l) : stdinQueue.push(l)));
function askParent(action, timeoutMs = 30_000) {
  emit({ event: 'request', action });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`parent did not answer ${action}`)), timeoutMs);
    const done = (l) => {
      clearTimeout(timer);
      resolve(l);
    };
    if (stdinQueue.length) done(stdinQueue.shift());
    else stdinWaiters.push(done);
  });
}

class Check extends Error {}
function check(cond, what, detail) {
  if (!cond) throw new Check(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  emit({ event: 'check', ok: true, what });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function launch(name) {
  const executablePath = args[`chromium-${name.toLowerCase()}`] ?? CHROMIUM;
  const browser = await chromium.launch({ executablePath, headless: true, args: FLAGS });
  const context = await browser.newContext({
    viewport: { width: 1440, height: 900 },
    ignoreHTTPSErrors: IGNORE_HTTPS_ERRORS,
    permissions: ['camera', 'microphone', 'clipboard-read', 'clipboard-write'],
  });
  return { name, browser, context };
}

async function openPage(side) {
  const page = await side.context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning' || m.text().startsWith('[hermes]')) {
      emit({ event: 'console', side: side.name, type: m.type(), text: m.text().slice(0, 300) });
    }
  });
  page.on('pageerror', (e) => emit({ event: 'pageerror', side: side.name, text: String(e).slice(0, 500) }));
  return page;
}

/** Sum of framesDecoded over inbound video, the selected pair's local and remote candidate types. */
async function mediaStats(page) {
  return page.evaluate(async () => {
    const pc = globalThis.__hermes?.media?.pc;
    if (!pc) return null;
    const reports = [...(await pc.getStats()).values()];
    const byId = new Map(reports.map((r) => [r.id, r]));
    let frames = 0;
    for (const r of reports) if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded ?? 0;
    const transport = reports.find((r) => r.type === 'transport' && r.selectedCandidatePairId);
    const pair = transport
      ? byId.get(transport.selectedCandidatePairId)
      : reports.find((r) => r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded');
    const local = pair && byId.get(pair.localCandidateId);
    const remote = pair && byId.get(pair.remoteCandidateId);
    return {
      frames,
      localType: local?.candidateType ?? null,
      remoteType: remote?.candidateType ?? null,
      localAddress: local ? `${local.address ?? local.ip}:${local.port}` : null,
      ice: pc.iceConnectionState,
      ufrag: /^a=ice-ufrag:(\S+)/m.exec(pc.localDescription?.sdp ?? '')?.[1] ?? null,
    };
  });
}

/** framesDecoded grows on this page over `ms`. */
async function framesRising(page, what, ms = 800) {
  const a = await mediaStats(page);
  await sleep(ms);
  const b = await mediaStats(page);
  check(a && b && b.frames > a.frames && b.frames > 0, `${what}: framesDecoded rising`, { before: a?.frames, after: b?.frames });
  return b;
}

/** Wait until framesDecoded grows within a 500 ms window (media flowing), up to `timeout`. */
async function waitFramesFlow(page, timeout) {
  const deadline = Date.now() + timeout;
  let last = (await mediaStats(page))?.frames ?? 0;
  while (Date.now() < deadline) {
    await sleep(500);
    const now = (await mediaStats(page))?.frames ?? 0;
    if (now > last) return;
    last = now;
  }
  throw new Check(`media did not flow again within ${timeout} ms`);
}

async function connState(page) {
  return page.$eval('#conn-state', (e) => e.dataset.state);
}

async function waitState(page, state, timeout = 15_000) {
  await page.waitForFunction((s) => document.getElementById('conn-state').dataset.state === s, state, { timeout });
}

/**
 * The lobby a typed code or a link opens: once the preview is up (or a refusal is shown), as a
 * person would wait for it, press Join now.
 */
async function joinFromLobby(page) {
  await page.waitForSelector('#lobby', { state: 'visible', timeout: 15_000 });
  await page.waitForFunction(() => document.getElementById('lobby-video').srcObject !== null || !document.getElementById('lobby-error').hidden, null, { timeout: 15_000 });
  await page.click('#lobby-join');
}

/** A creates a call through the UI, B joins with the code through the UI (and the lobby). */
async function startCall(A, B, { typed, shoot, waitFrame = true } = {}) {
  const pa = await openPage(A);
  await pa.goto(BASE);
  await pa.click('#new-call');
  await pa.waitForFunction(() => document.getElementById('invite-code').textContent.length >= 6, null, { timeout: 10_000 });
  const shown = await pa.$eval('#invite-code', (e) => e.textContent);
  const link = await pa.$eval('#share-link', (e) => e.value);
  const code = shown.replace('-', '');
  if (shoot) {
    await screenshots(pa, 'call-waiting');
    await pa.click('#copy-link');
    await pa.waitForFunction(() => document.getElementById('copy-status').textContent !== '', null, { timeout: 5000 });
    const copied = await pa.evaluate(() => navigator.clipboard.readText());
    check(copied === link && (await pa.textContent('#copy-status')) === 'Link copied.', 'copy link puts the /c/CODE link on the clipboard', copied);
  }
  const pb = await openPage(B);
  await pb.goto(BASE);
  await pb.fill('#code-input', typed ? typed(code) : code);
  await pb.click('#join-button');
  await joinFromLobby(pb);
  if (!waitFrame) return { pa, pb, code, shown, link };
  await pb.waitForFunction(() => globalThis.__hermes.timing.firstFrame !== null, null, { timeout: 20_000 });
  const { joinMs, joinedMs } = await pb.evaluate(() => {
    const t = globalThis.__hermes.timing;
    return { joinMs: t.firstFrame - t.joinClick, joinedMs: t.joined - t.joinClick };
  });
  return { pa, pb, code, shown, link, joinMs, joinedMs };
}

/** B joins through the direct link with camera (or camera and microphone) refused. */
async function deniedCall(A, B, mode) {
  const pa = await openPage(A);
  await pa.goto(BASE);
  await pa.click('#new-call');
  await pa.waitForFunction(() => document.getElementById('invite-code').textContent.length >= 6, null, { timeout: 10_000 });
  const link = await pa.$eval('#share-link', (e) => e.value);
  const pb = await openPage(B);
  await pb.addInitScript((m) => {
    const md = navigator.mediaDevices;
    const real = md.getUserMedia.bind(md);
    md.getUserMedia = (c) =>
      c?.video || m === 'receive-only'
        ? Promise.reject(new DOMException('refused by the test', 'NotAllowedError'))
        : real(c);
  }, mode);
  await pb.goto(link);
  // The link opens the lobby (preview, devices, join muted): B joins from there.
  await pb.click('#lobby-join');
  await pb.waitForFunction(() => globalThis.__hermes.timing.firstFrame !== null, null, { timeout: 20_000 });
  check(true, `${mode}: B joined by the /c/CODE link and sees A`);
  const notice = await pb.textContent('#notice');
  const want = mode === 'audio-only' ? /audio only/ : /refused: the other person cannot see or hear you/;
  check(want.test(notice) && !(await pb.$eval('#notice', (e) => e.hidden)), `${mode}: B is told`, notice);
  check((await pb.textContent('#toggle-cam')) === 'No camera', `${mode}: camera button says no camera`);
  await waitState(pa, 'connected');
  if (mode === 'audio-only') {
    await pa.waitForFunction(async () => {
      const reports = [...(await globalThis.__hermes.media.pc.getStats()).values()];
      return reports.some((r) => r.type === 'inbound-rtp' && r.kind === 'audio' && r.packetsReceived > 0);
    }, null, { timeout: 10_000 });
    check(true, 'audio-only: A receives B\'s audio');
  }
  await pa.click('#hang-up');
  await pa.click('#end-for-both');
  await pb.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
  await pa.close();
  await pb.close();
}

/** B leaves and ends the call for both (Leave, then End call for both): both see the end card. */
async function hangUp(pa, pb) {
  await pb.click('#hang-up');
  await pb.click('#end-for-both');
  await pb.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
  await pa.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
}

async function screenshots(page, name) {
  mkdirSync(OUT, { recursive: true });
  for (const [w, h] of [[390, 844], [768, 1024], [1440, 900]]) {
    await page.setViewportSize({ width: w, height: h });
    await sleep(150);
    const file = path.join(OUT, `${name}-${w}x${h}.png`);
    await page.screenshot({ path: file });
    emit({ event: 'screenshot', file });
  }
  await page.setViewportSize({ width: 1440, height: 900 });
}

/** The selected candidate pair of a page: types, transports, addresses, RTT; frames decoded. */
async function pathStats(page) {
  return page.evaluate(async () => {
    const pc = globalThis.__hermes?.media?.pc;
    if (!pc) return null;
    const reports = [...(await pc.getStats()).values()];
    const byId = new Map(reports.map((r) => [r.id, r]));
    let frames = 0;
    for (const r of reports) if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded ?? 0;
    const transport = reports.find((r) => r.type === 'transport' && r.selectedCandidatePairId);
    const pair = transport && byId.get(transport.selectedCandidatePairId);
    const cand = (c) => c && {
      type: c.candidateType,
      protocol: c.protocol,
      relayProtocol: c.relayProtocol ?? null,
      address: `${c.address ?? c.ip}:${c.port}`,
    };
    return {
      frames,
      local: cand(pair && byId.get(pair.localCandidateId)) ?? null,
      remote: cand(pair && byId.get(pair.remoteCandidateId)) ?? null,
      rttMs: pair?.currentRoundTripTime === undefined ? null : Math.round(pair.currentRoundTripTime * 1000),
      ice: pc.iceConnectionState,
    };
  });
}

/** One lab row: calls whose media must flow (with the path reported), or must be blocked. */
async function labRow(A, B, row, result) {
  const answer = await askParent(`lab-row ${row.name}`);
  check(answer === 'restarted', `${row.name}: lab configured`, answer);
  for (let run = 1; run <= (row.runs ?? 1); run++) {
    if (row.expect === 'blocked') {
      const c = await startCall(A, B, { waitFrame: false });
      const clicked = await c.pb.evaluate(() => globalThis.__hermes.timing.joinClick);
      for (const [name, p] of [['A', c.pa], ['B', c.pb]]) {
        await p.waitForFunction(() => !document.getElementById('blocked').hidden, null, { timeout: 20_000 });
        const text = await p.textContent('#blocked-text');
        check(/network/.test(text) && /blocks the call/.test(text), `${row.name}: ${name} is told the network blocks the call`, text);
        check(await p.isVisible('#blocked-retry'), `${row.name}: ${name} is offered to try again`);
        check((await connState(p)) === 'blocked', `${row.name}: ${name} does not hang on connecting`, await connState(p));
      }
      const blockedMs = Math.round((await c.pb.evaluate(() => performance.now())) - clicked);
      check(blockedMs <= 20_000, `${row.name}: both told within 20 s of the join click`, blockedMs);
      await c.pb.click('#blocked-retry');
      check(await c.pb.$eval('#blocked', (e) => e.hidden), `${row.name}: try again hides the message while it retries`);
      const frames = await Promise.all([c.pa, c.pb].map(async (p) => (await pathStats(p))?.frames ?? 0));
      check(frames[0] === 0 && frames[1] === 0, `${row.name}: no frame got through`, frames);
      emit({ event: 'lab-call', row: row.name, run, blockedMs });
      await hangUp(c.pa, c.pb);
      await c.pa.close();
      await c.pb.close();
      continue;
    }
    const c = await startCall(A, B);
    await waitState(c.pa, 'connected');
    await waitState(c.pb, 'connected');
    await framesRising(c.pa, `${row.name}: A`);
    await framesRising(c.pb, `${row.name}: B`);
    if (row.direct) {
      // ICE may nominate a relayed pair first and switch once a direct one succeeds: the
      // direct path must be the one in use within 10 s.
      const deadline = Date.now() + 10_000;
      const relayed = async () =>
        (await Promise.all([c.pa, c.pb].map(pathStats))).some((s) => s?.local?.type === 'relay' || s?.remote?.type === 'relay');
      while ((await relayed()) && Date.now() < deadline) await sleep(250);
    }
    const call = { event: 'lab-call', row: row.name, run, joinMs: Math.round(c.joinMs), A: await pathStats(c.pa), B: await pathStats(c.pb) };
    // What each page got from getUserMedia, and what it told its person about it.
    call.devices = {};
    for (const [name, p] of [['A', c.pa], ['B', c.pb]]) {
      call.devices[name] = await p.evaluate(() => ({
        secure: globalThis.isSecureContext,
        tracks: (globalThis.__hermes.media.localStream?.getTracks() ?? []).map((t) => t.kind).sort(),
        notice: document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent,
      }));
    }
    if (row.quality) {
      // The stats summary runs every 5 s; B's lossy, slow uplink shows on A's side (and B's RTT).
      await c.pa.waitForFunction(() => ['fair', 'poor'].includes(document.getElementById('quality').dataset.level), null, { timeout: 30_000 });
      call.quality = { A: await c.pa.$eval('#quality', (e) => e.dataset.level), B: await c.pb.$eval('#quality', (e) => e.dataset.level) };
      call.summaryA = await c.pa.evaluate(() => globalThis.__hermes.media.lastSummary);
      check(true, `${row.name}: quality indicator shows the degraded link`, call.quality);
    }
    if (row.change) {
      const debugState = (p) => p.evaluate(() => ({
        log: globalThis.__hermes.stateLog.map((x) => `${x.state}@${Math.round(x.t)}`),
        state: globalThis.__hermes.state,
        connects: globalThis.__hermes.signaling?.connects,
        ice: globalThis.__hermes.media?.pc?.iceConnectionState ?? null,
        pcs: globalThis.__hermes.media?.pcGeneration,
        restarts: globalThis.__hermes.media?.iceRestarts,
        now: Math.round(performance.now()),
      }));
      const watch = setInterval(async () => {
        try {
          emit({ event: 'lab-debug', row: row.name, A: await debugState(c.pa), B: await debugState(c.pb) });
        } catch {
          // page closing
        }
      }, 3000);
      try {
        await labChange(c, row, call);
      } finally {
        clearInterval(watch);
      }
    }
    emit(call);
    await hangUp(c.pa, c.pb);
    await c.pa.close();
    await c.pb.close();
  }
}

/** B's network changes mid-call: the call must recover by itself; the time is reported. */
async function labChange(c, row, call) {
  {
      const before = await Promise.all([c.pa, c.pb].map((p) => p.evaluate(() => globalThis.__hermes.stateLog.length)));
      const t = Date.now();
      const moved = await askParent(`lab-change ${row.name}`);
      check(moved === 'restarted', `${row.name}: B's network changed`, moved);
      await c.pb.waitForFunction(
        (n) => globalThis.__hermes.stateLog.slice(n).some((x) => x.state === 'reconnecting'),
        before[1],
        { timeout: 30_000 },
      );
      for (const [i, p] of [c.pa, c.pb].entries()) {
        await p.waitForFunction(
          (n) => {
            const log = globalThis.__hermes.stateLog.slice(n).map((x) => x.state);
            return log.at(-1) === 'connected' && globalThis.__hermes.media.pc?.iceConnectionState !== 'disconnected';
          },
          before[i],
          { timeout: 45_000 },
        );
        await waitFramesFlow(p, 45_000);
      }
      call.recoveryMs = Date.now() - t;
      call.stateLog = await Promise.all([c.pa, c.pb].map((p, i) => p.evaluate((n) => globalThis.__hermes.stateLog.slice(n).map((x) => x.state), before[i])));
      check(call.stateLog[1].includes('reconnecting') && call.stateLog[1].at(-1) === 'connected', `${row.name}: B showed reconnecting then connected`, call.stateLog);
      await framesRising(c.pa, `${row.name}: A after the network change`);
      await framesRising(c.pb, `${row.name}: B after the network change`);
      call.after = { A: await pathStats(c.pa), B: await pathStats(c.pb) };
  }
}

// ---------------------------------------------------------------- the web client as a product

/** Wait until `fn` (evaluated in the page) is truthy. */
function until(page, fn, arg, timeout = 10_000) {
  return page.waitForFunction(fn, arg, { timeout });
}

/** A creates a call; B pastes the whole share link into the code field (defect 5). */
async function callByPastedLink(A, B) {
  const pa = await openPage(A);
  await pa.goto(BASE);
  await pa.click('#new-call');
  await until(pa, () => document.getElementById('invite-code').textContent.length >= 6);
  const link = await pa.$eval('#share-link', (e) => e.value);
  const pb = await openPage(B);
  await pb.goto(BASE);
  await pb.fill('#code-input', link);
  await pb.click('#join-button');
  await joinFromLobby(pb);
  await until(pb, () => globalThis.__hermes.timing.firstFrame !== null, null, 20_000);
  await waitState(pa, 'connected');
  await waitState(pb, 'connected');
  return { pa, pb, link, code: link.split('/c/')[1] };
}

async function closeAll(...pages) {
  for (const p of pages) await p.close().catch(() => {});
}

/** Text of a QR code in a screenshot of `selector`, decoded by zbarimg (an independent reader). */
async function decodeQr(page, selector) {
  mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, `qr-${Date.now()}.png`);
  await page.locator(selector).screenshot({ path: file });
  return execFileSync('zbarimg', ['--raw', '-q', file], { encoding: 'utf8' }).trim();
}

const PRODUCT = {
  /** Defect 1: the other person's camera off, mic off, speaking; pasted link (defect 5). */
  async 'remote-state'(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    check(true, 'pasted share link joins the call');
    await until(pb, () => document.getElementById('stage').dataset.stage === 'media');
    // Speaking: Chromium's fake microphone beeps; B sees the level and the ring.
    await until(pb, () => document.getElementById('stage').dataset.speaking === 'true', null, 15_000);
    check(true, 'speaking indicator lights up for the other person\'s voice');
    await pa.click('#toggle-cam');
    await until(pb, () => document.getElementById('stage').dataset.stage === 'cam-off');
    const words = await pb.textContent('#peer-status');
    check(/camera is off/.test(words) && (await pb.isVisible('#peer-avatar')), 'remote camera off: placeholder with words and avatar', words);
    await pa.click('#toggle-mic');
    await until(pb, () => !document.getElementById('remote-muted').hidden);
    check(await pb.isVisible('#remote-muted'), 'remote mic off: muted badge');
    check(await pb.$eval('#stage', (e) => e.dataset.speaking !== 'true'), 'no speaking ring while muted');
    // Speaking into a muted mic: A is told.
    await until(pa, () => !document.getElementById('muted-hint').hidden, null, 15_000);
    check(true, 'muted hint when speaking into a muted mic');
    if (args.shoot !== 'no') {
      await screenshots(pb, 'call-remote-camera-off');
      await screenshots(pa, 'call-own-camera-off');
    }
    await pa.click('#toggle-cam');
    await pa.click('#toggle-mic');
    await until(pb, () => document.getElementById('stage').dataset.stage === 'media' && document.getElementById('remote-muted').hidden);
    check(true, 'camera and mic back: placeholder and badge gone');
    // The name typed in the devices panel reaches the other side, never the server.
    await pa.click('#toggle-settings');
    await pa.fill('#my-name', 'Ada');
    await pa.press('#my-name', 'Enter');
    await pa.$eval('#my-name', (e) => e.dispatchEvent(new Event('change')));
    await until(pb, () => document.getElementById('remote-name').textContent === 'Ada');
    check(true, 'display name shown to the other person');
    await pa.click('#toggle-settings');
    await hangUp(pa, pb);
    const dur = await pb.textContent('#ended-duration');
    check(/Call length \d+:\d\d/.test(dur), 'end card shows the duration', dur);
    check(await pb.evaluate(() => document.activeElement?.closest('#ended') !== null), 'focus moved into the end card');
    await closeAll(pa, pb);
  },

  /** Screen sharing with Chromium's fake display source; the security code stays valid. */
  async 'share-screen'(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    await until(pa, () => document.getElementById('security-code').textContent.length > 0);
    const before = await pa.textContent('#security-code');
    await pa.click('#toggle-share');
    await until(pa, () => document.getElementById('toggle-share').getAttribute('aria-pressed') === 'true');
    await until(pb, () => globalThis.__hermes.remote.screen === true);
    check(true, 'screen share: the other side is told');
    const label = await pa.evaluate(() => globalThis.__hermes.media.pc.getSenders().find((s) => s.track?.kind === 'video')?.track?.label ?? '');
    check(!/fake|camera/i.test(label) || /screen|display|window/i.test(label), 'screen share: the video sender carries the display track', label);
    await framesRising(pb, 'B while A shares the screen');
    check((await pa.textContent('#security-code')) === before && (await pb.textContent('#security-code')) === before, 'screen share: security code unchanged and equal');
    await pa.click('#toggle-share');
    await until(pb, () => globalThis.__hermes.remote.screen === false);
    await framesRising(pb, 'B after A stopped sharing');
    await hangUp(pa, pb);
    await closeAll(pa, pb);
  },

  /** Defect 2: the other person closes the tab; A mints a new code from inside the call. */
  async 'invite-again'(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    await pb.close();
    await until(pa, () => document.getElementById('conn-state').dataset.state === 'alone', null, 25_000);
    const pill = await pa.textContent('#conn-state');
    const timerStopped = await pa.$eval('#call-timer', (e) => e.textContent);
    check(!(await pa.isVisible('#quality')), 'alone: no quality pill', pill);
    await sleep(1200);
    check((await pa.$eval('#call-timer', (e) => e.textContent)) === timerStopped, 'alone: timer stopped');
    const states = await pa.evaluate(() => document.getElementById('conn-state').textContent + '|' + document.getElementById('peer-status').textContent);
    check(!/Reconnecting|Poor/.test(states), 'alone: no contradicting status', states);
    if (args.shoot !== 'no') await screenshots(pa, 'call-alone');
    await pa.click('#new-code');
    await until(pa, () => document.getElementById('invite').dataset.mode === 'code' && document.getElementById('invite-code').textContent.length >= 6);
    const link = await pa.$eval('#share-link', (e) => e.value);
    check(/\/c\/[0-9A-Z]{6}$/.test(link), 'new code from inside the call', link);
    const decoded = await decodeQr(pa, '#invite-qr');
    check(decoded === link, 'QR code on the page decodes to the share link (zbarimg)', { decoded, link });
    // A is busy in another tab: when someone joins, the title changes and A is notified.
    await pa.evaluate(() => {
      Object.defineProperty(document, 'hidden', { value: true, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    // Someone new joins with it (B's browser, a fresh tab, typing the code).
    const pc = await openPage(B);
    await pc.goto(BASE);
    await pc.fill('#code-input', link.split('/c/')[1]);
    await pc.click('#join-button');
    await joinFromLobby(pc);
    await until(pc, () => globalThis.__hermes.timing.firstFrame !== null, null, 20_000);
    await waitState(pa, 'connected');
    const title = await pa.title();
    check(/^● .*joined/.test(title) && (await pa.evaluate(() => globalThis.__hermes.notifications.length)) >= 1, 'join while in another tab: title changes, chime and notification', title);
    await pa.evaluate(() => {
      Object.defineProperty(document, 'hidden', { value: false, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    check(!(await pa.title()).startsWith('●'), 'title back when the tab is looked at');
    await framesRising(pa, 'A with the person invited again');
    await hangUp(pa, pc);
    await closeAll(pa, pc);
  },

  /** Defect 2: B closes the tab by accident and comes back by the same link. */
  async rejoin(A, B) {
    const { pa, pb, link } = await callByPastedLink(A, B);
    await pb.close();
    await until(pa, () => ['peer-away', 'alone'].includes(document.getElementById('conn-state').dataset.state), null, 15_000);
    const again = await openPage(B);
    await again.goto(link);
    await again.waitForSelector('#lobby', { state: 'visible' });
    await again.click('#lobby-join');
    await waitState(again, 'connected', 20_000);
    await waitState(pa, 'connected', 20_000);
    check(true, 'rejoin after closing the tab: the same link works again');
    await framesRising(again, 'B after rejoining');
    await framesRising(pa, 'A after B rejoined');
    // The home screen offers the live call too.
    const home = await openPage(B);
    await home.goto(BASE);
    await home.waitForSelector('#rejoin-card', { state: 'visible' });
    check(true, 'home offers to rejoin the call that is still on');
    await home.close();
    await hangUp(pa, again);
    await closeAll(pa, again);
  },

  /**
   * Leave is not final: the other person is told at once (not after the server's grace), Rejoin
   * in the undo window or from the end card brings the call back with media; End call for both
   * ends it for the other person too.
   */
  async leave(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    const leftAt = await pa.evaluate(() => performance.now());
    await pb.click('#hang-up');
    await pb.waitForSelector('#left-bar', { state: 'visible' });
    check((await connState(pb)) === 'left' && (await pb.evaluate(() => document.activeElement?.id)) === 'undo-leave', 'leave: "You left" with Rejoin focused');
    check(!(await pb.isVisible('#ended')), 'leave: no end card during the undo window');
    await waitState(pa, 'alone', 5000);
    const seen = await pa.evaluate((t) => globalThis.__hermes.stateLog.filter((e) => e.t >= t).map((e) => e.state), leftAt);
    check(!seen.includes('peer-away') && /left the call/.test(await pa.textContent('#peer-status')), 'leave: the other person is told at once, not "reconnecting"', seen);
    // Signaling `leave` freed B's seat at once: A's server says peer-left {left}, not reconnecting.
    await pa.waitForFunction((t) => globalThis.__hermes.peerEvents.some((e) => e.t >= t && e.type === 'peer-left'), leftAt, { timeout: 5000 });
    const presence = await pa.evaluate((t) => globalThis.__hermes.peerEvents.filter((e) => e.t >= t), leftAt);
    check(presence.some((e) => e.type === 'peer-left' && e.reason === 'left') && !presence.some((e) => e.type === 'peer-reconnecting'), 'leave: the server freed the seat at once (peer-left {left})', presence);
    await pb.click('#undo-leave');
    await waitState(pb, 'connected', 20_000);
    await waitState(pa, 'connected', 20_000);
    check(true, 'leave: Rejoin in the undo window brings the call back');
    await framesRising(pb, 'B after undoing Leave');
    await framesRising(pa, 'A after B undid Leave');
    // H leaves too; after the undo window the end card offers Rejoin and End call for both.
    await pb.locator('body').click({ position: { x: 5, y: 5 } }).catch(() => {});
    await pb.keyboard.press('h');
    await pb.waitForSelector('#left-bar', { state: 'visible' });
    await pb.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
    const card = { title: await pb.textContent('#ended-title'), rejoin: await pb.isVisible('#rejoin'), end: await pb.isVisible('#end-ended') };
    check(card.title === 'You left the call' && card.rejoin && card.end, 'leave: after the undo window, the end card offers Rejoin and End call for both', card);
    await pb.click('#rejoin');
    await waitState(pb, 'connected', 20_000);
    await waitState(pa, 'connected', 20_000);
    await framesRising(pa, 'A after B rejoined from the end card');
    await pb.click('#hang-up');
    await pb.click('#end-for-both');
    await pb.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
    await pa.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
    const words = { b: await pb.textContent('#ended-reason'), a: await pa.textContent('#ended-reason'), rejoin: await pb.isVisible('#rejoin') };
    check(/ended the call for both/.test(words.b) && /ended the call/.test(words.a) && !words.rejoin, 'leave: End call for both ends it for the other person', words);
    await closeAll(pa, pb);
    // The creator leaves the waiting screen by accident: Rejoin brings back the same invitation.
    const pc = await openPage(A);
    await pc.goto(BASE);
    await pc.click('#new-call');
    await waitState(pc, 'waiting');
    const code = await pc.textContent('#invite-code');
    await pc.click('#hang-up');
    await pc.waitForSelector('#left-bar', { state: 'visible' });
    await pc.click('#undo-leave');
    await waitState(pc, 'waiting', 10_000);
    check((await pc.textContent('#invite-code')) === code && (await pc.isVisible('#invite')), 'leave while waiting: Rejoin shows the same code again', code);
    await pc.click('#hang-up');
    await pc.click('#end-for-both');
    await pc.waitForSelector('#ended', { state: 'visible' });
    await pc.close();
  },

  /**
   * Devices in a call: the speaker (output) list where the browser can route sound, hot-plug
   * (a device appears; the camera in use goes away and the next one takes over), and Try again
   * after camera and microphone were refused, without leaving the call.
   */
  async devices(A, B) {
    const pa = await openPage(A);
    await pa.goto(BASE);
    await pa.click('#new-call');
    await until(pa, () => document.getElementById('invite-code').textContent.length >= 6);
    const link = await pa.$eval('#share-link', (e) => e.value);
    const pb = await openPage(B);
    await pb.addInitScript(() => {
      const md = navigator.mediaDevices;
      const real = md.getUserMedia.bind(md);
      md.getUserMedia = (c) => (globalThis.__allowMedia ? real(c) : Promise.reject(new DOMException('refused by the test', 'NotAllowedError')));
    });
    await pb.goto(link);
    await pb.waitForSelector('#lobby', { state: 'visible' });
    await until(pb, () => !document.getElementById('lobby-retry').hidden);
    await pb.click('#lobby-join');
    await waitState(pb, 'connected', 20_000);
    await waitState(pa, 'connected', 20_000);
    await until(pb, () => !document.getElementById('retry-media').hidden);
    check(/refused/.test(await pb.textContent('#notice-text')), 'in call after a refusal: told, Try again offered');
    await pb.evaluate(() => (globalThis.__allowMedia = true));
    await pb.click('#retry-media');
    await until(pb, () => globalThis.__hermes.media.localStream.getVideoTracks().some((t) => t.readyState === 'live') && document.getElementById('notice').hidden, null, 10_000);
    check((await pb.getAttribute('#toggle-cam', 'aria-pressed')) === 'true', 'in-call Try again: camera and microphone on, notice gone');
    await framesRising(pa, 'A sees B after B\'s in-call Try again');

    // Speaker: listed and switchable where the browser routes sound (setSinkId).
    const out = await pa.evaluate(async () => ({
      sinkable: 'setSinkId' in HTMLMediaElement.prototype,
      outputs: (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audiooutput').map((d) => d.deviceId),
    }));
    emit({ event: 'info', what: 'audio outputs', ...out });
    await pa.click('#toggle-settings');
    if (out.sinkable && out.outputs.length > 0) {
      const listed = await pa.$$eval('#speaker-select option', (os) => os.map((o) => o.value));
      check(await pa.isVisible('#speaker-select') && out.outputs.every((id) => listed.includes(id)), 'speaker list shows every audio output', listed);
      const target = out.outputs[out.outputs.length - 1];
      await pa.selectOption('#speaker-select', target);
      await until(pa, (id) => document.getElementById('remote-video').sinkId === id, target, 5000);
      check(true, 'choosing a speaker routes the other person\'s sound there');
    } else {
      check(!(await pa.isVisible('#speaker-select')), 'no audio output to choose: speaker list hidden', out);
    }

    // Hot-plug: a camera appears (the list follows the devicechange event) …
    await pa.evaluate(() => {
      const md = navigator.mediaDevices;
      const real = md.enumerateDevices.bind(md);
      md.enumerateDevices = async () => [...(await real()), { deviceId: 'hotplug-cam', groupId: 'hotplug', kind: 'videoinput', label: 'USB camera (plugged in)', toJSON() { return this; } }];
      md.dispatchEvent(new Event('devicechange'));
    });
    await until(pa, () => [...document.querySelectorAll('#cam-select option')].some((o) => o.textContent === 'USB camera (plugged in)'), null, 5000);
    check(true, 'hot-plug: a new camera shows in the list');
    // … and the camera in use goes away: the call falls back to a camera that is there.
    await pa.evaluate(() => {
      const md = navigator.mediaDevices;
      delete md.enumerateDevices; // the real one again (own property removed)
      globalThis.__hermes.media.localStream.getVideoTracks()[0].stop();
      md.dispatchEvent(new Event('devicechange'));
    });
    await until(pa, () => globalThis.__hermes.media.localStream.getVideoTracks().some((t) => t.readyState === 'live'), null, 10_000);
    check(![...(await pa.$$eval('#cam-select option', (os) => os.map((o) => o.textContent)))].includes('USB camera (plugged in)'), 'hot-plug: an unplugged camera leaves the list');
    await framesRising(pb, 'B after A\'s camera went away and another took over');
    await pa.click('#toggle-settings');
    await hangUp(pa, pb);
    await closeAll(pa, pb);

    // Where the browser cannot route sound or float a video, those controls are not offered.
    const pc = await openPage(A);
    await pc.addInitScript(() => {
      delete HTMLMediaElement.prototype.setSinkId;
      Object.defineProperty(Document.prototype, 'pictureInPictureEnabled', { get: () => false, configurable: true });
    });
    await pc.goto(BASE);
    await pc.click('#new-call');
    await until(pc, () => document.getElementById('invite-code').textContent.length >= 6);
    // The device lists are filled in the same step that decides on the speaker list (after the
    // PiP button's): once they are, both decisions are made.
    await until(pc, () => document.querySelectorAll('#mic-select option').length > 0);
    await pc.click('#toggle-settings');
    check(!(await pc.isVisible('#speaker-select')) && !(await pc.isVisible('#toggle-pip')), 'no setSinkId / no picture in picture: speaker list and PiP button hidden');
    await pc.close();
  },

  /**
   * The picture: picture in picture, controls that hide when idle and come back on pointer or
   * key, the self-view dragged, hidden and swapped with the other person.
   */
  async view(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    // Picture in picture (where this Chromium offers it).
    if (await pa.evaluate(() => document.pictureInPictureEnabled === true)) {
      await until(pa, () => document.getElementById('remote-video').readyState >= 1);
      await pa.click('#toggle-pip');
      await until(pa, () => document.pictureInPictureElement?.id === 'remote-video' && document.getElementById('toggle-pip').getAttribute('aria-pressed') === 'true', null, 5000);
      check(true, 'picture in picture: the other person floats, button pressed');
      await pa.click('#toggle-pip');
      await until(pa, () => document.pictureInPictureElement === null && document.getElementById('toggle-pip').getAttribute('aria-pressed') === 'false', null, 5000);
      check(true, 'picture in picture: back in the page');
    } else {
      check(!(await pa.isVisible('#toggle-pip')), 'picture in picture unsupported here: button hidden');
    }
    // Controls hide after a few idle seconds and come back on a pointer move, then on a key.
    const controlsShown = () => pa.$eval('nav.controls', (e) => getComputedStyle(e).opacity);
    // (Focus on a control keeps them shown for keyboard users: a click on the picture moves it away.)
    await pa.locator('#stage').click({ position: { x: 20, y: 200 } });
    check(await pa.evaluate(() => document.getElementById('call').dataset.idle === 'false'), 'controls shown after a click');
    await until(pa, () => document.getElementById('call').dataset.idle === 'true', null, 10_000);
    await until(pa, () => getComputedStyle(document.querySelector('nav.controls')).opacity === '0', null, 2000);
    check(true, 'controls hide after a few idle seconds');
    await pa.mouse.move(300, 300);
    await until(pa, () => document.getElementById('call').dataset.idle === 'false', null, 2000);
    await until(pa, () => getComputedStyle(document.querySelector('nav.controls')).opacity === '1', null, 2000);
    check(true, 'controls back on a pointer move', await controlsShown());
    await until(pa, () => document.getElementById('call').dataset.idle === 'true', null, 10_000);
    await pa.keyboard.press('Shift');
    await until(pa, () => document.getElementById('call').dataset.idle === 'false', null, 2000);
    check(true, 'controls back on a key press');
    // The self-view: dragged to the other corner, kept inside the picture.
    const before = await pa.$eval('#self', (e) => e.getBoundingClientRect().toJSON());
    const stage = await pa.$eval('#stage', (e) => e.getBoundingClientRect().toJSON());
    await pa.mouse.move(before.x + 10, before.y + 10);
    await pa.mouse.down();
    await pa.mouse.move(stage.x + 30, stage.y + 80, { steps: 8 });
    await pa.mouse.move(stage.x - 200, stage.y + 80, { steps: 4 });
    await pa.mouse.up();
    const after = await pa.$eval('#self', (e) => e.getBoundingClientRect().toJSON());
    check(Math.abs(after.x - stage.x) <= 1 && after.y < before.y - 100 && after.x + after.width <= stage.x + stage.width, 'self-view dragged to the other corner, kept inside the picture', { before, after, stage });
    // Hide and show again.
    await pa.click('#self-hide');
    check((await pa.$eval('#self', (e) => e.dataset.hidden)) === 'true' && (await pa.getAttribute('#self-hide', 'aria-pressed')) === 'true' && !(await pa.isVisible('#local-video')), 'self-view hidden');
    await pa.click('#self-hide');
    check((await pa.$eval('#self', (e) => e.dataset.hidden)) === 'false' && (await pa.isVisible('#local-video')), 'self-view shown again');
    // Swap: our picture large, theirs small; and back.
    const own = await pa.evaluate(() => globalThis.__hermes.media.localStream.id);
    await pa.click('#self-swap');
    const swapped = await pa.evaluate(() => ({ big: document.getElementById('remote-video').srcObject?.id, small: document.getElementById('local-video').srcObject?.id, flag: document.getElementById('stage').dataset.swapped }));
    check(swapped.big === own && swapped.small !== own && swapped.flag === 'true', 'swap: own picture large, the other person small', swapped);
    await pa.click('#self-swap');
    check((await pa.evaluate(() => document.getElementById('local-video').srcObject?.id)) === own, 'swap back');
    await framesRising(pa, 'A after the view changes');
    await hangUp(pa, pb);
    await closeAll(pa, pb);
  },

  /** Defect 9: a reload keeps the timer, the chat and says the security code changed. */
  async 'reload-keeps'(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    await pa.click('#toggle-chat');
    await until(pa, () => !document.getElementById('chat-input').disabled);
    await pa.fill('#chat-input', 'before the reload');
    await pa.press('#chat-input', 'Enter');
    await until(pb, () => [...document.querySelectorAll('#chat-log li')].some((li) => li.textContent === 'before the reload'));
    await sleep(2100);
    const t0 = await pb.textContent('#call-timer');
    await pb.reload();
    await waitState(pb, 'connected', 20_000);
    await until(pb, () => [...document.querySelectorAll('#chat-log li')].some((li) => li.textContent === 'before the reload'));
    check(true, 'reload: chat history kept');
    const t1 = await pb.textContent('#call-timer');
    const secs = (t) => t.split(':').reduce((a, b) => a * 60 + Number(b), 0);
    check(secs(t1) >= secs(t0), 'reload: the timer continues from the call start', [t0, t1]);
    await until(pb, () => !document.getElementById('security-changed').hidden, null, 15_000);
    check(true, 'reload: told to compare the security words again');
    if (args.shoot !== 'no') {
      await pb.click('#toggle-chat');
      await screenshots(pb, 'call-chat-open');
      await pb.click('#toggle-chat');
      await pb.click('#toggle-settings');
      await screenshots(pb, 'call-devices-open');
      await pb.click('#toggle-settings');
    }
    await hangUp(pa, pb);
    await closeAll(pa, pb);
  },

  /** Defect 6: the lobby: preview, join muted, refusal and Try again in the same page. */
  async lobby(A, B) {
    const pa = await openPage(A);
    await pa.goto(BASE);
    await pa.click('#new-call');
    await until(pa, () => document.getElementById('invite-code').textContent.length >= 6);
    const link = await pa.$eval('#share-link', (e) => e.value);
    const pb = await openPage(B);
    await pb.addInitScript(() => {
      const md = navigator.mediaDevices;
      const real = md.getUserMedia.bind(md);
      md.getUserMedia = (c) => (globalThis.__allowMedia ? real(c) : Promise.reject(new DOMException('refused by the test', 'NotAllowedError')));
    });
    await pb.goto(link);
    await pb.waitForSelector('#lobby', { state: 'visible' });
    await until(pb, () => !document.getElementById('lobby-retry').hidden);
    check(/refused: the other person cannot see or hear you/.test(await pb.textContent('#lobby-error')), 'lobby: refusal explained, Try again offered');
    if (args.shoot !== 'no') await screenshots(pb, 'lobby-denied');
    await pb.evaluate(() => (globalThis.__allowMedia = true));
    await pb.click('#lobby-retry');
    await until(pb, () => document.getElementById('lobby-video').srcObject?.getVideoTracks().length > 0);
    check(true, 'lobby: Try again asks again and shows the preview');
    await until(pb, () => Number((document.getElementById('lobby-meter').style.transform.match(/[\d.]+/) ?? ['0'])[0]) > 0, null, 10_000);
    check(true, 'lobby: mic level meter moves');
    if (args.shoot !== 'no') await screenshots(pb, 'lobby');
    await pb.click('#lobby-mic');
    await pb.fill('#display-name', 'Bea');
    await pb.click('#lobby-join');
    await waitState(pb, 'connected', 20_000);
    await until(pa, () => !document.getElementById('remote-muted').hidden && document.getElementById('remote-name').textContent === 'Bea');
    check(true, 'joined muted from the lobby, with a name');
    check((await pb.getAttribute('#toggle-mic', 'aria-pressed')) === 'false', 'lobby choice carried into the call');
    await hangUp(pa, pb);
    await closeAll(pa, pb);
  },

  /**
   * A typed code opens the same lobby as a link: preview, device lists, the mic meter, join
   * muted with the camera off. A wrong code is told on the home screen without a lobby.
   */
  async 'typed-lobby'(A, B) {
    const pa = await openPage(A);
    await pa.goto(BASE);
    await pa.click('#new-call');
    await until(pa, () => document.getElementById('invite-code').textContent.length >= 6);
    const code = (await pa.textContent('#invite-code')).replace('-', '');
    const pb = await openPage(B);
    await pb.goto(BASE);
    await pb.fill('#code-input', 'zzz-zz0');
    await pb.click('#join-button');
    await until(pb, () => !document.getElementById('join-error').hidden);
    check(!(await pb.isVisible('#lobby')) && (await pb.isVisible('#home')), 'typed: a wrong code is told on the home screen, no lobby');
    await pb.fill('#code-input', `${code.slice(0, 3).toLowerCase()} ${code.slice(3)}`);
    await pb.click('#join-button');
    await pb.waitForSelector('#lobby', { state: 'visible' });
    check(!(await pb.isVisible('#call')) && new URL(pb.url()).pathname === `/c/${code}`, 'typed: the code opens the lobby at /c/CODE, not the call');
    await until(pb, () => document.getElementById('lobby-video').srcObject?.getVideoTracks().length > 0);
    check(true, 'typed lobby: self-preview');
    // The lists are filled once the browser names the devices (just after the preview starts).
    await until(pb, () => document.querySelectorAll('#lobby-mic-select option').length > 0 && document.querySelectorAll('#lobby-cam-select option').length > 0, null, 5000);
    check(true, 'typed lobby: device choice filled');
    await until(pb, () => Number((document.getElementById('lobby-meter').style.transform.match(/[\d.]+/) ?? ['0'])[0]) > 0, null, 10_000);
    check(true, 'typed lobby: mic level meter moves');
    // Nothing is sent before Join: A still waits, the code already belongs to B.
    check((await connState(pa)) === 'waiting', 'typed lobby: A still waiting before Join');
    await pb.click('#lobby-mic');
    await pb.click('#lobby-cam');
    check((await pb.getAttribute('#lobby-mic', 'aria-pressed')) === 'false' && (await pb.getAttribute('#lobby-cam', 'aria-pressed')) === 'false', 'typed lobby: mic and camera off before joining');
    await pb.click('#lobby-join');
    await waitState(pb, 'connected', 20_000);
    await until(pa, () => !document.getElementById('remote-muted').hidden && document.getElementById('stage').dataset.stage === 'cam-off', null, 15_000);
    check(true, 'typed lobby: joined muted with the camera off, the other side sees it');
    check((await pb.getAttribute('#toggle-mic', 'aria-pressed')) === 'false' && (await pb.getAttribute('#toggle-cam', 'aria-pressed')) === 'false', 'typed lobby: choices carried into the call');
    await hangUp(pa, pb);
    await closeAll(pa, pb);
  },

  /** Defect 4: the code's remaining time, then New code (the API runs with a 4 s code life). */
  async 'code-expiry'(A) {
    const pa = await openPage(A);
    await pa.goto(BASE);
    await pa.click('#new-call');
    await until(pa, () => /Valid for \d+:\d\d/.test(document.getElementById('code-expiry').textContent));
    check(true, 'waiting screen shows the code\'s remaining time');
    await until(pa, () => !document.getElementById('new-code').hidden, null, 15_000);
    check(/expired/.test(await pa.textContent('#code-expiry')), 'expired code said so, New code offered');
    if (args.shoot !== 'no') await screenshots(pa, 'waiting-expired');
    const old = await pa.textContent('#invite-code');
    await pa.click('#new-code');
    await until(pa, (o) => document.getElementById('invite-code').textContent !== o && document.getElementById('new-code').hidden, old);
    check(true, 'New code replaces the expired one');
    await pa.click('#hang-up');
    await pa.close();
  },

  /** Keyboard: shortcuts, the help dialog takes focus and gives it back, Escape closes. */
  async keyboard(A, B) {
    const { pa, pb } = await callByPastedLink(A, B);
    await pa.locator('body').click({ position: { x: 5, y: 5 } }).catch(() => {});
    await pa.keyboard.press('m');
    check((await pa.getAttribute('#toggle-mic', 'aria-pressed')) === 'false', 'M mutes');
    await pa.keyboard.press('m');
    await pa.keyboard.press('v');
    check((await pa.getAttribute('#toggle-cam', 'aria-pressed')) === 'false', 'V turns the camera off');
    await pa.keyboard.press('v');
    await pa.keyboard.press('f');
    await until(pa, () => document.fullscreenElement !== null && document.getElementById('toggle-full').getAttribute('aria-pressed') === 'true', null, 5000);
    await pa.keyboard.press('f');
    await until(pa, () => document.fullscreenElement === null, null, 5000);
    check(true, 'F enters and leaves full screen');
    await pa.keyboard.press('c');
    check(await pa.isVisible('#chat'), 'C opens the chat');
    await pa.keyboard.press('Escape');
    check(!(await pa.isVisible('#chat')), 'Escape closes it');
    await pa.focus('#toggle-help');
    await pa.keyboard.press('Enter');
    await pa.waitForSelector('#help', { state: 'visible' });
    check(await pa.evaluate(() => document.activeElement?.closest('#help') !== null), 'help dialog takes focus');
    for (let i = 0; i < 3; i++) await pa.keyboard.press('Tab');
    check(await pa.evaluate(() => document.activeElement?.closest('#help') !== null), 'focus stays in the dialog');
    if (args.shoot !== 'no') await screenshots(pa, 'help');
    await pa.keyboard.press('Escape');
    check(await pa.evaluate(() => document.activeElement?.id === 'toggle-help'), 'focus returns to the button');
    // Every control of the call screen is reachable with Tab.
    const reached = new Set();
    for (let i = 0; i < 40; i++) {
      await pa.keyboard.press('Tab');
      const id = await pa.evaluate(() => document.activeElement?.id);
      if (id) reached.add(id);
    }
    const want = ['toggle-mic', 'toggle-cam', 'toggle-share', 'toggle-settings', 'toggle-chat', 'hang-up', 'quality'];
    check(want.every((id) => reached.has(id)), 'every call control reachable with Tab', [...reached]);
    await pa.keyboard.press('h');
    await pa.waitForSelector('#left-bar', { state: 'visible' });
    await waitState(pb, 'alone', 5000);
    check(true, 'H leaves the call; the other person is told');
    await pa.click('#end-for-both');
    await pb.waitForSelector('#ended', { state: 'visible' });
    await closeAll(pa, pb);
  },

  /** Every screen at five sizes: screenshots, layout checks, axe-core. */
  async screens(A, B, result) {
    result.layout = await screensCheck(A, B);
  },
};

const SIZES = [[360, 740], [390, 844], [844, 390], [768, 1024], [1440, 900]];

/** In the page: overlapping controls, overflowing text, small targets on phones. */
function layoutProblems(phone) {
  // The part of an element people can see: clipped by scrolling ancestors and the viewport.
  const shownRect = (e) => {
    let r = e.getBoundingClientRect();
    let box = { left: r.left, top: r.top, right: r.right, bottom: r.bottom };
    for (let p = e.parentElement; p && p !== document.documentElement; p = p.parentElement) {
      const ps = getComputedStyle(p);
      if (Number(ps.opacity) === 0) return null;
      if (ps.overflowX !== 'visible' || ps.overflowY !== 'visible') {
        r = p.getBoundingClientRect();
        box = { left: Math.max(box.left, r.left), top: Math.max(box.top, r.top), right: Math.min(box.right, r.right), bottom: Math.min(box.bottom, r.bottom) };
      }
    }
    box = { left: Math.max(box.left, 0), top: Math.max(box.top, 0), right: Math.min(box.right, innerWidth), bottom: Math.min(box.bottom, innerHeight) };
    return box.right - box.left > 0 && box.bottom - box.top > 0 ? box : null;
  };
  const visible = (e) => {
    if (e.closest('[hidden]') || e.closest('[inert]')) return false;
    const s = getComputedStyle(e);
    if (s.visibility === 'hidden' || s.display === 'none' || Number(s.opacity) === 0) return false;
    return shownRect(e) !== null;
  };
  const topLayer = (e) => {
    const d = e.closest('.dialog-backdrop');
    return d ? d.id : '';
  };
  const controls = [...document.querySelectorAll('button, a[href], input, select')].filter(visible);
  const problems = [];
  const name = (e) => e.id || e.getAttribute('aria-label') || e.textContent.trim().slice(0, 20) || e.tagName;
  const dialogOpen = [...document.querySelectorAll('.dialog-backdrop')].some((d) => !d.hidden);
  for (let i = 0; i < controls.length; i++) {
    const a = shownRect(controls[i]);
    const full = controls[i].getBoundingClientRect();
    if (phone && (full.width < 44 || full.height < 44) && controls[i].tagName !== 'A') problems.push(`small: ${name(controls[i])} ${Math.round(full.width)}×${Math.round(full.height)}`);
    for (let j = i + 1; j < controls.length; j++) {
      if (dialogOpen && topLayer(controls[i]) !== topLayer(controls[j])) continue;
      if (controls[i].contains(controls[j]) || controls[j].contains(controls[i])) continue;
      const b = shownRect(controls[j]);
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) problems.push(`overlap: ${name(controls[i])} / ${name(controls[j])}`);
    }
  }
  for (const e of document.querySelectorAll('h1, h2, p, label, button, .pill, dt, dd, li, span.label')) {
    if (!visible(e) || e.closest('.ctl, .round')) continue;
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'auto' && getComputedStyle(e).textOverflow !== 'ellipsis') problems.push(`overflow: ${name(e)}`);
  }
  if (document.documentElement.scrollWidth > innerWidth + 1) problems.push('page scrolls sideways');
  return problems;
}

async function axeCheck(page, what) {
  const src = readFileSync(new URL('../node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
  await page.evaluate(src);
  const r = await page.evaluate(async () => {
    const res = await globalThis.axe.run(document, { resultTypes: ['violations'] });
    return res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`);
  });
  check(r.length === 0, `axe: no serious or critical violation on ${what}`, r);
}

/** Screenshot and check one screen at every size. */
async function checkScreen(page, label, { axe = true } = {}) {
  const problems = {};
  for (const [w, h] of SIZES) {
    await page.setViewportSize({ width: w, height: h });
    await sleep(200);
    mkdirSync(OUT, { recursive: true });
    const file = path.join(OUT, `${label}-${w}x${h}.png`);
    await page.screenshot({ path: file });
    emit({ event: 'screenshot', file });
    const p = await page.evaluate(layoutProblems, w < 768 || h < 500);
    if (p.length) problems[`${w}x${h}`] = p;
  }
  check(Object.keys(problems).length === 0, `layout: ${label} has no overlap, overflow or small target`, problems);
  if (axe) await axeCheck(page, label);
  await page.setViewportSize({ width: 1440, height: 900 });
}

async function screensCheck(A, B) {
  // The axe script is injected into the page: these contexts skip the CSP for that only.
  const ctxA = await A.browser.newContext({ viewport: { width: 1440, height: 900 }, permissions: ['camera', 'microphone', 'clipboard-read', 'clipboard-write'], bypassCSP: true });
  const ctxB = await B.browser.newContext({ viewport: { width: 1440, height: 900 }, permissions: ['camera', 'microphone'], bypassCSP: true });
  const sa = { name: 'A', context: ctxA };
  const sb = { name: 'B', context: ctxB };
  const home = await openPage(sb);
  await home.goto(BASE);
  await checkScreen(home, 'screen-home');
  await home.fill('#code-input', 'ZZZ-ZZU');
  await home.click('#join-button');
  await checkScreen(home, 'screen-home-error');
  const pa = await openPage(sa);
  // A's WebSockets pass through Playwright's router (set before the page captures the
  // WebSocket constructor), so the signal service can be made unreachable for A alone.
  let signalDown = false;
  await pa.routeWebSocket(/\/ws$/, (ws) => (signalDown ? ws.close({ code: 1013, reason: 'test: signal unreachable' }) : ws.connectToServer()));
  await pa.goto(BASE);
  await pa.click('#new-call');
  await until(pa, () => document.getElementById('invite-code').textContent.length >= 6);
  await checkScreen(pa, 'screen-waiting');
  const link = await pa.$eval('#share-link', (e) => e.value);
  await home.goto(link);
  await home.waitForSelector('#lobby', { state: 'visible' });
  await until(home, () => document.getElementById('lobby-video').srcObject !== null);
  await checkScreen(home, 'screen-lobby');
  await home.click('#lobby-join');
  await waitState(home, 'connected', 20_000);
  await waitState(pa, 'connected', 20_000);
  await until(pa, () => document.getElementById('security-code').textContent.length > 0);
  await checkScreen(pa, 'screen-call');
  await pa.click('#toggle-chat');
  await checkScreen(pa, 'screen-chat-open');
  await pa.click('#toggle-chat');
  await pa.click('#toggle-settings');
  await checkScreen(pa, 'screen-devices-open');
  await pa.click('#toggle-settings');
  await pa.click('#toggle-cam');
  await until(home, () => document.getElementById('stage').dataset.stage === 'cam-off');
  await checkScreen(home, 'screen-remote-camera-off');
  await checkScreen(pa, 'screen-own-camera-off', { axe: false });
  await pa.click('#toggle-cam');
  // Reconnecting: A's link to the signal service drops and every new WebSocket is refused
  // (the service unreachable) until the screens are checked; then A resumes.
  signalDown = true;
  await pa.evaluate(() => globalThis.__hermes.signaling.dropConnection());
  await waitState(pa, 'reconnecting', 10_000);
  await checkScreen(pa, 'screen-reconnecting');
  check((await connState(pa)) === 'reconnecting', 'reconnecting held while the signal service was unreachable', await pa.evaluate(() => ({ state: globalThis.__hermes.state, log: globalThis.__hermes.stateLog.slice(-6).map((e) => e.state), connects: globalThis.__hermes.signaling.connects })));
  signalDown = false;
  await waitState(pa, 'connected', 30_000);
  check(true, 'A back to connected once the signal service answers');
  // B leaves: the undo bar (held while the pointer rests on it), then the "You left" card.
  await home.click('#hang-up');
  await home.$eval('#left-bar', (e) => e.dispatchEvent(new PointerEvent('pointerenter')));
  await checkScreen(home, 'screen-left');
  check((await home.isVisible('#left-bar')) && !(await home.isVisible('#ended')), 'undo window waits while the pointer rests on it');
  await home.$eval('#left-bar', (e) => e.dispatchEvent(new PointerEvent('pointerleave')));
  await home.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
  await checkScreen(home, 'screen-left-ended');
  await home.click('#end-ended');
  await pa.waitForSelector('#ended', { state: 'visible' });
  await checkScreen(pa, 'screen-ended');
  await closeAll(home, pa);

  // Blocked by the network: B's browser gathers no candidate at all (as behind a firewall that
  // drops UDP and TURN alike), so no media path comes up; both are told after the timeout.
  const pa2 = await openPage(sa);
  await pa2.goto(BASE);
  await pa2.click('#new-call');
  await until(pa2, () => document.getElementById('invite-code').textContent.length >= 6);
  const link2 = await pa2.$eval('#share-link', (e) => e.value);
  const pb2 = await openPage(sb);
  await pb2.addInitScript(() => {
    const Real = globalThis.RTCPeerConnection;
    globalThis.RTCPeerConnection = class extends Real {
      constructor(cfg) {
        super({ ...cfg, iceServers: [], iceTransportPolicy: 'relay' });
      }
    };
  });
  await pb2.goto(link2);
  await joinFromLobby(pb2);
  await waitState(pb2, 'blocked', 30_000);
  await checkScreen(pb2, 'screen-blocked');
  check((await pb2.isVisible('#blocked-retry')) && /network|firewall/i.test(await pb2.textContent('#blocked-text')), 'blocked: said so, with Try again');
  await hangUp(pa2, pb2);
  await closeAll(pa2, pb2);

  // Camera and microphone refused: the lobby says so, and so does the call joined anyway.
  const pa3 = await openPage(sa);
  await pa3.goto(BASE);
  await pa3.click('#new-call');
  await until(pa3, () => document.getElementById('invite-code').textContent.length >= 6);
  const link3 = await pa3.$eval('#share-link', (e) => e.value);
  const pb3 = await openPage(sb);
  await pb3.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('refused by the test', 'NotAllowedError'));
  });
  await pb3.goto(link3);
  await pb3.waitForSelector('#lobby', { state: 'visible' });
  await until(pb3, () => !document.getElementById('lobby-retry').hidden);
  await checkScreen(pb3, 'screen-lobby-denied');
  await pb3.click('#lobby-join');
  await waitState(pb3, 'connected', 20_000);
  await until(pb3, () => !document.getElementById('retry-media').hidden);
  await checkScreen(pb3, 'screen-call-denied');
  await hangUp(pa3, pb3);
  await closeAll(pa3, pb3);
  await ctxA.close();
  await ctxB.close();
}

async function main() {
  const result = { policy: POLICY, joinMs: [], checks: 0 };
  const A = await launch('A');
  const B = await launch('B');
  try {
    if (SCENARIOS.has('lab')) {
      for (const row of JSON.parse(args['lab-rows'] ?? '[]')) await labRow(A, B, row, result);
      result.ok = true;
      return;
    }
    if (SCENARIOS.has('rate-limit')) {
      // The API's resolve limit is exhausted (the parent set it low): people are told to wait.
      const page = await openPage(B);
      await page.goto(BASE);
      await page.fill('#code-input', 'ABC-DEF');
      await page.click('#join-button');
      await page.waitForFunction(() => !document.getElementById('join-error').hidden, null, { timeout: 10_000 });
      const text = await page.textContent('#join-error');
      check(/Too many attempts\. Please wait .+ and try again\./.test(text), 'rate limit (429): told to wait', text);
      check(await page.isEnabled('#join-button'), 'rate limit: join button usable again');
      result.ok = true;
      return;
    }

    if (PRODUCT_SCENARIOS.some((n) => SCENARIOS.has(n))) {
      for (const name of PRODUCT_SCENARIOS) {
        if (!SCENARIOS.has(name)) continue;
        emit({ event: 'scenario', name });
        await PRODUCT[name](A, B, result);
      }
      result.ok = true;
      return;
    }

    // Home screen: CSP holds (no violations), wrong codes get clear words.
    const home = await openPage(A);
    const violations = [];
    home.on('console', (m) => /Content Security Policy/i.test(m.text()) && violations.push(m.text()));
    await home.goto(BASE);
    await home.waitForSelector('#new-call');
    if (SCENARIOS.has('screenshots') && POLICY === 'all') await screenshots(home, 'home');
    await home.fill('#code-input', '7KQ2ZU');
    await home.click('#join-button');
    check(/cannot be part of a code/.test(await home.textContent('#join-error')), 'home: invalid character explained');
    await home.fill('#code-input', 'zzz-zz0');
    await home.click('#join-button');
    await home.waitForFunction(() => !document.getElementById('join-error').hidden && /unknown|expired|used|attempts/.test(document.getElementById('join-error').textContent), null, { timeout: 10_000 });
    check(true, 'home: unknown code explained');
    check(violations.length === 0, 'home: no CSP violations', violations);
    await home.close();

    if (SCENARIOS.has('peer-left')) {
      // B closes the tab without hanging up: A sees "reconnecting", then "left" once the
      // signal grace ends, over the frozen picture; A can still hang up.
      const c = await startCall(A, B);
      await waitState(c.pa, 'connected');
      await c.pb.close();
      await c.pa.waitForFunction(() => document.getElementById('peer-status').dataset.status === 'left', null, { timeout: 25_000 });
      check(await c.pa.isVisible('#peer-status'), 'peer left: A is told the other person left', await c.pa.textContent('#peer-status'));
      await c.pa.click('#hang-up');
      await c.pa.click('#end-for-both');
      await c.pa.waitForSelector('#ended', { state: 'visible', timeout: 5000 });
      await c.pa.close();
    }

    if (SCENARIOS.has('denied')) {
      await deniedCall(A, B, 'audio-only');
      await deniedCall(A, B, 'receive-only');
    }

    // Timing runs: B's join click to first decoded remote frame.
    const runs = SCENARIOS.has('timing') ? RUNS : 1;
    let call = null;
    for (let i = 0; i < runs; i++) {
      const c = await startCall(A, B, {
        typed: i === 0 ? (code) => `${code.slice(0, 3).toLowerCase()} - ${code.slice(3)}` : undefined,
        shoot: i === 0 && SCENARIOS.has('screenshots') && POLICY === 'all',
      });
      result.joinMs.push(Math.round(c.joinMs));
      result.signaledMs = [...(result.signaledMs ?? []), Math.round(c.joinedMs)];
      emit({ event: 'join-timing', run: i + 1, ms: Math.round(c.joinMs), signaledMs: Math.round(c.joinedMs) });
      if (i === 0) {
        check(/\/c\/[0-9A-Z]{6}$/.test(c.link), 'share link is /c/CODE', c.link);
        check(new URL(await c.pb.url()).pathname === `/c/${c.code}`, 'joiner URL becomes /c/CODE');
        // The code is single use: a third person typing it is told so.
        const late = await openPage(B);
        await late.goto(BASE);
        await late.fill('#code-input', c.code);
        await late.click('#join-button');
        await late.waitForFunction(() => !document.getElementById('join-error').hidden, null, { timeout: 10_000 });
        const text = await late.textContent('#join-error');
        check(/unknown, expired or already used/.test(text), 'used code: told it is used', text);
        await late.close();
      }
      if (i < runs - 1) {
        await hangUp(c.pa, c.pb);
        await c.pa.close();
        await c.pb.close();
      } else {
        call = c;
      }
    }
    result.joinMedianMs = median(result.joinMs);
    const { pa, pb } = call;
    result.callId = await pa.evaluate(() => JSON.parse(sessionStorage.getItem('hermes.call') ?? '{}').callId ?? null);

    await waitState(pa, 'connected');
    await waitState(pb, 'connected');
    check(true, 'both sides show connected');

    if (SCENARIOS.has('media')) {
      const sa = await framesRising(pa, 'A');
      const sb = await framesRising(pb, 'B');
      result.candidateTypes = { A: [sa.localType, sa.remoteType], B: [sb.localType, sb.remoteType] };
      if (POLICY === 'relay') {
        check(sa.localType === 'relay' && sb.localType === 'relay', 'relay policy: selected pairs are relay (media through hermes-turn)', result.candidateTypes);
      } else {
        check(sa.localType !== null && sb.localType !== null, 'policy all: a pair is selected', result.candidateTypes);
      }
      // The quality summary was sent over signaling and shown.
      await pa.waitForFunction(() => globalThis.__hermes.media.lastSummary?.framesDecoded > 0, null, { timeout: 12_000 });
      result.summaryA = await pa.evaluate(() => globalThis.__hermes.media.lastSummary);
      check(['good', 'fair', 'poor'].includes(await pa.$eval('#quality', (e) => e.dataset.level)), 'quality indicator set');
      const devices = await pa.evaluate(() => ({
        mics: [...document.querySelectorAll('#mic-select option')].map((o) => o.textContent),
        cams: [...document.querySelectorAll('#cam-select option')].map((o) => o.textContent),
      }));
      check(devices.mics.length >= 1 && devices.cams.length >= 1, 'device lists filled', devices);
      const cams = await pa.$$eval('#cam-select option', (os) => os.map((o) => o.value));
      if (cams.length >= 2) {
        await pa.click('#toggle-settings');
        await pa.selectOption('#cam-select', cams[1]);
        await pa.waitForFunction((id) => globalThis.__hermes.media.localStream.getVideoTracks()[0]?.getSettings().deviceId === id, cams[1], { timeout: 5000 });
        await framesRising(pb, 'B after A switched camera');
        await pa.click('#toggle-settings');
      }
      for (const [btn, kind] of [['#toggle-cam', 'video'], ['#toggle-mic', 'audio']]) {
        await pa.click(btn);
        const off = await pa.evaluate((k) => globalThis.__hermes.media.localStream.getTracks().filter((t) => t.kind === k).every((t) => !t.enabled), kind);
        check(off && (await pa.getAttribute(btn, 'aria-pressed')) === 'false', `${kind} toggle off`);
        await pa.click(btn);
        const on = await pa.evaluate((k) => globalThis.__hermes.media.localStream.getTracks().filter((t) => t.kind === k).every((t) => t.enabled), kind);
        check(on && (await pa.getAttribute(btn, 'aria-pressed')) === 'true', `${kind} toggle on again`);
      }
    }

    if (SCENARIOS.has('security')) {
      await pa.waitForFunction(() => document.getElementById('security-code').textContent.length > 0);
      await pb.waitForFunction(() => document.getElementById('security-code').textContent.length > 0);
      const ca = await pa.textContent('#security-code');
      const cb = await pb.textContent('#security-code');
      check(ca === cb && ca.split(' ').length === 5, 'security codes equal on both sides', { A: ca, B: cb });
      result.securityCode = ca;
    }

    if (SCENARIOS.has('chat')) {
      await pa.click('#toggle-chat');
      await pa.waitForFunction(() => !document.getElementById('chat-input').disabled, null, { timeout: 10_000 });
      await pa.fill('#chat-input', 'hello from A ✓');
      await pa.press('#chat-input', 'Enter');
      await pb.waitForFunction(() => [...document.querySelectorAll('#chat-log li.theirs')].some((li) => li.textContent === 'hello from A ✓'), null, { timeout: 5000 });
      check(true, 'chat A → B over the data channel');
      check((await pb.textContent('#chat-badge')) === '1', 'unread badge on B');
      await pb.click('#toggle-chat');
      await pb.fill('#chat-input', 'hi A');
      await pb.click('#chat-send');
      await pa.waitForFunction(() => [...document.querySelectorAll('#chat-log li.theirs')].some((li) => li.textContent === 'hi A'), null, { timeout: 5000 });
      check(true, 'chat B → A');
    }

    if (SCENARIOS.has('screenshots')) {
      await screenshots(pa, `call-${POLICY}-A`);
      await screenshots(pb, `call-${POLICY}-B`);
    }

    if (SCENARIOS.has('drop-ws')) {
      const before = await pb.evaluate(() => globalThis.__hermes.stateLog.length);
      const sockets = await pb.evaluate(() => globalThis.__hermes.signaling.connects);
      await pb.evaluate(() => globalThis.__hermes.signaling.dropConnection());
      await pb.waitForFunction((n) => globalThis.__hermes.signaling.connects > n && globalThis.__hermes.state.signaling === 'open', sockets, { timeout: 10_000 });
      await waitState(pb, 'connected');
      const log = await pb.evaluate((n) => globalThis.__hermes.stateLog.slice(n).map((x) => x.state), before);
      check(log[0] === 'reconnecting' && log.at(-1) === 'connected', 'B drop: UI showed reconnecting then connected', log);
      const joins = await pb.evaluate(() => globalThis.__hermes.joins.map((j) => j.resumed));
      check(joins.at(-1) === true, 'B drop: signaling resumed the seat', joins);
      await framesRising(pb, 'B after WebSocket drop');
      await framesRising(pa, 'A after B WebSocket drop');
    }

    if (SCENARIOS.has('restart-signal')) {
      const before = await Promise.all([pa, pb].map((p) => p.evaluate(() => globalThis.__hermes.stateLog.length)));
      const connects = await Promise.all([pa, pb].map((p) => p.evaluate(() => globalThis.__hermes.signaling.connects)));
      const answer = await askParent('restart-signal');
      check(answer === 'restarted', 'parent restarted signal', answer);
      for (const [i, p] of [pa, pb].entries()) {
        await p.waitForFunction((n) => globalThis.__hermes.signaling.connects > n && globalThis.__hermes.state.signaling === 'open', connects[i], { timeout: 20_000 });
        await waitState(p, 'connected');
        const log = await p.evaluate((n) => globalThis.__hermes.stateLog.slice(n).map((x) => x.state), before[i]);
        check(log.includes('reconnecting') && log.at(-1) === 'connected', `${i ? 'B' : 'A'} signal restart: reconnecting then connected`, log);
      }
      await framesRising(pa, 'A after signal restart');
      await framesRising(pb, 'B after signal restart');
    }

    if (SCENARIOS.has('kill-signal')) {
      // The parent kills (SIGKILL, no drain) a signal replica holding one or both participants.
      // Those reconnect through Caddy to a surviving replica and resume their seat; the other
      // side, if elsewhere, stays connected. Then signaling must still carry messages between
      // both (an ICE restart's offer and answer) and media must flow on both sides.
      const connects = await Promise.all([pa, pb].map((p) => p.evaluate(() => globalThis.__hermes.signaling.connects)));
      // The answer is `killed N`: N participants had their WebSocket on that replica.
      const answer = await askParent('kill-signal');
      const held = Number(/^killed (\d)$/.exec(answer)?.[1]);
      check(held >= 1 && held <= 2, 'parent killed a signal replica holding a participant', answer);
      const moved = async () => (await Promise.all([pa, pb].map((p, i) => p.evaluate((n) => globalThis.__hermes.signaling.connects > n, connects[i]))));
      const t = Date.now();
      while ((await moved()).filter(Boolean).length < held) {
        if (Date.now() - t > 20_000) throw new Check(`kill-signal: ${held} side(s) should reconnect, saw ${await moved()}`);
        await sleep(200);
      }
      const dropped = [];
      for (const [i, p] of [pa, pb].entries()) {
        const name = i ? 'B' : 'A';
        await p.waitForFunction(() => globalThis.__hermes.state.signaling === 'open', null, { timeout: 20_000 });
        if ((await moved())[i]) {
          const joins = await p.evaluate(() => globalThis.__hermes.joins.map((j) => j.resumed));
          check(joins.at(-1) === true, `${name} resumed its seat on another signal replica`, joins);
          dropped.push(name);
        }
        await waitState(p, 'connected');
      }
      check(dropped.length === held, 'exactly the participants of the killed replica reconnected', { held, dropped });
      result.killedSignalHeld = dropped;
      const ub = (await mediaStats(pb)).ufrag;
      await pa.evaluate(() => globalThis.__hermes.media.restartIce('after signal replica killed'));
      await pb.waitForFunction(async (u) => {
        const sdp = globalThis.__hermes.media.pc?.localDescription?.sdp ?? '';
        return !sdp.includes(`a=ice-ufrag:${u}`) && ['connected', 'completed'].includes(globalThis.__hermes.media.pc.iceConnectionState);
      }, ub, { timeout: 15_000 });
      check(true, 'signaling carries an ICE restart between both sides after the kill');
      await framesRising(pa, 'A after the signal replica was killed');
      await framesRising(pb, 'B after the signal replica was killed');
    }

    if (SCENARIOS.has('ice-restart')) {
      const ua = (await mediaStats(pa)).ufrag;
      const ub = (await mediaStats(pb)).ufrag;
      await pa.evaluate(() => globalThis.__hermes.media.restartIce('forced by test'));
      // The offer with new ICE credentials goes through signaling (after any restart above).
      await pb.waitForFunction(async (u) => {
        const sdp = globalThis.__hermes.media.pc?.localDescription?.sdp ?? '';
        return !sdp.includes(`a=ice-ufrag:${u}`) && ['connected', 'completed'].includes(globalThis.__hermes.media.pc.iceConnectionState);
      }, ub, { timeout: 15_000 });
      const sa = await mediaStats(pa);
      check(sa.ufrag !== ua, 'ICE restart: new local credentials on A', { before: ua, after: sa.ufrag });
      check((await pa.evaluate(() => globalThis.__hermes.media.iceRestarts)) >= 1, 'ICE restart counted');
      await waitState(pa, 'connected');
      await framesRising(pb, 'B after ICE restart');
      await framesRising(pa, 'A after ICE restart');
    }

    if (SCENARIOS.has('glare')) {
      // Both sides renegotiate at the same moment: perfect negotiation must resolve the offer
      // collision (the polite answerer rolls back, the impolite offerer ignores B's offer).
      const before = await Promise.all([pa, pb].map(async (p) => (await mediaStats(p)).ufrag));
      await Promise.all([
        pa.evaluate(() => globalThis.__hermes.media.restartIce('glare test')),
        pb.evaluate(() => globalThis.__hermes.media.restartIce('glare test')),
      ]);
      for (const [i, p] of [pa, pb].entries()) {
        await p.waitForFunction(
          (u) => {
            const pc = globalThis.__hermes.media.pc;
            return pc.signalingState === 'stable' && !pc.localDescription.sdp.includes(`a=ice-ufrag:${u}`) &&
              ['connected', 'completed'].includes(pc.iceConnectionState);
          },
          before[i],
          { timeout: 15_000 },
        );
      }
      check(true, 'glare: both stable with new ICE credentials');
      await framesRising(pa, 'A after glare');
      await framesRising(pb, 'B after glare');
    }

    if (SCENARIOS.has('fresh-pc')) {
      const gb = await pb.evaluate(() => globalThis.__hermes.media.pcGeneration);
      await pa.evaluate(() => globalThis.__hermes.media.recreate('forced by test'));
      await pb.waitForFunction((g) => globalThis.__hermes.media.pcGeneration > g && globalThis.__hermes.media.pc?.connectionState === 'connected', gb, { timeout: 15_000 });
      await waitState(pa, 'connected');
      await waitState(pb, 'connected');
      check(true, 'fresh peer connection negotiated on both sides');
      await pb.waitForFunction(async () => {
        const pc = globalThis.__hermes.media.pc;
        const reports = [...(await pc.getStats()).values()];
        return reports.some((r) => r.type === 'inbound-rtp' && r.kind === 'video' && r.framesDecoded > 0);
      }, null, { timeout: 10_000 });
      await framesRising(pb, 'B on the fresh connection');
      await framesRising(pa, 'A on the fresh connection');
      await pa.waitForFunction(() => globalThis.__hermes.media.securityCode && globalThis.__hermes.media.pc?.remoteDescription);
      const ca = await pa.evaluate(() => globalThis.__hermes.securityCode);
      const cb = await pb.evaluate(() => globalThis.__hermes.securityCode);
      check(ca && ca === cb, 'security codes equal on the fresh connection', { A: ca, B: cb });
    }

    if (SCENARIOS.has('turn-outage')) {
      // The TURN server crashes and comes back empty (allocations lost). Nobody pokes the
      // clients: ICE must notice, restart on its own (or build a fresh connection) and get
      // media flowing through the new hermes-turn process.
      const recoveries = () =>
        Promise.all([pa, pb].map((p) => p.evaluate(() => globalThis.__hermes.media.iceRestarts + globalThis.__hermes.media.pcGeneration)))
          .then(([x, y]) => x + y);
      const before = await recoveries();
      const answer = await askParent('crash-turn');
      check(answer === 'restarted', 'parent crashed and restarted hermes-turn', answer);
      const t = Date.now();
      while ((await recoveries()) === before) {
        if (Date.now() - t > 40_000) throw new Check('TURN crash: no side restarted ICE within 40 s');
        await sleep(200);
      }
      // Recovered = frames decoded again on both sides (ICE states alone can be stale).
      for (const p of [pa, pb]) await waitFramesFlow(p, 40_000);
      result.turnRecoveryMs = Date.now() - t;
      check(true, 'TURN crash: ICE restarted by itself and reconnected', result.turnRecoveryMs);
      const sa = await framesRising(pa, 'A after TURN crash', 2000);
      const sb = await framesRising(pb, 'B after TURN crash', 2000);
      check(sa.localType === 'relay' && sb.localType === 'relay', 'TURN crash: still relayed', [sa.localType, sb.localType]);
    }

    if (SCENARIOS.has('reload')) {
      // B reloads the tab mid-call: the page rejoins with the token kept in sessionStorage
      // (the one-time code is spent), A starts a fresh connection, media flows again.
      await pb.reload();
      await pb.waitForFunction(() => globalThis.__hermes?.media?.pc?.connectionState === 'connected', null, { timeout: 20_000 });
      await waitState(pb, 'connected');
      await waitState(pa, 'connected');
      check(new URL(pb.url()).pathname.startsWith('/c/'), 'reload: B stayed on its call URL');
      await framesRising(pb, 'B after reload');
      await framesRising(pa, 'A after B reloaded');
    }

    if (SCENARIOS.has('api-end')) {
      // Someone ends the call through the API (POST /api/call/end with A's token): signal tells
      // both browsers, which show it, and the API reports the call ended.
      const r = await pa.evaluate(async () => {
        const { token, callId } = JSON.parse(sessionStorage.getItem('hermes.call'));
        const end = await fetch('/api/call/end', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
        const status = await fetch(`/api/call/${callId}`, { headers: { Authorization: `Bearer ${token}` } });
        return { end: end.status, status: (await status.json()).status };
      });
      check(r.end === 200 && r.status === 'ended', 'API end accepted; status ended', r);
      for (const [name, p] of [['A', pa], ['B', pb]]) {
        await p.waitForSelector('#ended', { state: 'visible', timeout: 10_000 });
        const reason = await p.textContent('#ended-reason');
        check(/call has ended/.test(reason), `${name} shows the call ended by the API`, reason);
      }
    }

    if (SCENARIOS.has('hangup')) {
      await hangUp(pa, pb);
      const ra = await pa.textContent('#ended-reason');
      check(/other person (hung up|ended the call)/.test(ra), 'A told the other person hung up', ra);
      check((await connState(pa)) === 'ended' && (await connState(pb)) === 'ended', 'both show ended');
      const t1 = await pa.textContent('#call-timer');
      await sleep(1200);
      const t2 = await pa.textContent('#call-timer');
      check(t1 === t2 && t1 !== '0:00', 'call timer stopped at the call length', [t1, t2]);
      const closed = await pa.evaluate(() => globalThis.__hermes.media.pc === null);
      check(closed, 'A closed its peer connection');
      if (SCENARIOS.has('screenshots')) await screenshots(pa, `ended-${POLICY}`);
    }
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e?.stack ?? e).slice(0, 2000);
  } finally {
    await A.browser.close().catch(() => {});
    await B.browser.close().catch(() => {});
    emit({ event: 'done', ...result });
    stdinLines.close();
    process.exit(result.ok ? 0 : 1);
  }
}

main();
