// batchd dashboard: a hash-routed single page over the public API.
import { session, hooks, api, stream } from './api.js';
import { h, fill, errorBox } from './ui.js';
import { batchesView, batchView } from './batches.js';
import { submitView } from './submit.js';
import { webhooksView, backendsView, usageView } from './ops.js';
import { live } from './state.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');

const routes = [
  [/^#\/batches\/([A-Za-z0-9_-]+)$/, batchView, 'batches'],
  [/^#\/batches$/, batchesView, 'batches'],
  [/^#\/submit$/, submitView, 'submit'],
  [/^#\/webhooks$/, webhooksView, 'webhooks'],
  [/^#\/backends$/, backendsView, 'backends'],
  [/^#\/usage$/, usageView, 'usage'],
];

let current = null; // the AbortController of the open view
let liveCtl = null;

function parseHash() {
  const [path, query = ''] = (location.hash || '#/batches').split('?');
  return { path, params: new URLSearchParams(query) };
}

async function render() {
  current?.abort();
  current = new AbortController();
  delete document.body.dataset.ready;
  if (!session.key) return signIn();
  startLive();
  nav.hidden = false;
  const { path, params } = parseHash();
  const route = routes.find(([re]) => re.test(path));
  if (!route) { location.hash = '#/batches'; return; }
  const [re, view, name] = route;
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.nav === name);
  const m = path.match(re);
  main.replaceChildren();
  try {
    await view(main, { id: m[1], params, signal: current.signal });
  } catch (e) {
    if (e.name !== 'AbortError') main.append(errorBox(e));
  }
}

function startLive() {
  if (liveCtl) return;
  liveCtl = new AbortController();
  const dot = document.getElementById('live');
  stream('/v1/events', {
    signal: liveCtl.signal,
    onEvent: (type, data, id) => live.dispatchEvent(new CustomEvent(type, { detail: { data, id } })),
    onState: (on) => dot.classList.toggle('on', on),
    onEnd: () => false, // the workspace stream ends only with a shutdown: reconnect
  });
}

function signOut(message) {
  session.clear();
  liveCtl?.abort();
  liveCtl = null;
  current?.abort();
  signIn(message);
}

function signIn(message) {
  nav.hidden = true;
  const key = h('input', { type: 'password', id: 'apikey', autocomplete: 'off', placeholder: 'sk-batchd-…', required: true });
  const err = h('div');
  if (message) err.append(errorBox({ message }));
  const form = h('form', {
    class: 'card signin', onsubmit: async (e) => {
      e.preventDefault();
      session.set(key.value.trim());
      try {
        await api('/v1/messages/batches?limit=1');
        if (!location.hash || location.hash === '#/') location.hash = '#/batches';
        render();
      } catch (ex) {
        session.clear();
        fill(err, errorBox(ex.status === 401 ? { message: 'That key was refused (401).' } : ex));
      }
    },
  },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'An API key of your workspace (batchd keys create). It is kept in this browser tab only (sessionStorage) and sent as x-api-key to the same API the SDKs use.'),
  h('label', { for: 'apikey' }, 'API key'), key, err,
  h('p', {}, h('button', { type: 'submit', id: 'signin' }, 'Sign in')));
  fill(main, form);
  key.focus();
}

// A 401 while signed in signs out; on the sign-in page the form says it.
hooks.onUnauthorized = (message) => !nav.hidden && signOut(message ? `Signed out: ${message}` : 'Signed out: the key was refused.');
document.getElementById('signout').addEventListener('click', () => signOut());
window.addEventListener('hashchange', render);
window.addEventListener('route', render);
render();
