// wechat-fanout console: plain JavaScript, no build step, no external requests.
// Reads the admin API and the event stream (/console/events) of the server that served it.
'use strict';

const $ = (selector) => document.querySelector(selector);
const state = { csrf: '', showContent: false, stream: null, rows: new Map(), early: new Map(), view: 'live', letter: null, timer: null };
const MAX_ROWS = 500;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child ?? '');
  return node;
}

const time = (ms) => ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : '-';
const dateTime = (ms) => ms ? new Date(ms).toLocaleString([], { hour12: false }) : '-';
const kind = (type, event) => [type, event].filter(Boolean).join(' / ') || '-';

async function api(method, path) {
  const response = await fetch(path, { method, credentials: 'same-origin', headers: { 'X-Console-Csrf': state.csrf } });
  if (response.status === 401) { showLogin('Your session ended: sign in again.'); throw new Error('401'); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- session -------------------------------------------------------------------------------

async function start() {
  const response = await fetch('/console/session', { credentials: 'same-origin' }).catch(() => null);
  if (!response) { setStatus('offline', 'down'); setTimeout(start, 2000); return; }
  if (response.status === 401) { showLogin(''); return; }
  const info = await response.json();
  state.csrf = info.csrf;
  state.showContent = info.show_content;
  $('#logout').hidden = !info.login_required;
  $('#instance').textContent = `instance ${info.instance_name}`;
  $('#instance').hidden = false;
  document.querySelectorAll('.content-col').forEach((c) => { c.hidden = !state.showContent; });
  $('#login').hidden = true;
  $('#tabs').hidden = false;
  $('#stream-status').hidden = false;
  show(state.view);
  connect();
}

function showLogin(message) {
  if (state.stream) { state.stream.close(); state.stream = null; }
  clearInterval(state.timer);
  document.querySelectorAll('.view').forEach((v) => { v.hidden = true; });
  $('#tabs').hidden = true;
  $('#stream-status').hidden = true;
  $('#instance').hidden = true;
  $('#logout').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#token').focus();
}

$('#login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('#login-error').textContent = '';
  const response = await fetch('/console/login', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: $('#token').value }),
  }).catch(() => null);
  $('#token').value = '';
  if (response && response.ok) { start(); return; }
  $('#login-error').textContent = response ? `Wrong token (${response.status})` : 'The server does not answer';
});

$('#logout').addEventListener('click', async () => {
  await fetch('/console/logout', { method: 'POST', credentials: 'same-origin' });
  showLogin('Signed out.');
});

