// The batches list and the batch page.
import { api, download, APIError } from './api.js';
import { h, fill, fmt, progressBar, badge, errorBox, confirm, lineChart, settled, total, TYPES } from './ui.js';
import { live, ready, go } from './state.js';

const PAGE = 25; // rows of the batches list
const RESULTS_PAGE = 50; // rows of a results page
const SCAN_PAGE = 100; // rows read per call while filtering by status
const SCAN_CALLS = 10; // at most this many calls per filtered page

// usage remembers whether the server has the usage endpoints (an older
// batchd answers 404 "no such endpoint"), so a page asks only once.
let usageMissing = false;

async function batchUsage(id, signal) {
  if (usageMissing) return null;
  try {
    return await api(`/v1/messages/batches/${id}/usage`, { signal });
  } catch (e) {
    if (e instanceof APIError && e.status === 404) {
      if (/no such endpoint/.test(e.message)) usageMissing = true;
      return null;
    }
    throw e;
  }
}

function batchURL(id) { return `#/batches/${encodeURIComponent(id)}`; }

// -- the list ---------------------------------------------------------------

export async function batchesView(main, { params, signal }) {
  const status = params.get('status') || '';
  const after = params.get('after_id') || '';
  const before = params.get('before_id') || '';
  const firstPage = !after && !before;

  const statusSel = h('select', { id: 'status-filter', 'aria-label': 'status', onchange: () => go('#/batches', { status: statusSel.value }) },
    ['', 'in_progress', 'canceling', 'ended'].map((v) => h('option', { value: v, selected: v === status }, v ? v.replace('_', ' ') : 'all statuses')));
  const search = h('input', { id: 'batch-search', type: 'search', placeholder: 'msgbatch_… (exact id)', size: 34 });
  const searchErr = h('span', { class: 'muted' });
  const searchForm = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      const id = search.value.trim();
      if (!id) return;
      try {
        await api(`/v1/messages/batches/${encodeURIComponent(id)}`, { signal });
        location.hash = batchURL(id);
      } catch (ex) {
        searchErr.textContent = ex.status === 404 ? `no batch ${id} in this workspace` : ex.message;
      }
    },
  }, search, ' ', h('button', { type: 'submit', class: 'secondary' }, 'Open'), ' ', searchErr);

  const tbody = h('tbody');
  const pager = h('div', { class: 'pager' });
  const note = h('div');
  main.append(
    h('h1', {}, 'Batches'),
    h('div', { class: 'toolbar' }, statusSel, searchForm, h('span', { class: 'spacer' }), h('a', { class: 'button', href: '#/submit' }, 'New batch')),
    note,
    h('table', { id: 'batches' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Batch'), h('th', {}, 'Status'), h('th', {}, 'Progress'),
        h('th', {}, 'Created'), h('th', {}, 'Ended'), h('th', { class: 'num' }, 'Cost'))),
      tbody),
    pager);

  const rows = new Map(); // id → {b, tr, cost}

  function row(b, cost) {
    const tr = h('tr', { class: 'clickable', dataset: { id: b.id, status: b.processing_status }, onclick: () => { location.hash = batchURL(b.id); } },
      h('td', {}, h('a', { href: batchURL(b.id), class: 'mono' }, b.id)),
      h('td', {}, badge(b.processing_status)),
      h('td', {}, progressBar(b.request_counts)),
      h('td', {}, fmt.time(b.created_at)),
      h('td', {}, b.ended_at ? fmt.time(b.ended_at) : h('span', { class: 'muted' }, b.cancel_initiated_at ? 'canceling' : '—')),
      h('td', { class: 'num cost' }, cost === undefined ? '…' : cost === null ? '—' : fmt.usd(cost.batch_usd)));
    return tr;
  }

  function update(id, patch) {
    const r = rows.get(id);
    if (!r) return;
    Object.assign(r.b, patch);
    const tr = row(r.b, r.cost);
    r.tr.replaceWith(tr);
    r.tr = tr;
  }

  let list = [], next = null, prev = null, scanned = 0;
  if (!status) {
    const q = new URLSearchParams({ limit: PAGE });
    if (after) q.set('after_id', after);
    if (before) q.set('before_id', before);
    const page = await api(`/v1/messages/batches?${q}`, { signal });
    list = page.data;
    if (before) {
      // A page before a cursor: has_more says there are newer ones still.
      next = page.last_id;
      prev = page.has_more ? page.first_id : null;
      if (!page.has_more && list.length < PAGE) { go('#/batches', {}, true); return; }
    } else {
      next = page.has_more ? page.last_id : null;
      prev = after ? page.first_id : null;
    }
  } else {
    // The list API has no status filter: read pages of SCAN_PAGE, keep the
    // matching ones, and stop after SCAN_CALLS calls, so a page stays bounded.
    let cursor = after, end = false;
    for (let calls = 0; calls < SCAN_CALLS && list.length < PAGE && !end; calls++) {
      const q = new URLSearchParams({ limit: SCAN_PAGE });
      if (cursor) q.set('after_id', cursor);
      const page = await api(`/v1/messages/batches?${q}`, { signal });
      for (const b of page.data) {
        cursor = b.id;
        scanned++;
        if (b.processing_status === status) list.push(b);
        if (list.length === PAGE) break;
      }
      end = !page.has_more && (list.length < PAGE || cursor === page.last_id);
    }
    next = end ? null : cursor;
    if (!end && list.length < PAGE) fill(note, h('div', { class: 'notice' }, `Read ${fmt.n(scanned)} batches; ${list.length} are ${status.replace('_', ' ')}. Older ones: next page.`));
  }

  for (const b of list) {
    const tr = row(b);
    rows.set(b.id, { b, tr, cost: undefined });
    tbody.append(tr);
  }
  if (!list.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, status ? `No ${status.replace('_', ' ')} batches here.` : 'No batches yet.')));
  pager.append(
    h('button', { class: 'secondary', id: 'newer', disabled: !prev && !(status && after), onclick: () => go('#/batches', status ? { status } : { before_id: prev }) }, status ? 'First page' : '← Newer'),
    h('button', { class: 'secondary', id: 'older', disabled: !next, onclick: () => go('#/batches', { status, after_id: next }) }, 'Older →'),
    h('span', { class: 'muted' }, `${list.length} shown`));
  ready('batches');

  // Live: progress moves the bars, new batches appear on the first page.
  let reload = null;
  const envelope = (e) => e.detail.data?.data || {};
  live.addEventListener('progress', (e) => {
    const p = e.detail.data;
    update(p.id, { processing_status: p.processing_status, request_counts: p.request_counts });
  }, { signal });
  for (const t of ['message_batch.canceling', 'message_batch.ended']) {
    live.addEventListener(t, (e) => {
      const d = envelope(e);
      update(d.id, { processing_status: d.processing_status, request_counts: d.request_counts, ended_at: d.ended_at, cancel_initiated_at: d.cancel_initiated_at });
      const r = rows.get(d.id);
      if (r && t === 'message_batch.ended') loadCost(r);
    }, { signal });
  }
  live.addEventListener('message_batch.created', () => {
    if (!firstPage || status === 'ended' || reload) return;
    reload = setTimeout(() => { if (!signal.aborted) window.dispatchEvent(new Event('route')); }, 1000);
  }, { signal });
  signal.addEventListener('abort', () => clearTimeout(reload));

  // Cost per batch, a few at a time, after the page has painted.
  async function loadCost(r) {
    try {
      r.cost = await batchUsage(r.b.id, signal);
    } catch { r.cost = null; }
    update(r.b.id, {});
  }
  const queue = [...rows.values()];
  await Promise.all([0, 1, 2, 3].map(async () => {
    while (queue.length && !signal.aborted) await loadCost(queue.shift());
  }));
}

