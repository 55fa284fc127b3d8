// DOM helpers. Text always goes in as text nodes, never as HTML: results
// hold model output and error messages, which must not become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'style') el.style.cssText = v; // CSSOM: the CSP forbids style attributes
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

// fill replaces el's children; unlike the DOM's replaceChildren it skips
// null, undefined and false (the DOM would write "null").
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  append(el, children);
  return el;
}

export const fmt = {
  n: (v) => (v ?? 0).toLocaleString('en-US'),
  usd: (v) => (v === undefined || v === null ? '—' : '$' + (v < 1 ? v.toFixed(4) : v.toFixed(2))),
  time: (t) => (t ? new Date(t).toLocaleString('en-GB', { hour12: false }) : '—'),
  dur(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    const sec = Math.round(ms / 1000);
    if (sec < 60) return `${sec} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} m ${sec % 60} s`;
    return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} m`;
  },
  rate: (v) => (isFinite(v) ? `${v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US')}/s` : '—'),
};

export const TYPES = ['succeeded', 'errored', 'canceled', 'expired'];

export function settled(c) {
  return c.succeeded + c.errored + c.canceled + c.expired;
}

export function total(c) {
  return c.processing + settled(c);
}

// progressBar shows a batch's counts as coloured segments over the
// unsettled remainder.
export function progressBar(c) {
  const t = total(c) || 1;
  return h('div', {},
    h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': total(c), 'aria-valuenow': settled(c) },
      TYPES.map((k) => c[k] ? h('span', { class: k, style: `width:${(100 * c[k]) / t}%`, title: `${k}: ${fmt.n(c[k])}` }) : null)),
    h('div', { class: 'bar-label' }, `${fmt.n(settled(c))} / ${fmt.n(total(c))}`,
      c.errored ? ` · ${fmt.n(c.errored)} errored` : '', c.canceled ? ` · ${fmt.n(c.canceled)} canceled` : '',
      c.expired ? ` · ${fmt.n(c.expired)} expired` : ''));
}

export function badge(text, cls = text) {
  return h('span', { class: `badge ${cls}` }, text.replace('_', ' '));
}

export function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, e?.message || String(e));
}

// confirm asks in a modal dialog; it resolves true on "Confirm".
export function confirm(text, okLabel = 'Confirm') {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

// lineChart draws points [{t (ms), v}] as an inline SVG: time across, value
// up, from 0 to max.
export function lineChart(points, { max, label = '' } = {}) {
  const W = 640, H = 180, L = 48, R = 10, T = 10, B = 24;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label });
  if (points.length < 2) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'collecting…'));
    return svg;
  }
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const top = Math.max(max || 0, ...points.map((p) => p.v), 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join('');
  svg.append(
    s('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
    s('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
    s('path', { class: 'area', d: `${d}L${x(t1).toFixed(1)},${H - B}L${L},${H - B}Z` }),
    s('path', { class: 'line', d }),
    s('text', { x: L - 6, y: T + 10, 'text-anchor': 'end' }, fmt.n(top)),
    s('text', { x: L - 6, y: H - B, 'text-anchor': 'end' }, '0'),
    s('text', { x: L, y: H - 6 }, new Date(t0).toLocaleTimeString('en-GB')),
    s('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, new Date(t1).toLocaleTimeString('en-GB')),
  );
  return svg;
}

// columnChart draws labelled values as columns.
export function columnChart(items, { label = '' } = {}) {
  const W = 640, H = 180, L = 56, B = 24, T = 10;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label });
  const top = Math.max(...items.map((i) => i.v), 0);
  if (!items.length || top <= 0) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'nothing yet'));
    return svg;
  }
  const w = (W - L - 10) / items.length;
  items.forEach((it, i) => {
    const hgt = (it.v / top) * (H - T - B);
    svg.append(s('rect', { class: 'col', x: L + i * w + 2, y: H - B - hgt, width: Math.max(w - 4, 1), height: hgt },
      s('title', {}, `${it.label}: ${it.text ?? it.v}`)));
  });
  svg.append(
    s('line', { class: 'axis', x1: L, y1: H - B, x2: W - 10, y2: H - B }),
    s('text', { x: L - 6, y: T + 10, 'text-anchor': 'end' }, items.find((i) => i.v === top)?.text ?? top),
    s('text', { x: L, y: H - 6 }, items[0].label),
    s('text', { x: W - 10, y: H - 6, 'text-anchor': 'end' }, items[items.length - 1].label),
  );
  return svg;
}
