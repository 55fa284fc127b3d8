// Webhook endpoints, backends and usage.
import { api, APIError } from './api.js';
import { h, fill, fmt, badge, errorBox, confirm, columnChart } from './ui.js';
import { ready } from './state.js';

const EVENT_TYPES = ['message_batch.created', 'message_batch.canceling', 'message_batch.ended'];

export async function webhooksView(main, { signal }) {
  const msg = h('div');
  const list = h('div', { id: 'endpoints' });
  const url = h('input', { id: 'wh-url', type: 'url', size: 48, placeholder: 'https://example.com/hooks/batchd', required: true });
  const desc = h('input', { id: 'wh-desc', size: 24, placeholder: 'description' });
  const types = EVENT_TYPES.map((t) => h('label', { style: 'display:inline;font-weight:normal;margin-right:12px' }, h('input', { type: 'checkbox', value: t }), ' ', t));
  const create = h('form', {
    class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      try {
        const ep = await api('/v1/webhooks/endpoints', { method: 'POST', body: { url: url.value, description: desc.value, event_types: types.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value) } });
        fill(msg, h('div', { class: 'notice' }, 'Created ', h('span', { class: 'mono' }, ep.id), '. Its signing secret, shown this once: ', h('code', { id: 'wh-secret' }, ep.secret)));
        url.value = desc.value = '';
        await load();
      } catch (ex) { fill(msg, errorBox(ex)); }
    },
  }, h('h2', { style: 'margin-top:0' }, 'New endpoint'), h('div', { class: 'toolbar' }, url, desc, h('button', { type: 'submit' }, 'Create')),
  h('div', {}, h('span', { class: 'muted' }, 'Events (none ticked: all) '), types));
  main.append(h('h1', {}, 'Webhook endpoints'), msg, list, create);

  async function action(fn, done) {
    try { await fn(); fill(msg, h('div', { class: 'notice' }, done)); await load(); } catch (ex) { fill(msg, errorBox(ex)); }
  }

  async function attempts(ep, box) {
    const page = await api(`/v1/webhooks/endpoints/${ep.id}/attempts?limit=20`, { signal });
    fill(box, page.data.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['at', 'event', '#', 'status', 'error', 'ms', 'response', ''].map((c) => h('th', {}, c)))),
      h('tbody', {}, page.data.map((a) => h('tr', {},
        h('td', {}, fmt.time(a.at)), h('td', { class: 'mono' }, a.event_id), h('td', { class: 'num' }, a.attempt),
        h('td', {}, a.status ? badge(String(a.status), a.status < 300 ? 'succeeded' : 'errored') : badge(a.error_class || 'error', 'errored')),
        h('td', {}, a.error || ''), h('td', { class: 'num' }, a.duration_ms),
        h('td', {}, a.response ? h('details', {}, h('summary', {}, `${fmt.n(a.response.length)} bytes${a.response_truncated ? ' (cut)' : ''}`), h('pre', {}, a.response)) : ''),
        h('td', {}, h('button', { class: 'secondary', onclick: () => action(() => api(`/v1/webhooks/deliveries/${a.delivery_id}/resend`, { method: 'POST' }), `Delivery ${a.delivery_id} will be sent again.`) }, 'Resend'))))))
      : h('p', { class: 'muted' }, 'No attempts yet.'));
  }

  async function load() {
    const page = await api('/v1/webhooks/endpoints', { signal });
    fill(list, ...(page.data.length ? page.data.map((ep) => {
      const box = h('div', { class: 'attempts' }, h('p', { class: 'muted' }, 'Loading attempts…'));
      attempts(ep, box).catch((ex) => fill(box, errorBox(ex)));
      return h('div', { class: 'card endpoint', dataset: { id: ep.id } },
        h('div', { class: 'toolbar' },
          h('strong', { class: 'mono' }, ep.url), ep.enabled ? badge('enabled', 'ended') : badge('disabled', 'off'),
          h('span', { class: 'muted' }, ep.description), h('span', { class: 'spacer' }),
          h('button', { class: 'secondary', onclick: () => action(() => api(`/v1/webhooks/endpoints/${ep.id}/test`, { method: 'POST' }), 'A webhook.test event is on its way.') }, 'Send test'),
          !ep.enabled ? h('button', { onclick: () => action(() => api(`/v1/webhooks/endpoints/${ep.id}/enable`, { method: 'POST' }), 'Enabled.') }, 'Enable') : null,
          h('button', { class: 'danger', onclick: async () => { if (await confirm(`Delete the endpoint ${ep.url}? Its pending deliveries go too.`, 'Delete')) action(() => api(`/v1/webhooks/endpoints/${ep.id}`, { method: 'DELETE' }), 'Deleted.'); } }, 'Delete')),
        h('div', { class: 'muted' }, h('span', { class: 'mono' }, ep.id), ` · events: ${ep.event_types.length ? ep.event_types.join(', ') : 'all'}`,
          ep.disabled_reason ? ` · disabled: ${ep.disabled_reason}` : '', ep.failing_since ? ` · failing since ${fmt.time(ep.failing_since)}` : ''),
        h('h2', {}, 'Recent attempts'), box);
    }) : [h('p', { class: 'muted' }, 'No endpoints yet. batchd can POST message_batch.* events to you, signed (Standard Webhooks).')]));
  }
  try {
    await load();
  } catch (ex) {
    if (ex instanceof APIError && ex.status === 404) fill(list, h('p', { class: 'muted' }, 'This server has no webhooks.'));
    else throw ex;
  }
  ready('webhooks');
}

