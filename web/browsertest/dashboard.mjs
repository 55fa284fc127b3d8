// The dashboard's browser test, run by cmd/batchd's TestDashboardBrowser
// against a real `batchd serve`: headless Debian chromium driven by
// playwright-core (which downloads no browser of its own).
//
// Environment: BATCHD_URL, BATCHD_KEY (a key of the server), CHROMIUM
// (default /usr/bin/chromium), SCREENSHOT (where to save the picture),
// WORKDIR (a temporary dir), HEAVY_BATCH (the id of a big batch to time
// the results page on; optional). It prints one line "RESULT {json}" with
// the measured figures and exits 1 on the first failed step.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const base = process.env.BATCHD_URL;
const key = process.env.BATCHD_KEY;
const workdir = process.env.WORKDIR || fs.mkdtempSync('/tmp/batchd-browser-');
const heavy = process.env.HEAVY_BATCH || '';
const T = 60_000; // generous: the machine is shared

const figures = { steps: [], first_paint_ms: {}, ready_ms: {}, api_server_ms: {} };
function step(name) {
  figures.steps.push(name);
  console.error(`step: ${name}`);
}

async function apiCall(method, p, body) {
  const res = await fetch(base + p, {
    method, headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return JSON.parse(text);
}

function request(id, prompt) {
  return { custom_id: id, params: { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: prompt }] } };
}

// pageTimes reads, after a fresh load, when the view's data was painted
// (the app's ready mark), the first contentful paint, and the server time
// (request sent to first byte) of every API call the page made.
async function pageTimes(page, mark) {
  await page.waitForFunction((m) => performance.getEntriesByName(`ready:${m}`).length > 0, mark, { timeout: T });
  return page.evaluate((m) => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null;
    const ready = performance.getEntriesByName(`ready:${m}`).at(-1).startTime;
    const api = performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname.startsWith('/v1/') && e.responseEnd > 0 && !e.name.includes('/events'))
      .map((e) => ({ path: new URL(e.name).pathname + new URL(e.name).search, server_ms: e.responseStart - e.requestStart, total_ms: e.responseEnd - e.startTime }));
    return { fcp, ready, api };
  }, mark);
}

function record(name, t) {
  figures.first_paint_ms[name] = t.fcp === null ? null : Math.round(t.fcp);
  figures.ready_ms[name] = Math.round(t.ready);
  for (const a of t.api) {
    const k = a.path.replace(/msgbatch_[A-Za-z0-9]+/g, '{id}').replace(/=[^&]*/g, '=');
    const cur = figures.api_server_ms[k] || { calls: 0, max: 0 };
    cur.calls++;
    cur.max = Math.max(cur.max, Math.round(a.server_ms * 10) / 10);
    figures.api_server_ms[k] = cur;
  }
}

