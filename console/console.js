// wechat-fanout console: plain JavaScript, no build step, no external requests.
// Reads the admin API and the event stream (/console/events) of the server that served it.
// Its words come from i18n.js (t), a message's fields from message.js (messageView).
'use strict';

const $ = (selector) => document.querySelector(selector);
const state = { status: 'stream.connecting', statusClass: '', csrf: '', showContent: false, stream: null, rows: new Map(), early: new Map(), view: 'live', letter: null, timer: null };
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

const time = (ms) => ms ? new Date(ms).toLocaleTimeString(i18n.lang, { hour12: false }) : '-';
const dateTime = (ms) => ms ? new Date(ms).toLocaleString(i18n.lang, { hour12: false }) : '-';
// A live row's time: the date too when it is not today's (stored rows go back days).
const when = (ms) => ms && new Date(ms).toDateString() !== new Date().toDateString() ? dateTime(ms) : time(ms);
const kind = (type, event) => [type, event].filter(Boolean).join(' / ') || '-';

async function api(method, path) {
  const response = await fetch(path, { method, credentials: 'same-origin', headers: { 'X-Console-Csrf': state.csrf } });
  if (response.status === 401) { showLogin(t('login.ended')); throw new Error('401'); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- session -------------------------------------------------------------------------------

async function start() {
  const response = await fetch('/console/session', { credentials: 'same-origin' }).catch(() => null);
  if (!response) { setStatus('stream.offline', 'down'); setTimeout(start, 2000); return; }
  if (response.status === 401) { showLogin(''); return; }
  const info = await response.json();
  state.csrf = info.csrf;
  state.showContent = info.show_content;
  $('#logout').hidden = !info.login_required;
  state.instanceName = info.instance_name;
  $('#instance').textContent = t('instance', { name: info.instance_name });
  $('#instance').hidden = false;
  document.querySelectorAll('.content-col').forEach((c) => { c.hidden = !state.showContent; });
  $('#login').hidden = true;
  $('#tabs').hidden = false;
  $('#stream-status').hidden = false;
  show(state.view);
  connect();
  // history.js comes after this script: if it is not there yet, it starts itself. After
  // connect(): a callback stored meanwhile comes from the stream, not missed in between.
  if (typeof openHistory === 'function') openHistory();
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
  $('#login-error').textContent = response ? t('login.wrong', { status: response.status }) : t('login.down');
});

$('#logout').addEventListener('click', async () => {
  await fetch('/console/logout', { method: 'POST', credentials: 'same-origin' });
  showLogin(t('login.out'));
});

// ---- views ---------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll('#tabs button')) button.classList.toggle('active', button.dataset.view === view);
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${view}`;
  clearInterval(state.timer);
  if (view === 'targets') { loadTargets(); state.timer = setInterval(loadTargets, 2000); }
  if (view === 'dead') loadDead();
  if (view === 'charts') { loadCharts(); state.timer = setInterval(loadCharts, 10000); }
}
for (const button of document.querySelectorAll('#tabs button')) button.addEventListener('click', () => show(button.dataset.view));

// The stream's state in the header, by its key in i18n.js.
function setStatus(key, cls) {
  state.status = key;
  state.statusClass = cls;
  const status = $('#stream-status');
  status.textContent = t(key);
  status.className = `status ${cls || ''}`;
}

// ---- live view -----------------------------------------------------------------------------

function connect() {
  if (state.stream) state.stream.close();
  const stream = new EventSource('/console/events');
  state.stream = stream;
  stream.onopen = () => setStatus('stream.live', 'live');
  stream.onerror = () => {
    setStatus('stream.reconnecting', 'down');
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
    case 'answered': { const row = state.rows.get(event.callback); if (row) setAnswer(row, event.answer); break; }
    case 'duplicate': addRow(event, 'duplicate', ['answer.duplicate'], []); break;
    case 'rejected': addRow(event, 'rejected', ['answer.rejected', { reason: event.reason }], []); break;
    case 'attempt': setJob(event.job, attemptState(event), event); break;
    case 'replayed': if (event.job != null) setJob(event.job, 'pending', { note: 'replayed' }); break;
    case 'dropped': {
      state.dropped = (state.dropped || 0) + event.count;
      showDropped();
      break;
    }
    default: break;
  }
}

function showDropped() {
  const notice = $('#dropped');
  notice.textContent = t('live.dropped', { n: state.dropped });
  notice.hidden = !state.dropped;
}

const attemptState = (event) => event.outcome === 'retrying' ? 'retrying' : event.outcome;

function addCallback(event) {
  // Listed from the store before the stream brought it: the same row, given the jobs' ids.
  const stored = state.rows.get(event.callback);
  if (stored) { adoptJobs(stored, event.jobs); return; }
  addRow(event, 'callback', null, event.jobs);
  for (const job of event.jobs) applyEarly(job.job);
}

// An attempt that came before its job's row: shown now.
function applyEarly(job) {
  const early = state.early.get(job);
  if (early) { setJob(job, early.state, early.detail); state.early.delete(job); }
}

// A stored row's pills by target name take the jobs' ids the stream names, so that their
// attempts reach them (a stored delivered job has no id; the fallback pills have none either).
function adoptJobs(row, jobs) {
  for (const job of jobs) {
    if (row.jobs.has(job.job)) continue;
    let span = [...row.tr.querySelectorAll('.job')].find((s) => s.dataset.target === job.target && !s.dataset.job);
    if (!span) { span = el('span', { class: 'job', 'data-target': job.target }); row.tr.querySelector('.job-list').append(span); }
    span.dataset.job = job.job;
    row.jobs.set(job.job, span);
    state.rows.set(`job:${job.job}`, row);
    if (span.dataset.state === 'unknown' || !span.dataset.state) showJob(span, 'pending', {});
    applyEarly(job.job);
  }
  applyFilter(row.tr);
}

// What WeChat got, in words: `relayed` and the rest are the server's names; `success` is the
// body WeChat got, the same in every language.
function answerText(answer) {
  if (!answer) return '…';
  if (Array.isArray(answer)) return t(answer[0], answer[1]);
  return ['relayed', 'success'].includes(answer) ? t(`answer.${answer}`) : answer;
}

function setAnswer(row, answer) {
  row.answerValue = answer;
  row.answer.textContent = answerText(answer);
}

function addRow(event, cls, answer, jobs) {
  const row = makeRow(event, cls, answer, jobs);
  $('#live-table tbody').prepend(row.tr);
  trimLive();
  applyFilter(row.tr);
  return row;
}

function trimLive() {
  const body = $('#live-table tbody');
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
}

// A live row, not yet in the table: `jobs` are `{job, target}`, with `state` for a stored
// callback's (its `job` null when delivered: no attempt will come for it).
function makeRow(event, cls, answer, jobs) {
  $('#live-empty').hidden = true;
  const cell = (label, attrs, ...children) => el('td', { ...attrs, 'data-label': label }, ...children);
  const answerCell = cell('col.answer', { class: 'answer' });
  const list = el('div', { class: 'job-list' });
  const cells = cell('col.targets', { class: 'jobs' }, list);
  const tr = el('tr', { class: cls, 'data-account': event.account, 'data-callback': event.callback ?? '' },
    cell('col.time', { class: 'mono' }, when(event.at_ms)),
    cell('col.account', {}, event.account),
    cell('col.kind', {}, cls === 'rejected' ? '-' : kind(event.msg_type, event.event)),
    cell('col.msgid', { class: 'mono' }, event.msg_id || '-'),
    answerCell, cells);
  const row = { tr, answer: answerCell, jobs: new Map(), event };
  tr.row = row;
  setAnswer(row, answer);
  for (const job of jobs) {
    const span = el('span', { class: 'job', 'data-target': job.target });
    list.append(span);
    if (job.job != null) {
      span.dataset.job = job.job;
      row.jobs.set(job.job, span);
      state.rows.set(`job:${job.job}`, row);
    }
    showJob(span, job.state || 'pending', {});
  }
  if (state.showContent) {
    const content = cls === 'callback' ? contentView(event) : '';
    tr.append(cell('col.content', { class: 'content' }, content));
  }
  labelRow(tr);
  if (cls === 'callback' || cls === 'stored') state.rows.set(event.callback, row);
  return row;
}

// The message of a callback event as fields, its text one click away; the sender above them
// when the message does not name it (a WeChat Pay resource names no openid).
function contentView(event) {
  const view = messageView(event.content || '');
  const named = view.querySelector('dd[data-field=FromUserName]');
  if (event.from && !named) view.prepend(el('div', { class: 'mono from' }, event.from));
  return view;
}

// The labels a narrow screen shows before each cell of a row (see console.css).
function labelRow(tr) {
  for (const td of tr.querySelectorAll('td[data-label]')) td.dataset.caption = t(td.dataset.label);
}

function setJob(job, jobState, detail) {
  const row = state.rows.get(`job:${job}`);
  if (!row) { state.early.set(job, { state: jobState, detail }); return; }
  showJob(row.jobs.get(job), jobState, detail);
  applyFilter(row.tr);
}

// One target's cell: its state, and when it was delivered or is tried next (a stored state
// comes without those).
function showJob(cell, jobState, detail) {
  cell.dataset.state = jobState;
  cell.job = { state: jobState, detail };
  let text = `${cell.dataset.target}: ${t(`state.${jobState}`)}`;
  if (jobState === 'delivered' && detail.at_ms) text += t('job.delivered', { status: detail.status ?? '', time: time(detail.at_ms) });
  if (jobState === 'retrying' && detail.attempt) text += t('job.retrying', { attempt: detail.attempt, next: time(detail.next_at_ms) });
  if (jobState === 'dead' && detail.attempt) text += t('job.dead', { attempt: detail.attempt });
  if (jobState === 'pending' && detail.note) text += ` (${t(`job.${detail.note}`)})`;
  cell.textContent = text;
  cell.title = detail.error || '';
}

// The live rows again in the language just picked.
function relabelLive() {
  for (const tr of document.querySelectorAll('#live-table tbody tr')) {
    labelRow(tr);
    setAnswer(tr.row, tr.row.answerValue);
    for (const cell of tr.querySelectorAll('.job')) showJob(cell, cell.job.state, cell.job.detail);
    const content = tr.querySelector('td.content');
    if (content && tr.classList.contains('callback')) content.replaceChildren(contentView(tr.row.event));
  }
  showDropped();
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
    el('td', {}, el('button', { type: 'button', className: 'open-letter', onclick: () => openLetter(l.id) }, t('d.open'))))));
}

// One dead letter in full: its fields, with content shown the message as fields, and the request
// as the target gets it (open at once when there is no message to read).
async function openLetter(id) {
  let letter;
  try { letter = await api('GET', `/console/dead-letters/${id}`); } catch (e) { return note(e.message); }
  state.letter = id;
  $('#letter-id').textContent = id;
  const fields = [['f.account', letter.account], ['f.target', letter.target], ['col.kind', kind(letter.msg_type, letter.event)],
    ['d.callback', letter.callback], ['d.received', dateTime(letter.received_at_ms)], ['d.died', dateTime(letter.died_at_ms)],
    ['d.attempts', letter.attempts], ['d.last_status', letter.last_status ?? '-'], ['t.last_error', letter.last_error || '-']];
  $('#letter-fields').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', {}, t(k)), el('dd', {}, String(v))]));
  const request = letter.request;
  const lines = [`${request.method} ?${request.query}`, ...request.headers.map(([k, v]) => `${k}: ${v}`), '', request.body];
  if (request.decrypted) lines.push('', t('d.decrypted'), request.decrypted);
  $('#letter-request').textContent = lines.join('\n');
  const message = state.showContent ? messageView(request.decrypted || request.body, false) : null;
  const readable = Boolean(message && message.querySelector('dl.fields'));
  $('#letter-message-fields').replaceChildren(...(readable ? [message] : []));
  $('#letter-message').hidden = !readable;
  $('#letter-raw').open = !readable;
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
  try { const result = await api(method, path); note(done(result)); } catch (e) { note(t('d.failed', { error: e.message })); }
  loadDead();
}

const replayed = (r) => t('d.replayed', { n: r.replayed }) + (r.not_configured ? t('d.not_configured', { n: r.not_configured }) : '');
const purged = (r) => t('d.purged', { n: r.purged });
$('#dead-filters').addEventListener('submit', (event) => { event.preventDefault(); loadDead(); });
$('#letter-close').addEventListener('click', () => { $('#letter').hidden = true; });
$('#letter-replay').addEventListener('click', () => { $('#letter').hidden = true; act('POST', `/dead-letters/${state.letter}/replay`, replayed); });
$('#letter-purge').addEventListener('click', () => confirmThen(t('d.confirm_purge_one', { id: state.letter }),
  () => { $('#letter').hidden = true; act('DELETE', `/dead-letters/${state.letter}`, purged); }));
$('#dead-replay-matching').addEventListener('click', () => {
  const filter = deadFilter(false);
  const scope = filter.toString() ? t('d.matching', { filter }) : t('d.all');
  confirmThen(t('d.confirm_replay', { scope }), () => act('POST', `/dead-letters/replay?${filter}`, replayed));
});
$('#dead-purge-matching').addEventListener('click', () => {
  const filter = deadFilter(false);
  const all = !filter.toString();
  const scope = all ? t('d.all') : t('d.matching_letters', { filter });
  if (all) filter.set('all', 'true');
  confirmThen(t('d.confirm_purge', { scope }), () => act('DELETE', `/dead-letters?${filter}`, purged));
});

// ---- language ------------------------------------------------------------------------------

$('#lang').value = i18n.lang;
$('#lang').addEventListener('change', () => {
  setLang($('#lang').value);
  if (state.instanceName != null) $('#instance').textContent = t('instance', { name: state.instanceName });
  setStatus(state.status, state.statusClass);
  relabelLive();
  if (typeof relabelHistory === 'function') relabelHistory();
  if (typeof drawCharts === 'function') drawCharts();
  if (!$('#view-targets').hidden) loadTargets();
  if (!$('#view-dead').hidden) loadDead();
  if (!$('#letter').hidden && state.letter != null) openLetter(state.letter);
});

start();
