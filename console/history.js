// wechat-fanout console: the stored callbacks under the live view, newest first from the store
// (so a reload is not empty), a page at a time ("Older"), searched by MsgId, user, type or
// event and time; a callback's detail (each target's state and failed attempts, the answer
// WeChat got) from /callbacks/{id}. The user typed is sent to the server, which hashes it; the
// page never shows one. Uses the helpers of console.js ($, el, api, dateTime, kind, state): loaded after it.
'use strict';

const hist = { params: null, next: null, rows: [], loading: false };

// The search as the form says it (empty fields are no filter).
function historyParams() {
  const params = new URLSearchParams();
  const set = (name, id) => { const v = $(id).value.trim(); if (v) params.set(name, v); };
  set('account', '#history-account');
  set('msg_id', '#history-msgid');
  set('user', '#history-user');
  set('type', '#history-type');
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
  const fields = [['f.account', cb.account], ['col.kind', kind(cb.msg_type, cb.event)], ['d.received', dateTime(cb.received_at_ms)]];
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
if (state.csrf && hist.params === null) searchHistory();