// ---- views ---------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll('#tabs button')) button.classList.toggle('active', button.dataset.view === view);
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${view}`;
  clearInterval(state.timer);
  if (view === 'targets') { loadTargets(); state.timer = setInterval(loadTargets, 2000); }
  if (view === 'dead') loadDead();
}
for (const button of document.querySelectorAll('#tabs button')) button.addEventListener('click', () => show(button.dataset.view));

function setStatus(text, cls) {
  const status = $('#stream-status');
  status.textContent = text;
  status.className = `status ${cls || ''}`;
}

// ---- live view -----------------------------------------------------------------------------

function connect() {
  if (state.stream) state.stream.close();
  const stream = new EventSource('/console/events');
  state.stream = stream;
  stream.onopen = () => setStatus('live', 'live');
  stream.onerror = () => {
    setStatus('reconnecting…', 'down');
    // The browser retries by itself; a refused stream (401) is closed for good: check the session.
    if (stream.readyState === EventSource.CLOSED) { state.stream = null; setTimeout(start, 2000); }
  };
  stream.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    handle(event);
  };
}

function handle(event) {
  switch (event.kind) {
    case 'callback': addCallback(event); break;
    case 'answered': { const row = state.rows.get(event.callback); if (row) row.answer.textContent = event.answer; break; }
    case 'duplicate': addRow(event, 'duplicate', 'resent copy', []); break;
    case 'rejected': addRow(event, 'rejected', `rejected: ${event.reason}`, []); break;
    case 'attempt': setJob(event.job, attemptState(event), event); break;
    case 'replayed': if (event.job != null) setJob(event.job, 'pending', { note: 'replayed' }); break;
    case 'dropped': {
      const notice = $('#dropped');
      state.dropped = (state.dropped || 0) + event.count;
      notice.textContent = `${state.dropped} events dropped: this page could not keep up. Rows may be missing; the targets and dead letters views are complete.`;
      notice.hidden = false;
      break;
    }
    default: break;
  }
}

const attemptState = (event) => event.outcome === 'retrying' ? 'retrying' : event.outcome;

function addCallback(event) {
  const row = addRow(event, 'callback', '…', event.jobs);
  if (!row) return;
  for (const job of event.jobs) {
    const early = state.early.get(job.job);
    if (early) { setJob(job.job, early.state, early.detail); state.early.delete(job.job); }
  }
}

function addRow(event, cls, answer, jobs) {
  $('#live-empty').hidden = true;
  const answerCell = el('td', { class: 'answer' }, answer);
  const cells = el('td', { class: 'jobs' });
  const tr = el('tr', { class: cls, 'data-account': event.account, 'data-callback': event.callback ?? '' },
    el('td', { class: 'mono' }, time(event.at_ms)),
    el('td', {}, event.account),
    el('td', {}, cls === 'rejected' ? '-' : kind(event.msg_type, event.event)),
    el('td', { class: 'mono' }, event.msg_id || '-'),
    answerCell, cells);
  const row = { tr, answer: answerCell, jobs: new Map(), event };
  for (const job of jobs) {
    const cell = el('span', { class: 'job', 'data-job': job.job, 'data-target': job.target, 'data-state': 'pending' }, `${job.target}: pending`);
    cells.append(cell);
    row.jobs.set(job.job, cell);
    state.rows.set(`job:${job.job}`, row);
  }
  if (state.showContent) {
    const content = cls === 'callback' ? [event.from, event.content].filter(Boolean).join('\n') : '';
    tr.append(el('td', { class: 'mono content' }, el('pre', {}, content)));
  }
  if (cls === 'callback') state.rows.set(event.callback, row);
  const body = $('#live-table tbody');
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
  applyFilter(tr);
  return row;
}

function setJob(job, jobState, detail) {
  const row = state.rows.get(`job:${job}`);
  if (!row) { state.early.set(job, { state: jobState, detail }); return; }
  const cell = row.jobs.get(job);
  const target = cell.dataset.target;
  cell.dataset.state = jobState;
  let text = `${target}: ${jobState}`;
  if (jobState === 'delivered') text += ` ${detail.status ?? ''} · ${time(detail.at_ms)}`;
  if (jobState === 'retrying') text += ` (attempt ${detail.attempt}, next ${time(detail.next_at_ms)})`;
  if (jobState === 'dead') text += ` (attempt ${detail.attempt})`;
  if (jobState === 'pending' && detail.note) text += ` (${detail.note})`;
  cell.textContent = text;
  cell.title = detail.error || '';
  applyFilter(row.tr);
}

function applyFilter(tr) {
  const account = $('#live-account').value.trim();
  const target = $('#live-target').value.trim();
  const wanted = $('#live-state').value;
  const jobs = [...tr.querySelectorAll('.job')];
  let visible = !account || tr.dataset.account === account;
  if (target) visible = visible && jobs.some((j) => j.dataset.target === target);
  if (wanted === 'rejected') visible = visible && tr.classList.contains('rejected');
  else if (wanted) visible = visible && jobs.some((j) => j.dataset.state === wanted && (!target || j.dataset.target === target));
  tr.hidden = !visible;
}
for (const id of ['#live-account', '#live-target', '#live-state']) {
  $(id).addEventListener('input', () => document.querySelectorAll('#live-table tbody tr').forEach(applyFilter));
}
$('#live-clear').addEventListener('click', () => {
  $('#live-table tbody').replaceChildren();
  state.rows.clear();
  state.early.clear();
  $('#live-empty').hidden = false;
});

// ---- targets view --------------------------------------------------------------------------

// A duration as a person reads it: 850 ms, 42 s, 3 min 5 s, 24 h 47 min.
function span(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return `${Math.max(0, Math.round(ms))} ms`;
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  const m = Math.floor((s % 3600) / 60);
  return m ? `${Math.floor(s / 3600)} h ${m} min` : `${Math.floor(s / 3600)} h`;
}
function age(ms) { return span(Math.max(0, ms)); }

async function loadTargets() {
  let targets;
  try { targets = await api('GET', '/console/targets'); } catch { return; }
  const body = $('#targets-table tbody');
  body.replaceChildren(...targets.map((t) => el('tr', { 'data-target': t.target },
    el('td', {}, t.account),
    el('td', {}, t.target, t.listeners == null ? '' : el('span', { class: 'listeners', title: 'listen target: clients connected to the deployment' },
      ` · listen, ${t.listeners} ${t.listeners === 1 ? 'client' : 'clients'}`)),
    el('td', { class: 'pending' }, t.pending), el('td', {}, t.in_flight), el('td', { class: 'dead' }, t.dead),
    el('td', { class: 'oldest' }, t.oldest_pending_ms == null ? '-' : age(Date.now() - t.oldest_pending_ms)),
    el('td', { class: 'window', title: t.retry_window.text }, `${span(t.retry_window.earliest_ms)} (${t.retry_window.attempts} attempts)`),
    el('td', {}, `${t.recent.delivered_1m} / ${t.recent.delivered_5m}`),
    el('td', {}, `${t.recent.failed_1m} / ${t.recent.failed_5m}`),
    el('td', { class: t.breaker === 'open' ? 'breaker-open' : '' }, t.breaker === 'open' ? `open (${Math.ceil(t.breaker_open_ms / 1000)} s)` : 'closed'),
    el('td', { class: 'mono' }, t.recent.last_error ? `${time(t.recent.last_error_at_ms)} ${t.recent.last_error}` : '-'),
    el('td', {}, el('button', { type: 'button', class: 'backfill', onclick: () => backfill(t.account, t.target) }, 'Backfill')))));
}

// `30m`, `6h`, `2d`, `90s` → milliseconds, or null.
function ago(text) {
  const m = /^\s*(\d+)\s*(s|m|h|d)\s*$/.exec(text);
  return m ? Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2]] : null;
}

function backfill(account, target) {
  const result = $('#backfill-result');
  const span = ago($('#backfill-since').value);
  const say = (text) => { result.textContent = text; result.hidden = false; };
  if (span == null) { say('Backfill since: a time ago, like 30m, 6h or 2d.'); return; }
  confirmThen(`Queue for ${account}/${target} the callbacks of the last ${$('#backfill-since').value.trim()} it never had?`, async () => {
    const path = `/targets/${encodeURIComponent(account)}/${encodeURIComponent(target)}/backfill?since_ms=${Date.now() - span}`;
    try {
      const r = await api('POST', path);
      say(`Backfill of ${account}/${target}: queued ${r.queued}; skipped ${r.already} already queued, ${r.filtered} not for it by its filters` +
        (r.unknown ? `, ${r.unknown} stored by an older build` : '') + (r.unreadable ? `, ${r.unreadable} unreadable with the account's key` : '') + '.');
    } catch (e) { say(`Backfill failed: ${e.message}`); }
    loadTargets();
  });
}