// -- one batch ---------------------------------------------------------------

function stat(k, v, id) {
  return h('div', { class: 'stat', id }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v));
}

export async function batchView(main, { id, params, signal }) {
  let b = await api(`/v1/messages/batches/${encodeURIComponent(id)}`, { signal });
  let usage;
  const samples = []; // completions seen while the page is open: {t, v}
  const sample = () => samples.push({ t: Date.now(), v: settled(b.request_counts) });
  sample();

  const title = h('h1');
  const actions = h('div', { class: 'toolbar' });
  const counts = h('div', { class: 'stats', id: 'counts' });
  const bar = h('div', { class: 'card' });
  const timing = h('div', { class: 'card', id: 'timing' });
  const cost = h('div', { class: 'card', id: 'cost' });
  const chart = h('div', { class: 'card', id: 'chart' });
  const results = h('section', { id: 'results' });
  const msg = h('div');
  main.append(title, actions, msg, bar, counts, h('div', { class: 'grid2' }, h('div', {}, timing, cost), chart), results);

  function paint() {
    const c = b.request_counts;
    fill(title, h('span', { class: 'mono' }, b.id), badge(b.processing_status));
    fill(bar, progressBar(c));
    fill(counts, stat('requests', fmt.n(total(c)), 'count-total'), stat('processing', fmt.n(c.processing), 'count-processing'),
      ...TYPES.map((k) => stat(k, fmt.n(c[k]), `count-${k}`)));
    const created = Date.parse(b.created_at);
    const end = b.ended_at ? Date.parse(b.ended_at) : Date.now();
    const overall = settled(c) / Math.max((end - created) / 1000, 0.001);
    const recent = samples.filter((s) => s.t >= Date.now() - 15000);
    const rate = b.ended_at || recent.length < 2 ? NaN
      : (recent[recent.length - 1].v - recent[0].v) / Math.max((recent[recent.length - 1].t - recent[0].t) / 1000, 0.001);
    const left = c.processing && rate > 0 ? (c.processing / rate) * 1000 : NaN;
    fill(timing, h('h2', {}, 'Timing'), h('table', {}, h('tbody', {},
      h('tr', {}, h('th', {}, 'created'), h('td', {}, fmt.time(b.created_at))),
      h('tr', {}, h('th', {}, b.ended_at ? 'ended' : 'expires'), h('td', {}, fmt.time(b.ended_at || b.expires_at))),
      b.cancel_initiated_at ? h('tr', {}, h('th', {}, 'cancel asked'), h('td', {}, fmt.time(b.cancel_initiated_at))) : null,
      b.archived_at ? h('tr', {}, h('th', {}, 'archived'), h('td', {}, fmt.time(b.archived_at))) : null,
      h('tr', {}, h('th', {}, b.ended_at ? 'took' : 'running for'), h('td', {}, fmt.dur(end - created))),
      h('tr', {}, h('th', {}, 'throughput'), h('td', { id: 'throughput' }, `${fmt.rate(overall)} on average`,
        isFinite(rate) ? ` · ${fmt.rate(rate)} now` : '')),
      isFinite(left) ? h('tr', {}, h('th', {}, 'left (estimate)'), h('td', {}, fmt.dur(left))) : null)));
    const points = [{ t: created, v: 0 }, ...samples.filter((s) => s.t > created)];
    if (b.ended_at) points.push({ t: Date.parse(b.ended_at), v: settled(c) });
    points.sort((p, q) => p.t - q.t);
    fill(chart, h('h2', {}, 'Completions over time'), lineChart(points, { max: total(c), label: 'settled requests over time' }),
      h('div', { class: 'muted' }, 'Measured while this page is open; before that, a straight line from the creation.'));
    paintActions();
  }

  function paintCost() {
    const row = (k, v) => h('tr', {}, h('th', {}, k), h('td', { class: 'num' }, v));
    if (!usage) {
      fill(cost, h('h2', {}, 'Cost'), h('div', { class: 'muted', id: 'cost-value' }, '—'));
      return;
    }
    const t = usage.tokens || {};
    fill(cost, h('h2', {}, 'Cost'), h('table', {}, h('tbody', {},
      row('at batch price', h('span', { id: 'cost-value' }, fmt.usd(usage.batch_usd))),
      row('at standard price', fmt.usd(usage.standard_usd)),
      row('saving', fmt.usd(usage.saving_usd)),
      row('input tokens', fmt.n(t.input_tokens)), row('output tokens', fmt.n(t.output_tokens)),
      row('cache writes (5 m / 1 h)', `${fmt.n(t.cache_write_5m_tokens)} / ${fmt.n(t.cache_write_1h_tokens)}`),
      row('cache reads', fmt.n(t.cache_read_tokens)))),
    (usage.models || []).length > 1 ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'model'), h('th', { class: 'num' }, 'batch'), h('th', { class: 'num' }, 'standard'))),
      h('tbody', {}, usage.models.map((m) => h('tr', {}, h('td', {}, m.model), h('td', { class: 'num' }, m.priced ? fmt.usd(m.batch_usd) : 'no price'), h('td', { class: 'num' }, m.priced ? fmt.usd(m.standard_usd) : '—'))))) : null,
    (usage.unpriced || []).length ? h('div', { class: 'muted' }, `No price for ${usage.unpriced.join(', ')}`) : null);
  }

  function act(label, cls, question, fn) {
    return h('button', {
      class: cls, id: `action-${label.toLowerCase()}`, onclick: async (e) => {
        if (!(await confirm(question, label))) return;
        e.target.disabled = true;
        try { await fn(); } catch (ex) { fill(msg, errorBox(ex)); } finally { e.target.disabled = false; }
      },
    }, label);
  }

  function paintActions() {
    const c = b.request_counts, ended = b.processing_status === 'ended';
    const failed = c.errored + c.canceled + c.expired;
    fill(actions,
      h('a', { href: '#/batches' }, '← Batches'), h('span', { class: 'spacer' }),
      !ended && b.processing_status !== 'canceling' ? act('Cancel', 'danger', `Cancel ${b.id}? Requests not yet sent become canceled; those in flight finish.`, async () => {
        b = await api(`/v1/messages/batches/${b.id}/cancel`, { method: 'POST' }); paint();
      }) : null,
      ended && failed && !b.archived_at ? act('Retry', 'secondary', `Make a new batch of the ${fmt.n(failed)} requests of ${b.id} that did not succeed?`, async () => {
        const nb = await api(`/v1/messages/batches/${b.id}/retry`, { method: 'POST' }); location.hash = batchURL(nb.id);
      }) : null,
      ended || b.archived_at ? h('button', { class: 'secondary', id: 'download', onclick: saveResults }, 'Download JSONL') : null,
      ended ? act('Delete', 'danger', `Delete ${b.id} and its results? This cannot be undone.`, async () => {
        await api(`/v1/messages/batches/${b.id}`, { method: 'DELETE' }); location.hash = '#/batches';
      }) : null);
  }

  async function saveResults() {
    try {
      const blob = await download(`/v1/messages/batches/${b.id}/results`, signal);
      const a = h('a', { href: URL.createObjectURL(blob), download: `${b.id}_results.jsonl` });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (ex) { fill(msg, errorBox(ex)); }
  }

  paint();
  paintCost();
  ready('batch');
  const rs = resultsSection(results, () => b, params, signal);
  await rs.load();
  batchUsage(b.id, signal).then((u) => { usage = u; paintCost(); }).catch(() => {});

  // Live: progress from the workspace stream; a poll every 3 s as well,
  // for the throughput while the stream is down and for the usage.
  const refresh = async () => {
    try {
      b = await api(`/v1/messages/batches/${encodeURIComponent(id)}`, { signal });
      sample();
      paint();
      if (usage !== null || b.processing_status === 'ended') { usage = await batchUsage(b.id, signal); paintCost(); }
    } catch (ex) {
      if (ex.name !== 'AbortError' && ex.status === 404) fill(msg, errorBox({ message: `${id} no longer exists (deleted).` }));
    }
  };
  live.addEventListener('progress', (e) => {
    const p = e.detail.data;
    if (p.id !== b.id) return;
    const was = settled(b.request_counts);
    b = { ...b, processing_status: p.processing_status, request_counts: p.request_counts };
    sample();
    paint();
    if (settled(p.request_counts) > was) rs.grew();
  }, { signal });
  for (const t of ['message_batch.canceling', 'message_batch.ended']) {
    live.addEventListener(t, (e) => {
      if (e.detail.data?.data?.id !== b.id) return;
      refresh().then(() => rs.grew(true));
    }, { signal });
  }
  const poll = setInterval(() => { if (b.processing_status !== 'ended') refresh(); }, 3000);
  signal.addEventListener('abort', () => clearInterval(poll));
}

