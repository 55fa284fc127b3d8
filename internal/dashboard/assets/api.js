// The public API, as the SDKs call it: x-api-key on every request. The key
// lives in sessionStorage only, so it goes when the browser session does.

const KEY = 'batchd.apiKey';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(k) { sessionStorage.setItem(KEY, k); },
  clear() { sessionStorage.removeItem(KEY); },
};

// APIError is an answer outside 2xx, with Anthropic's error envelope read.
export class APIError extends Error {
  constructor(status, type, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.type = type;
  }
}

// onUnauthorized is called on any 401 (the key was revoked, or is wrong).
export const hooks = { onUnauthorized: () => {} };

function headers(extra = {}) {
  return { 'x-api-key': session.key || '', 'anthropic-version': '2023-06-01', ...extra };
}

async function fail(res) {
  let type = '', message = '';
  try {
    const body = await res.json();
    type = body?.error?.type || '';
    message = body?.error?.message || '';
  } catch { /* not JSON */ }
  if (res.status === 401) hooks.onUnauthorized(message);
  return new APIError(res.status, type, message || `${res.status} ${res.statusText}`);
}

// api sends one request and decodes the JSON answer.
export async function api(path, { method = 'GET', body, signal } = {}) {
  const h = headers();
  if (body !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers: h, body, signal, cache: 'no-store' });
  if (!res.ok) throw await fail(res);
  return res.json();
}

// download fetches a path as a Blob (a results file).
export async function download(path, signal) {
  const res = await fetch(path, { headers: headers(), signal, cache: 'no-store' });
  if (!res.ok) throw await fail(res);
  return res.blob();
}

// upload POSTs a Blob with XMLHttpRequest, the one browser API that
// reports upload progress; the browser streams the Blob from its storage.
export function upload(path, blob, { onProgress, idempotencyKey } = {}) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    for (const [k, v] of Object.entries(headers({ 'content-type': 'application/json' }))) x.setRequestHeader(k, v);
    if (idempotencyKey) x.setRequestHeader('Idempotency-Key', idempotencyKey);
    x.upload.onprogress = (e) => onProgress?.(e.loaded, e.total || blob.size);
    x.onerror = () => reject(new APIError(0, 'network', 'the upload failed: the connection was lost'));
    x.onload = () => {
      let body = null;
      try { body = JSON.parse(x.responseText); } catch { /* not JSON */ }
      if (x.status >= 200 && x.status < 300) return resolve(body);
      if (x.status === 401) hooks.onUnauthorized(body?.error?.message);
      reject(new APIError(x.status, body?.error?.type || '', body?.error?.message || `HTTP ${x.status}`));
    };
    x.send(blob);
  });
}

// stream reads a Server-Sent Events endpoint with fetch and a
// ReadableStream (EventSource cannot send x-api-key), calling onEvent(type,
// data, id) for each event, and reconnects with Last-Event-ID after a drop.
// onState(true|false) says whether it is connected. It returns when signal
// aborts, or when the server ends the stream and onEnd() says to stop.
export async function stream(path, { signal, onEvent, onState = () => {}, onEnd = () => true } = {}) {
  let lastID = '';
  let delay = 500;
  while (!signal?.aborted) {
    try {
      const h = headers({ accept: 'text/event-stream' });
      if (lastID) h['last-event-id'] = lastID;
      const res = await fetch(path, { headers: h, signal, cache: 'no-store' });
      if (!res.ok) throw await fail(res);
      onState(true);
      delay = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let type = 'message', data = '', id = '';
          for (const line of frame.split('\n')) {
            if (line.startsWith(':')) continue;
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (field === 'event') type = val;
            else if (field === 'data') data += (data ? '\n' : '') + val;
            else if (field === 'id') id = val;
          }
          if (id) lastID = id;
          if (!data) continue;
          let parsed;
          try { parsed = JSON.parse(data); } catch { continue; }
          onEvent(type, parsed, id);
        }
      }
      onState(false);
      if (onEnd()) return;
    } catch (e) {
      onState(false);
      if (signal?.aborted) return;
      if (e instanceof APIError && (e.status === 401 || e.status === 404)) return;
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}