// ---- dead letters view ---------------------------------------------------------------------

function deadFilter(withLimit) {
  const params = new URLSearchParams();
  const account = $('#dead-account').value.trim();
  const target = $('#dead-target').value.trim();
  if (account) params.set('account', account);
  if (target) params.set('target', target);
  const since = $('#dead-since').value;
  const until = $('#dead-until').value;
  if (since) params.set('since_ms', String(new Date(since).getTime()));
  if (until) params.set('until_ms', String(new Date(until).getTime()));
  if (withLimit && $('#dead-limit').value) params.set('limit', $('#dead-limit').value);
  return params;
}

async function loadDead() {
  let letters;
  try { letters = await api('GET', `/dead-letters?${deadFilter(true)}`); } catch (e) { return note(e.message); }
  $('#dead-empty').hidden = letters.length > 0;
  $('#dead-table tbody').replaceChildren(...letters.map((l) => el('tr', { 'data-letter': l.id },
    el('td', { class: 'mono' }, l.id), el('td', {}, l.account), el('td', {}, l.target),
    el('td', {}, kind(l.msg_type, l.event)), el('td', {}, dateTime(l.received_at_ms)), el('td', {}, dateTime(l.died_at_ms)),
    el('td', {}, l.attempts), el('td', {}, l.last_status ?? '-'), el('td', { class: 'mono' }, l.last_error || '-'),
    el('td', {}, el('button', { type: 'button', className: 'open-letter', onclick: () => openLetter(l.id) }, 'Open')))));
}