// resultsSection is the paged, filtered results table of a batch.
function resultsSection(root, getBatch, params, signal) {
  const typeSel = h('select', { id: 'result-type', 'aria-label': 'result type', onchange: () => { cursors = ['']; load(); } },
    ['', ...TYPES].map((v) => h('option', { value: v }, v || 'all results')));
  const q = h('input', { id: 'result-search', type: 'search', placeholder: 'custom_id starts with…', size: 28, value: params.get('q') || '' });
  let debounce;
  q.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(() => { cursors = ['']; load(); }, 300); });
  const form = h('form', { onsubmit: (e) => { e.preventDefault(); clearTimeout(debounce); cursors = ['']; load(); } }, q);
  const tbody = h('tbody');
  const pager = h('div', { class: 'pager' });
  const err = h('div');
  root.append(h('h2', {}, 'Results'), h('div', { class: 'toolbar' }, typeSel, form), err,
    h('table', { id: 'results-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'custom_id'), h('th', {}, 'result'), h('th', {}, 'text or error'))), tbody),
    pager);

  let cursors = ['']; // the after cursor of each page seen; the last is this page's
  let next = null, loading = false, shown = 0, lastGrow = 0;

  async function load() {
    if (loading) return;
    loading = true;
    const b = getBatch();
    const query = new URLSearchParams({ limit: RESULTS_PAGE });
    const after = cursors[cursors.length - 1];
    if (after) query.set('after', after);
    if (typeSel.value) query.set('result_type', typeSel.value);
    if (q.value.trim()) query.set('custom_id', q.value.trim());
    if (b.processing_status !== 'ended') query.set('partial', 'true');
    try {
      const page = await api(`/v1/messages/batches/${b.id}/results?${query}`, { signal });
      err.replaceChildren();
      next = page.next_after;
      shown = page.data.length;
      fill(tbody, ...page.data.flatMap(resultRow));
      if (!page.data.length) tbody.append(h('tr', {}, h('td', { colspan: 3, class: 'muted' }, settled(b.request_counts) ? 'No result matches.' : 'No result yet.')));
      paintPager();
      ready('results');
    } catch (ex) {
      if (ex.name !== 'AbortError') fill(err, errorBox(ex));
    } finally { loading = false; }
  }

  function paintPager() {
    const n = cursors.length;
    fill(pager,
      h('button', { class: 'secondary', id: 'results-prev', disabled: n < 2, onclick: () => { cursors.pop(); load(); } }, '← Previous'),
      h('button', { class: 'secondary', id: 'results-next', disabled: !next, onclick: () => { cursors.push(next); load(); } }, 'Next →'),
      h('span', { class: 'muted' }, `page ${n} · ${shown} shown`));
  }

  return {
    load,
    // grew reloads the page when new results could land on it (the last
    // page, not full yet) — at most every 2 s.
    grew: (force) => {
      if (!force && (next || shown >= RESULTS_PAGE || lastGrow > Date.now() - 2000)) return;
      lastGrow = Date.now();
      load();
    },
  };
}

function textOf(res) {
  if (res.type === 'succeeded') {
    const blocks = res.message?.content || [];
    return blocks.filter((c) => c.type === 'text').map((c) => c.text).join('\n') || `(${blocks.map((c) => c.type).join(', ') || 'no content'})`;
  }
  if (res.type === 'errored') {
    const e = res.error?.error || res.error || {};
    return `${e.type || 'error'}: ${e.message || ''}`;
  }
  return res.type;
}

function resultRow(line) {
  const res = line.result || {};
  const text = textOf(res);
  const detail = h('tr', { class: 'detail', hidden: true }, h('td', { colspan: 3 },
    res.type === 'succeeded' ? [
      h('div', { class: 'muted' }, `stop_reason ${res.message?.stop_reason ?? '—'} · model ${res.message?.model ?? '—'} · ${fmt.n(res.message?.usage?.input_tokens)} in / ${fmt.n(res.message?.usage?.output_tokens)} out`),
      h('pre', { class: 'result-text' }, text)] : null,
    res.type === 'errored' ? h('pre', { class: 'result-text' }, text) : null,
    h('details', {}, h('summary', {}, 'JSON'), h('pre', {}, JSON.stringify(line, null, 2)))));
  const tr = h('tr', { class: 'clickable result-row', dataset: { customId: line.custom_id }, onclick: () => { detail.hidden = !detail.hidden; } },
    h('td', { class: 'mono' }, line.custom_id), h('td', {}, badge(res.type || '?', res.type)),
    h('td', {}, text.length > 140 ? text.slice(0, 140) + '…' : text));
  return [tr, detail];
}
