// wechat-fanout console: the store behind the live view. The live table opens with the most
// recent stored callbacks (so a reload is not empty), each target's pill in its stored state;
// under it the stored callbacks a page at a time ("Older"), searched by MsgId, user, type or
// event and time; a callback's detail (each target's state and failed attempts, the answer
// WeChat got) from /callbacks/{id}. The user typed is sent to the server, which hashes it; the
// page never shows one. Uses the helpers of console.js ($, el, api, dateTime, kind, state,
// makeRow, …): loaded after it.
'use strict';

const hist = { params: null, next: null, rows: [], loading: false };
// Stored callbacks the live view opens with: the first page, as the search table's.
const LIVE_STORED = 50;

// Both at sign-in (and again when the session starts over): the live rows and the table.
function openHistory() {
  return Promise.all([loadLiveStored(), searchHistory()]);
}

// The newest stored callbacks as live rows, those the stream already brought left as they are.
// A page may come back short, even empty, with more after it: a few more are asked for then.
async function loadLiveStored() {
  let before = null;
  let got = 0;
  try {
    for (let tries = 0; tries < 5 && got < LIVE_STORED; tries++) {
      const params = new URLSearchParams({ limit: String(LIVE_STORED - got) });
      if (before) params.set('before', before);
      const page = await api('GET', `/console/history?${params}`);
      for (const entry of page.callbacks) addStoredRow(entry);
      got += page.callbacks.length;
      before = page.next;
      if (!before) break;
    }
  } catch { /* the search table below says what failed */ }
}

// A stored target's state as the live view names it; `routed` (a store without `targets`)
// only names them.
const STORED_STATES = { delivered: 'delivered', pending: 'pending', failing: 'retrying', dead: 'dead' };
function storedJobs(entry) {
  if (entry.targets) return entry.targets.map((j) => ({ job: j.job, target: j.target, state: STORED_STATES[j.state] || 'unknown' }));
  return (entry.routed || []).map((target) => ({ job: null, target, state: 'unknown' }));
}

function addStoredRow(entry) {
  if (state.rows.has(entry.id)) return;
  const event = { at_ms: entry.received_at_ms, account: entry.account, callback: entry.id, msg_type: entry.msg_type, event: entry.event, msg_id: entry.msg_id };
  const jobs = storedJobs(entry);
  const row = makeRow(event, 'stored', null, jobs);
  // The answer WeChat got is in the callback's detail, not in the page: a button opens it.
  const open = el('button', { type: 'button', className: 'open-stored', 'data-i18n-title': 'live.stored.title', title: t('live.stored.title'),
    onclick: async () => { await openStored(entry.id); $('#stored').scrollIntoView({ block: 'nearest' }); } });
  row.answer.replaceChildren(open);
  row.answer = open;
  setAnswer(row, ['live.stored']);
  placeStored(row.tr);
  for (const job of jobs) if (job.job != null) applyEarly(job.job);
  trimLive();
  applyFilter(row.tr);
}

// Newest first, whatever came first: before the first row older than it.
function placeStored(tr) {
  const { at_ms: at, callback: id } = tr.row.event;
  const older = [...$('#live-table tbody').rows].find((r) => {
    const e = r.row.event;
    return e.at_ms < at || (e.at_ms === at && (e.callback ?? 0) < id);
  });
  $('#live-table tbody').insertBefore(tr, older || null);
}

// The search as the form says it (empty fields are no filter).
function historyParams() {
  const params = new URLSearchParams();
  const set = (name, id) => { const v = $(id).value.trim(); if (v) params.set(name, v); };
  set('account', '#history-account');
  set('msg_id', '#history-msgid');
  set('user', '#history-user');
  set('type', '#history-type');
  set('target', '#history-target');
  set('state', '#history-state');
  set('instance', '#history-instance');
  const since = $('#history-since').value;
  const until = $('#history-until').value;
  if (since) params.set('since_ms', String(new Date(since).getTime()));
  if (until) params.set('until_ms', String(new Date(until).getTime()));
  params.set('limit', '50');
  return params;
}

// The first page of a search (or of everything).
function searchHistory() {
  hist.params = historyParams();
  hist.next = null;
  hist.rows = [];
  $('#history-table tbody').replaceChildren();
  return loadHistoryPage();
}