async function openLetter(id) {
  let letter;
  try { letter = await api('GET', `/console/dead-letters/${id}`); } catch (e) { return note(e.message); }
  state.letter = id;
  $('#letter-id').textContent = id;
  const fields = [['Account', letter.account], ['Target', letter.target], ['Type / event', kind(letter.msg_type, letter.event)],
    ['Callback', letter.callback], ['Received', dateTime(letter.received_at_ms)], ['Died', dateTime(letter.died_at_ms)],
    ['Attempts', letter.attempts], ['Last status', letter.last_status ?? '-'], ['Last error', letter.last_error || '-']];
  $('#letter-fields').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  const request = letter.request;
  const lines = [`${request.method} ?${request.query}`, ...request.headers.map(([k, v]) => `${k}: ${v}`), '', request.body];
  if (request.decrypted) lines.push('', '-- decrypted --', request.decrypted);
  $('#letter-request').textContent = lines.join('\n');
  $('#letter-attempts tbody').replaceChildren(...letter.attempt_log.map((a) => el('tr', {},
    el('td', {}, a.attempt), el('td', {}, dateTime(a.at_ms)), el('td', {}, a.status ?? '-'), el('td', { class: 'mono' }, a.error || '-'))));
  $('#letter').hidden = false;
}

function note(text) {
  const result = $('#dead-result');
  result.textContent = text;
  result.hidden = false;
}

function confirmThen(text, action) {
  $('#confirm-text').textContent = text;
  $('#confirm').hidden = false;
  $('#confirm-yes').onclick = () => { $('#confirm').hidden = true; action(); };
  $('#confirm-no').onclick = () => { $('#confirm').hidden = true; };
}

async function act(method, path, done) {
  try { const result = await api(method, path); note(done(result)); } catch (e) { note(`Failed: ${e.message}`); }
  loadDead();
}

const replayed = (r) => `Replayed ${r.replayed}` + (r.not_configured ? `; ${r.not_configured} not replayed (target not configured)` : '');
$('#dead-filters').addEventListener('submit', (event) => { event.preventDefault(); loadDead(); });
$('#letter-close').addEventListener('click', () => { $('#letter').hidden = true; });
$('#letter-replay').addEventListener('click', () => { $('#letter').hidden = true; act('POST', `/dead-letters/${state.letter}/replay`, replayed); });
$('#letter-purge').addEventListener('click', () => confirmThen(`Purge dead letter ${state.letter}? It cannot be replayed afterwards.`,
  () => { $('#letter').hidden = true; act('DELETE', `/dead-letters/${state.letter}`, (r) => `Purged ${r.purged}`); }));
$('#dead-replay-matching').addEventListener('click', () => {
  const filter = deadFilter(false);
  const scope = filter.toString() ? `matching ${filter}` : 'ALL dead letters';
  confirmThen(`Replay ${scope}?`, () => act('POST', `/dead-letters/replay?${filter}`, replayed));
});
$('#dead-purge-matching').addEventListener('click', () => {
  const filter = deadFilter(false);
  const all = !filter.toString();
  if (all) filter.set('all', 'true');
  confirmThen(`Purge ${all ? 'ALL dead letters' : `dead letters matching ${filter}`}? This cannot be undone.`,
    () => act('DELETE', `/dead-letters?${filter}`, (r) => `Purged ${r.purged}`));
});

start();
