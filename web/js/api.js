// The REST API (hermes_proto::api): create a call, resolve a code, join with a token, a fresh
// code for one's own call, the call's status. Tokens
// travel only in the Authorization header or in bodies, never in URLs. Every failure becomes an
// ApiError with words for people (see lib/messages.js apiErrorMessage).

import { apiErrorMessage } from './lib/messages.js';

export class ApiError extends Error {
  constructor(op, status, body, retryAfter) {
    super(apiErrorMessage(op, status, body, retryAfter));
    this.op = op;
    this.status = status;
    this.code = body?.error?.code ?? null;
  }
}

async function request(op, path, { body, token, method = 'POST' } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(op, 0, null, null);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(op, res.status, data, res.headers.get('Retry-After'));
  return data;
}

/** `POST /api/call/create` → `{callId, code, token, codeExpiresAt}`. */
export function createCall() {
  return request('create', '/api/call/create');
}

/** `POST /api/call/resolve` → `{callId, token}`. */
export function resolveCode(code) {
  return request('resolve', '/api/call/resolve', { body: { code } });
}

/** `POST /api/join` → `{callId, participantId, role, signalUrl, iceServers, iceTransportPolicy}`. */
export function joinCall(token) {
  return request('join', '/api/join', { token });
}

/** `POST /api/call/code` → `{callId, code, codeExpiresAt}`: a fresh code for the token's call. */
export function newCode(token) {
  return request('code', '/api/call/code', { token });
}

/** `POST /api/call/end` → the ended call's status: ends the token's call for everyone in it. */
export function endCallForAll(token) {
  return request('end', '/api/call/end', { token });
}

/** `GET /api/call/{callId}` → `{callId, status, createdAt, endedAt?, participants}`. */
export function callStatus(token, callId) {
  return request('status', `/api/call/${encodeURIComponent(callId)}`, { token, method: 'GET' });
}