// The next page: older than the last. A page may come back short, even empty, with more
// after it (the store looks at a bounded number of callbacks a call): then the next is asked
// for at once, a few times.
async function loadHistoryPage() {
  if (hist.loading) return;
  hist.loading = true;
  try {
    for (let tries = 0; tries < 5; tries++) {
      const params = new URLSearchParams(hist.params);
      if (hist.next) params.set('before', hist.next);
      const page = await api('GET', `/console/history?${params}`);
      hist.next = page.next;
      for (const entry of page.callbacks) addHistoryRow(entry);
      if (page.callbacks.length || !page.next) break;
    }
    showHistoryStatus('');
  } catch (e) {
    showHistoryStatus(e.message);
  } finally {
    hist.loading = false;
  }
}

function showHistoryStatus(error) {
  const status = $('#history-status');
  status.textContent = error ? t('d.failed', { error }) : (hist.rows.length ? '' : t('h.none'));
  status.hidden = !status.textContent;
  $('#history-older').hidden = !hist.next;
}

function addHistoryRow(entry) {
  hist.rows.push(entry);
  $('#history-table tbody').append(historyRow(entry));
}

function historyRow(entry) {
  const cell = (label, attrs, ...children) => el('td', { ...attrs, 'data-label': label, 'data-caption': t(label) }, ...children);
  const routed = entry.routed ? (entry.routed.join(', ') || t('h.nobody')) : '-';
  return el('tr', { 'data-callback': entry.id },
    cell('d.received', { class: 'mono' }, dateTime(entry.received_at_ms)),
    cell('col.account', {}, entry.account),
    cell('col.kind', {}, kind(entry.msg_type, entry.event)),
    cell('col.msgid', { class: 'mono' }, entry.msg_id || '-'),
    cell('h.routed', {}, routed),
    el('td', {}, el('button', { type: 'button', className: 'open-callback', onclick: () => openStored(entry.id) }, t('d.open'))));
}

// The rows again in the language just picked.
function relabelHistory() {
  $('#history-table tbody').replaceChildren(...hist.rows.map(historyRow));
  showHistoryStatus('');
  if (!$('#stored').hidden && hist.open != null) openStored(hist.open);
}

// One stored callback in full.
async function openStored(id) {
  let cb;
  try { cb = await api('GET', `/callbacks/${id}`); } catch (e) { return showHistoryStatus(e.message); }
  hist.open = id;
  $('#stored-id').textContent = id;
  const fields = [['f.account', cb.account], ['col.kind', kind(cb.msg_type, cb.event)], ['d.received', dateTime(cb.received_at_ms)], ['h.instance', cb.instance || t('h.instance_unknown')]];
  $('#stored-fields').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', {}, t(k)), el('dd', {}, String(v))]));
  const answer = cb.answer;
  $('#stored-answer').textContent = answer ? [answer.content_type || '', answer.body ?? ''].filter(Boolean).join('\n') : t('h.no_answer');
  $('#stored-jobs tbody').replaceChildren(...(cb.jobs.length ? cb.jobs.map((job) => el('tr', { 'data-job': job.id },
    el('td', {}, job.target), el('td', {}, t(`state.${job.state}`)), el('td', {}, job.attempts),
    el('td', {}, job.last_status ?? '-'), el('td', { class: 'mono' }, job.last_error || '-'),
    el('td', { class: 'mono' }, job.attempt_log.map((a) => `#${a.attempt} ${dateTime(a.at_ms)} ${a.status ?? ''} ${a.error || ''}`).join('\n') || '-'),
  )) : [el('tr', {}, el('td', { colSpan: 6 }, t('h.all_delivered')))]));
  const request = cb.request;
  const lines = [`${request.method} ?${request.query}`, ...request.headers.map(([k, v]) => `${k}: ${v}`), '', request.body];
  if (request.decrypted) lines.push('', t('d.decrypted'), request.decrypted);
  $('#stored-request').textContent = lines.join('\n');
  $('#stored').hidden = false;
}

$('#history-form').addEventListener('submit', (event) => { event.preventDefault(); searchHistory(); });
$('#history-reset').addEventListener('click', () => { $('#history-form').reset(); searchHistory(); });
$('#history-older').addEventListener('click', () => loadHistoryPage());
$('#stored-close').addEventListener('click', () => { $('#stored').hidden = true; hist.open = null; });
// Signed in before this script ran: the first page now.
if (state.csrf && hist.params === null) openHistory();
