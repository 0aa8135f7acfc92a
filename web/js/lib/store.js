// What the page remembers, and where. Pure over a Storage-like object (tests pass a Map
// wrapper), so the rules are unit-tested: the tab's session storage keeps the live call (token,
// start time, chat, last security code) for a reload; local storage keeps the last call this
// browser was in (so closing the tab by accident is not final) and the display name. Nothing
// here ever goes to the server.

export const SESSION_KEY = 'hermes.call';
export const RECENT_KEY = 'hermes.recent';
export const NAME_KEY = 'hermes.name';
/** Chat lines kept for a reload. */
export const MAX_CHAT_LINES = 200;
/** A call left longer ago than this is not offered for rejoining (tokens live 24 h anyway). */
export const RECENT_TTL_MS = 12 * 60 * 60 * 1000;

function read(storage, key) {
  try {
    return JSON.parse(storage?.getItem(key) ?? 'null');
  } catch {
    return null;
  }
}

function write(storage, key, value) {
  try {
    if (value === null) storage?.removeItem(key);
    else storage?.setItem(key, JSON.stringify(value));
  } catch {
    // private mode or full: a reload then starts over
  }
}

/** The live call of this tab, or null. */
export function loadSession(storage) {
  const v = read(storage, SESSION_KEY);
  return v && typeof v.token === 'string' && typeof v.path === 'string' ? v : null;
}

/** Merge `patch` into the stored call (creating it). */
export function saveSession(storage, patch) {
  const next = { ...(loadSession(storage) ?? {}), ...patch };
  write(storage, SESSION_KEY, next);
  return next;
}

export function forgetSession(storage) {
  write(storage, SESSION_KEY, null);
}

/** Append a chat line to the stored call, keeping the last MAX_CHAT_LINES. */
export function appendChat(storage, who, text) {
  const s = loadSession(storage);
  if (!s) return;
  const chat = [...(Array.isArray(s.chat) ? s.chat : []), { who, text }].slice(-MAX_CHAT_LINES);
  write(storage, SESSION_KEY, { ...s, chat });
}

/** The last call this browser was in, if recent enough to offer rejoining. */
export function loadRecent(storage, now) {
  const v = read(storage, RECENT_KEY);
  if (!v || typeof v.token !== 'string' || typeof v.callId !== 'string') return null;
  if (typeof v.savedAt !== 'number' || now - v.savedAt > RECENT_TTL_MS) return null;
  return v;
}

export function saveRecent(storage, entry, now) {
  write(storage, RECENT_KEY, { ...entry, savedAt: now });
}

export function forgetRecent(storage) {
  write(storage, RECENT_KEY, null);
}

/** The recent call reached by `/c/CODE`, if this browser already resolved that code. */
export function recentForCode(storage, code, now) {
  const r = loadRecent(storage, now);
  return r && r.code === code ? r : null;
}

export function loadName(storage) {
  const v = read(storage, NAME_KEY);
  return typeof v === 'string' ? v.slice(0, 40) : '';
}

export function saveName(storage, name) {
  const n = String(name ?? '').trim().slice(0, 40);
  write(storage, NAME_KEY, n || null);
  return n;
}