export async function backendsView(main, { signal }) {
  const tbody = h('tbody');
  main.append(h('h1', {}, 'Backends'),
    h('p', { class: 'muted' }, 'Limits are the configured ones (0: none); concurrency is the current adaptive limit. Refreshed every 2 s.'),
    h('table', { id: 'backends' }, h('thead', {}, h('tr', {}, ['backend', 'kind', 'models', 'in flight / concurrency', 'max', 'rpm', 'input tpm', 'output tpm', 'throttled', 'last error'].map((c) => h('th', {}, c)))), tbody));
  const load = async () => {
    const page = await api('/v1/backends', { signal });
    fill(tbody, ...page.data.map((b) => h('tr', {},
      h('td', {}, h('strong', {}, b.name)), h('td', {}, b.kind), h('td', { class: 'mono' }, (b.models || []).join(', ')),
      h('td', {}, h('div', { class: 'bar' }, h('span', { class: 'load', style: `width:${b.concurrency ? Math.min(100, (100 * b.in_flight) / b.concurrency) : 0}%` })),
        h('div', { class: 'bar-label' }, `${fmt.n(b.in_flight)} / ${fmt.n(b.concurrency)}`)),
      h('td', { class: 'num' }, fmt.n(b.limits.max_concurrency)), h('td', { class: 'num' }, fmt.n(b.limits.requests_per_minute)),
      h('td', { class: 'num' }, fmt.n(b.limits.input_tokens_per_minute)), h('td', { class: 'num' }, fmt.n(b.limits.output_tokens_per_minute)),
      h('td', { class: 'num' }, fmt.n(b.throttled)), h('td', {}, b.last_error || ''))));
  };
  await load();
  ready('backends');
  const t = setInterval(() => load().catch(() => {}), 2000);
  signal.addEventListener('abort', () => clearInterval(t));
}

