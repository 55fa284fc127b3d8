// Submit a batch from the page: a JSONL file of requests, or records with
// a prompt template (as `batchd submit` and `batchd submit --template`).
import { upload } from './api.js';
import { h, fill, fmt, errorBox } from './ui.js';
import { ready } from './state.js';

const MAX_REQUESTS = 100000;
const MAX_BYTES = 256 * 1024 * 1024;
const CUSTOM_ID = /^[a-zA-Z0-9_-]{1,64}$/;

// sanitize maps s onto ^[a-zA-Z0-9_-]{0,64}$ as `batchd submit` does.
function sanitize(s) {
  let out = '';
  for (const ch of String(s)) {
    if (out.length === 64) break;
    out += /[a-zA-Z0-9_-]/.test(ch) ? ch : '_';
  }
  return out;
}

// compile turns a template with {{.field}}, {{.a.b}} and {{json .field}}
// (the common part of Go's text/template that `batchd submit --template`
// takes) into a function of a record; a missing field is an error, as
// there (missingkey=error).
export function compile(text) {
  const re = /\{\{\s*(json\s+)?\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\s*\}\}/g;
  const rest = text.replace(re, '');
  if (/\{\{|\}\}/.test(rest)) throw new Error('template: only {{.field}}, {{.a.b}} and {{json .field}} are understood here; use batchd submit --template for the rest of Go templates');
  return (record) => text.replace(re, (_, json, path) => {
    let v = record;
    for (const k of path.split('.')) {
      if (v === null || typeof v !== 'object' || !(k in v)) throw new Error(`template: the record has no field "${path}"`);
      v = v[k];
    }
    if (json) return JSON.stringify(v);
    return typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v);
  });
}

// build reads the input a chunk at a time and returns the create body as a
// Blob. Lines in the API's shape go in as slices of the file itself, so a
// big file is never copied into memory; rendered templates go in as text.
async function build(input, encode, onProgress) {
  const parts = ['{"requests":['];
  const seen = new Map();
  const dec = new TextDecoder();
  const reader = input.stream().getReader();
  let pos = 0, lineStart = 0, lineNo = 0, count = 0;
  let carry = [];
  const line = (bytes, start, end) => {
    lineNo++;
    const text = dec.decode(bytes).trim();
    if (!text) return;
    let res;
    try { res = encode(text, lineNo); } catch (e) { throw new Error(`line ${lineNo}: ${e.message}`); }
    const prev = seen.get(res.id);
    if (prev) throw new Error(`line ${lineNo}: custom_id "${res.id}" is already used on line ${prev}`);
    seen.set(res.id, lineNo);
    if (++count > MAX_REQUESTS) throw new Error(`more than ${fmt.n(MAX_REQUESTS)} requests: split the file, or use batchd submit, which splits it`);
    if (count > 1) parts.push(',');
    parts.push(res.json ?? input.slice(start, end));
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    let from = 0;
    for (let i = value.indexOf(10); i >= 0; i = value.indexOf(10, i + 1)) {
      const bytes = carry.length ? concat([...carry, value.subarray(from, i)]) : value.subarray(from, i);
      line(bytes, lineStart, pos + i);
      carry = [];
      from = i + 1;
      lineStart = pos + i + 1;
    }
    if (from < value.length) carry.push(value.slice(from));
    pos += value.length;
    onProgress(pos, input.size);
  }
  if (carry.length) line(concat(carry), lineStart, pos);
  if (!count) throw new Error('no requests: the input is empty');
  parts.push(']}');
  const body = new Blob(parts, { type: 'application/json' });
  if (body.size > MAX_BYTES) throw new Error(`the create body would be ${fmt.n(body.size)} bytes, over the 256 MiB limit: use batchd submit, which splits it`);
  return { body, count };
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return out;
}

function rawEncoder(text) {
  let req;
  try { req = JSON.parse(text); } catch (e) { throw new Error(`not a request object: ${e.message}`); }
  if (typeof req?.custom_id !== 'string') throw new Error('no "custom_id" (use a template for arbitrary records)');
  if (!CUSTOM_ID.test(req.custom_id)) throw new Error(`custom_id "${req.custom_id}" does not match ^[a-zA-Z0-9_-]{1,64}$`);
  if (!req.params || typeof req.params !== 'object' || Array.isArray(req.params)) throw new Error('"params" must be an object');
  return { id: req.custom_id };
}

function templateEncoder({ template, model, maxTokens, idField, system }) {
  const render = compile(template);
  if (!model) throw new Error('a model is needed');
  if (!(maxTokens > 0)) throw new Error('max_tokens must be a positive number');
  return (text, lineNo) => {
    let record;
    try { record = JSON.parse(text); } catch (e) { throw new Error(`not JSON: ${e.message}`); }
    let id = '';
    if (record && typeof record === 'object' && record[idField] !== undefined && record[idField] !== null) id = sanitize(record[idField]);
    if (!id) id = `req-${lineNo}`;
    const params = { model, max_tokens: maxTokens, messages: [{ role: 'user', content: render(record) }] };
    if (system) params.system = system;
    return { id, json: JSON.stringify({ custom_id: id, params }) };
  };
}