// A fresh profile (--user-data-dir) each run: playwright passes it itself.
const browser = await chromium.launchPersistentContext(path.join(workdir, 'profile'), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let page;
try {
  page = browser.pages()[0] || await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Failed API calls are judged by the response listener below.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`); });
  // Any answer of 400 or more is a problem.
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (r.status() >= 400) problems.push(`${r.status()} for ${u.pathname}${u.search}`);
  });

  step('sign in refuses a wrong key');
  await page.goto(base + '/');
  await page.fill('#apikey', 'sk-batchd-wrong');
  await page.click('#signin');
  await page.getByText('That key was refused').waitFor({ timeout: T });
  problems.length = 0; // the 401 is logged by the browser as a failed resource

  step('sign in');
  await page.fill('#apikey', key);
  await page.click('#signin');
  await page.waitForSelector('body[data-ready="batches"]', { timeout: T });
  if (await page.evaluate(() => sessionStorage.getItem('batchd.apiKey')) !== key) throw new Error('the key is not in sessionStorage');
  if (await page.evaluate(() => localStorage.length) !== 0) throw new Error('something went to localStorage');

  step('a batch created through the API appears and progresses to ended');
  const reqs = [];
  for (let i = 0; i < 40; i++) reqs.push(request(`watch-${i}`, i % 10 === 3 ? '[[sim error=invalid_request_error]] no' : `[[sim latency=700ms]] hello ${i}`));
  const watched = await apiCall('POST', '/v1/messages/batches', { requests: reqs });
  await page.waitForSelector(`#batches tr[data-id="${watched.id}"]`, { timeout: T }); // the live stream brought it
  await page.click(`#batches tr[data-id="${watched.id}"] a`);
  await page.waitForSelector('body[data-ready="results"]', { timeout: T });
  const seen = new Set();
  const deadline = Date.now() + T;
  for (;;) {
    const v = await page.getAttribute('#main .bar[role=progressbar]', 'aria-valuenow').catch(() => null);
    if (v !== null) seen.add(v);
    if ((await page.textContent('h1 .badge').catch(() => '')) === 'ended') break;
    if (Date.now() > deadline) throw new Error(`batch ${watched.id} did not end on the page; progress seen: ${[...seen]}`);
    await page.waitForTimeout(100);
  }
  if (seen.size < 3) throw new Error(`progress was not seen moving: ${[...seen]}`);
  figures.progress_values_seen = seen.size;
  await page.waitForFunction(() => document.querySelector('#count-errored .v')?.textContent === '4', null, { timeout: T });
  await page.waitForFunction(() => document.querySelectorAll('#results-table tr.result-row').length === 40, null, { timeout: T });
  // The batch's cost, from its usage: 36 succeeded requests cost something.
  await page.waitForFunction(() => /\$\d/.test(document.querySelector('#cost-value')?.textContent || ''), null, { timeout: T });

  // The screenshot for the README: the page that watched it, whose chart
  // holds what it saw.
  await page.screenshot({ path: process.env.SCREENSHOT || path.join(workdir, 'dashboard.png'), fullPage: false });

  step('open a result');
  await page.click('#results-table tr[data-custom-id="watch-3"]');
  const detail = page.locator('#results-table tr[data-custom-id="watch-3"] + tr.detail');
  await detail.waitFor({ state: 'visible', timeout: T });
  if (!(await detail.textContent()).includes('invalid_request_error')) throw new Error('the errored result does not show its error');
  await page.click('#results-table tr[data-custom-id="watch-5"]');
  const ok = page.locator('#results-table tr[data-custom-id="watch-5"] + tr.detail .result-text');
  await ok.waitFor({ state: 'visible', timeout: T });
  if (!(await ok.textContent()).includes('hello 5')) throw new Error('the succeeded result does not show its text');

  step('filter results by type and search by custom_id');
  await page.selectOption('#result-type', 'errored');
  await page.waitForFunction(() => [...document.querySelectorAll('#results-table tr.result-row')].length === 4, null, { timeout: T });
  await page.selectOption('#result-type', '');
  await page.fill('#result-search', 'watch-1');
  await page.press('#result-search', 'Enter');
  await page.waitForFunction(() => [...document.querySelectorAll('#results-table tr.result-row')].map((r) => r.dataset.customId).join() ===
    'watch-1,watch-10,watch-11,watch-12,watch-13,watch-14,watch-15,watch-16,watch-17,watch-18,watch-19', null, { timeout: T });

  step('upload a JSONL file as a new batch');
  const file = path.join(workdir, 'upload.jsonl');
  fs.writeFileSync(file, Array.from({ length: 25 }, (_, i) => JSON.stringify(request(`up-${i}`, `uploaded ${i}`))).join('\n') + '\n');
  await page.click('nav a[data-nav=submit]');
  await page.waitForSelector('body[data-ready="submit"]', { timeout: T });
  await page.setInputFiles('#submit-file', file);
  await page.click('#submit-go');
  await page.waitForSelector('#created-link', { timeout: T });
  const uploaded = (await page.textContent('#created-link')).trim();
  await page.click('#created-link');
  await page.waitForFunction(() => document.querySelector('h1 .badge')?.textContent === 'ended', null, { timeout: T });
  const up = await apiCall('GET', `/v1/messages/batches/${uploaded}`);
  if (up.request_counts.succeeded !== 25) throw new Error(`uploaded batch: ${JSON.stringify(up.request_counts)}`);

  step('submit records with a template');
  await page.click('nav a[data-nav=submit]');
  await page.waitForSelector('body[data-ready="submit"]', { timeout: T });
  await page.click('#tab-template');
  await page.fill('#tmpl', 'Translate: {{.text}}');
  await page.fill('#submit-paste', '{"id":"t/1","text":"bonjour"}\n{"id":"t/2","text":"merci"}\n');
  await page.click('#submit-go');
  await page.waitForSelector('#created-link', { timeout: T });
  const templated = (await page.textContent('#created-link')).trim();
  const tb = await apiCall('GET', `/v1/messages/batches/${templated}`);
  if (tb.request_counts.processing + tb.request_counts.succeeded !== 2) throw new Error(`templated batch: ${JSON.stringify(tb.request_counts)}`);

  step('cancel a batch from its page');
  const slow = [];
  for (let i = 0; i < 12; i++) slow.push(request(`slow-${i}`, '[[sim latency=2s]] slow'));
  const victim = await apiCall('POST', '/v1/messages/batches', { requests: slow });
  await page.goto(`${base}/#/batches/${victim.id}`);
  await page.waitForSelector('#action-cancel', { timeout: T });
  await page.click('#action-cancel');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => ['canceling', 'ended'].includes(document.querySelector('h1 .badge')?.textContent), null, { timeout: T });
  await page.waitForFunction(() => Number(document.querySelector('#count-canceled .v')?.textContent.replace(/,/g, '')) > 0, null, { timeout: T });
  const v = await apiCall('GET', `/v1/messages/batches/${victim.id}`);
  if (!v.cancel_initiated_at || v.request_counts.canceled === 0) throw new Error(`not canceled: ${JSON.stringify(v)}`);

  step('webhooks, backends and usage pages render');
  for (const [nav, mark] of [['webhooks', 'webhooks'], ['backends', 'backends'], ['usage', 'usage']]) {
    await page.click(`nav a[data-nav=${nav}]`);
    await page.waitForSelector(`body[data-ready="${mark}"]`, { timeout: T });
  }
  if (!(await page.textContent('#main')).match(/\$\d/)) throw new Error('the usage page shows no cost');
  await page.click('nav a[data-nav=backends]');
  await page.waitForSelector('#backends tbody tr', { timeout: T });

  step('time the batch list and a results page on a fresh load');
  await page.goto(`${base}/#/batches`);
  await page.reload();
  record('batches', await pageTimes(page, 'batches'));
  await page.goto(`${base}/#/batches/${watched.id}`);
  await page.reload();
  record('results', await pageTimes(page, 'results'));
  if (heavy) {
    step('time the pages with the big batch');
    await page.goto(`${base}/#/batches/${heavy}`);
    await page.reload();
    record('heavy_results', await pageTimes(page, 'results'));
    const search = async (name, fn) => {
      await page.evaluate(() => performance.clearResourceTimings());
      const t0 = Date.now();
      await fn();
      figures.ready_ms[name] = Date.now() - t0;
      record(name, { fcp: null, ready: figures.ready_ms[name], api: await pageTimes(page, 'results').then((t) => t.api) });
    };
    await page.click('#results-next');
    await page.waitForSelector('#results-table tr[data-custom-id="req-50"]', { timeout: T });
    await page.click('#results-prev');
    await page.waitForSelector('#results-table tr[data-custom-id="req-0"]', { timeout: T });
    const lastID = `req-99999`;
    await search('heavy_search_custom_id', async () => {
      await page.evaluate(() => performance.clearMarks());
      await page.fill('#result-search', lastID);
      await page.press('#result-search', 'Enter');
      await page.waitForSelector(`#results-table tr[data-custom-id="${lastID}"]`, { timeout: T });
    });
    await search('heavy_filter_errored', async () => {
      await page.evaluate(() => performance.clearMarks());
      await page.fill('#result-search', '');
      await page.selectOption('#result-type', 'errored');
      await page.waitForFunction(() => performance.getEntriesByName('ready:results').length > 0, null, { timeout: T });
    });
    await page.goto(`${base}/#/batches?status=in_progress`);
    await page.reload();
    record('batches_filtered', await pageTimes(page, 'batches'));
  }

  if (problems.length) throw new Error(`the page reported errors:\n${problems.join('\n')}`);
  console.log('RESULT ' + JSON.stringify(figures));
} catch (e) {
  console.error(`FAILED at step "${figures.steps.at(-1)}": ${e.stack || e}`);
  if (page) await page.screenshot({ path: path.join(workdir, 'failure.png') }).catch(() => {});
  console.error(`(screenshot of the failure: ${path.join(workdir, 'failure.png')})`);
  await browser.close();
  process.exit(1);
}
await browser.close();
