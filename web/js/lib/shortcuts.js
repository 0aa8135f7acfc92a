// Keyboard shortcuts of the call screen. Pure: a key event's fields in, an action name out.
// Letters work without modifiers only, and never while typing in a field.

export const SHORTCUTS = Object.freeze({
  m: 'mic',
  v: 'cam',
  s: 'share',
  c: 'chat',
  d: 'devices',
  f: 'fullscreen',
  p: 'pip',
  h: 'hangup',
  '?': 'help',
  Escape: 'close',
});

/**
 * @param {{key: string, ctrlKey?: boolean, metaKey?: boolean, altKey?: boolean,
 *          targetTag?: string, targetEditable?: boolean}} ev
 * @returns {string|null} the action, or null
 */
export function shortcutFor(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return null;
  const typing = ev.targetEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(ev.targetTag ?? '');
  if (ev.key === 'Escape') return 'close';
  if (typing) return null;
  const key = ev.key?.length === 1 ? ev.key.toLowerCase() : ev.key;
  return SHORTCUTS[key === '/' ? '?' : key] ?? null;
}