export async function submitView(main) {
  let mode = 'requests';
  const tabs = h('div', { class: 'tabs' });
  const form = h('div', { class: 'card' });
  const status = h('div', { id: 'submit-status' });
  main.append(h('h1', {}, 'Submit a batch'), tabs, form, status);

  const file = h('input', { type: 'file', id: 'submit-file', accept: '.jsonl,.ndjson,.json,.txt,application/x-ndjson' });
  const paste = h('textarea', { id: 'submit-paste', placeholder: '…or paste lines here' });
  const template = h('textarea', { id: 'tmpl', placeholder: 'Summarize: {{.text}}' }, 'Summarize: {{.text}}');
  const model = h('input', { id: 'tmpl-model', value: 'claude-sonnet-4-5', size: 30 });
  const maxTokens = h('input', { id: 'tmpl-max-tokens', type: 'number', value: 512, min: 1 });
  const idField = h('input', { id: 'tmpl-id-field', value: 'id', size: 12 });
  const system = h('input', { id: 'tmpl-system', size: 50, placeholder: '(none)' });
  const progress = h('progress', { id: 'submit-progress', max: 1, value: 0, hidden: true });
  const go = h('button', { id: 'submit-go', onclick: submit }, 'Create batch');

  function paintForm() {
    fill(tabs,
      h('button', { class: mode === 'requests' ? 'active' : '', onclick: () => { mode = 'requests'; paintForm(); } }, 'Requests (JSONL)'),
      h('button', { class: mode === 'template' ? 'active' : '', id: 'tab-template', onclick: () => { mode = 'template'; paintForm(); } }, 'Template over records'));
    paste.placeholder = mode === 'requests'
      ? '…or paste lines here: {"custom_id":"doc-1","params":{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}}'
      : '…or paste records here, one JSON object a line: {"id":"doc-1","text":"the quick brown fox"}';
    fill(form,
      mode === 'requests'
        ? h('p', { class: 'muted' }, 'One request a line in the API’s own shape, {"custom_id": …, "params": {…}} — what batchd submit takes. The file is checked line by line first (a bad line creates nothing), then streamed to POST /v1/messages/batches.')
        : h('div', {},
          h('p', { class: 'muted' }, 'Each line is any JSON record; the template makes it the user message ({{.field}}, {{.a.b}}, {{json .field}}), as batchd submit --template does. The custom_id comes from the id field (cleaned to ^[a-zA-Z0-9_-]{1,64}$), else req-<line>.'),
          h('label', { for: 'tmpl' }, 'Template'), template,
          h('div', { class: 'toolbar' },
            h('span', {}, h('label', { for: 'tmpl-model' }, 'model'), model),
            h('span', {}, h('label', { for: 'tmpl-max-tokens' }, 'max_tokens'), maxTokens),
            h('span', {}, h('label', { for: 'tmpl-id-field' }, 'id field'), idField),
            h('span', {}, h('label', { for: 'tmpl-system' }, 'system'), system))),
      h('label', { for: 'submit-file' }, mode === 'requests' ? 'JSONL file of requests' : 'JSONL file of records'), file,
      h('label', { for: 'submit-paste' }, 'or paste'), paste,
      h('p', {}, go), progress);
  }

  async function submit() {
    status.replaceChildren();
    const input = file.files[0] || (paste.value.trim() ? new Blob([paste.value]) : null);
    if (!input) { status.append(errorBox({ message: 'Choose a file or paste some lines first.' })); return; }
    go.disabled = true;
    progress.hidden = false;
    const label = h('div', { class: 'muted', id: 'submit-phase' });
    status.append(label);
    try {
      const encode = mode === 'requests' ? rawEncoder
        : templateEncoder({ template: template.value, model: model.value.trim(), maxTokens: Number(maxTokens.value), idField: idField.value.trim() || 'id', system: system.value.trim() });
      const { body, count } = await build(input, encode, (done, all) => {
        progress.value = all ? done / all : 1;
        label.textContent = `Checking: ${fmt.n(done)} of ${fmt.n(all)} bytes`;
      });
      const b = await upload('/v1/messages/batches', body, {
        idempotencyKey: crypto.randomUUID(),
        onProgress: (done, all) => {
          progress.value = all ? done / all : 1;
          label.textContent = `Uploading ${fmt.n(count)} requests: ${fmt.n(done)} of ${fmt.n(all)} bytes`;
        },
      });
      progress.value = 1;
      label.replaceChildren();
      fill(status, h('div', { class: 'notice' }, `Created `, h('a', { id: 'created-link', class: 'mono', href: `#/batches/${b.id}` }, b.id),
        ` with ${fmt.n(count)} requests.`));
      file.value = '';
    } catch (e) {
      fill(status, errorBox(e));
    } finally {
      go.disabled = false;
      progress.hidden = true;
    }
  }

  paintForm();
  ready('submit');
}