// usageView shows GET /v1/usage grouped by day, model or batch. Each row
// is read loosely (its key is day, model or batch_id), since the endpoint
// is newer than this page may be; a server without it shows "—".
export async function usageView(main, { params, signal }) {
  const days = Number(params.get('days') || 30);
  const groupBy = params.get('group_by') || 'day';
  const to = new Date();
  const from = new Date(to.getTime() - days * 86400000);
  const sel = h('select', { id: 'usage-group', onchange: () => { location.hash = `#/usage?group_by=${sel.value}&days=${days}`; } },
    ['day', 'model', 'batch'].map((v) => h('option', { value: v, selected: v === groupBy }, `by ${v}`)));
  const range = h('select', { id: 'usage-range', onchange: () => { location.hash = `#/usage?group_by=${groupBy}&days=${range.value}`; } },
    [1, 7, 30, 90].map((v) => h('option', { value: v, selected: v === days }, `last ${v} day${v > 1 ? 's' : ''}`)));
  const body = h('div', { id: 'usage' });
  main.append(h('h1', {}, 'Usage and cost'), h('div', { class: 'toolbar' }, sel, range), body);
  let u;
  try {
    u = await api(`/v1/usage?${new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), group_by: groupBy })}`, { signal });
  } catch (ex) {
    if (ex instanceof APIError && ex.status === 404) {
      fill(body, h('div', { class: 'card' }, h('div', { class: 'stat' }, h('div', { class: 'k' }, 'cost'), h('div', { class: 'v' }, '—')),
        h('p', { class: 'muted' }, 'This server does not report usage (GET /v1/usage).')));
      ready('usage');
      return;
    }
    throw ex;
  }
  const rows = u.data || [];
  const key = (r) => r.group || '';
  const tok = (r) => r.tokens || {};
  const sum = (f) => rows.reduce((n, r) => n + (f(r) || 0), 0);
  const total = u.total || {};
  const totalUSD = total.batch_usd ?? sum((r) => r.batch_usd);
  const standardUSD = total.standard_usd ?? sum((r) => r.standard_usd);
  fill(body,
    h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'cost at batch price'), h('div', { class: 'v', id: 'usage-total' }, fmt.usd(totalUSD))),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'at standard price'), h('div', { class: 'v' }, fmt.usd(standardUSD))),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'saving'), h('div', { class: 'v' }, fmt.usd(total.saving_usd ?? standardUSD - totalUSD))),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'input tokens'), h('div', { class: 'v' }, fmt.n(total.tokens?.input_tokens ?? sum((r) => tok(r).input_tokens)))),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'output tokens'), h('div', { class: 'v' }, fmt.n(total.tokens?.output_tokens ?? sum((r) => tok(r).output_tokens))))),
    h('div', { class: 'card' }, h('h2', { style: 'margin-top:0' }, `Cost by ${groupBy}`),
      columnChart(rows.map((r) => ({ label: key(r), v: r.batch_usd || 0, text: fmt.usd(r.batch_usd) })), { label: `cost by ${groupBy}` })),
    h('table', {}, h('thead', {}, h('tr', {}, [groupBy, 'input', 'output', 'cache write', 'cache read', 'batch $', 'standard $', 'saving $'].map((c, i) => h('th', { class: i ? 'num' : '' }, c)))),
      h('tbody', {}, rows.map((r) => h('tr', {},
        h('td', { class: 'mono' }, groupBy === 'batch' ? h('a', { href: `#/batches/${key(r)}` }, key(r)) : key(r)),
        h('td', { class: 'num' }, fmt.n(tok(r).input_tokens)), h('td', { class: 'num' }, fmt.n(tok(r).output_tokens)),
        h('td', { class: 'num' }, fmt.n((tok(r).cache_write_5m_tokens || 0) + (tok(r).cache_write_1h_tokens || 0))),
        h('td', { class: 'num' }, fmt.n(tok(r).cache_read_tokens)),
        h('td', { class: 'num' }, fmt.usd(r.batch_usd)), h('td', { class: 'num' }, fmt.usd(r.standard_usd)),
        h('td', { class: 'num' }, fmt.usd(r.saving_usd ?? (r.standard_usd || 0) - (r.batch_usd || 0))))))));
  ready('usage');
}
