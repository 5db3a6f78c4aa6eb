// wechat-fanout console: the targets view: each target's queues and outcomes, how it is
// configured, and each account's routing table (who answers WeChat for which route).
// Uses the helpers of console.js ($, el, api, time, confirmThen) and the words of i18n.js.
'use strict';

// A duration as a person reads it: 850 ms, 42 s, 3 min 5 s, 24 h 47 min.
function span(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return t('unit.ms', { n: Math.max(0, Math.round(ms)) });
  if (s < 60) return t('unit.s', { n: s });
  if (s < 3600) return s % 60 ? t('unit.min_s', { m: Math.floor(s / 60), s: s % 60 }) : t('unit.min', { n: s / 60 });
  const m = Math.floor((s % 3600) / 60);
  return m ? t('unit.h_min', { h: Math.floor(s / 3600), m }) : t('unit.h', { n: Math.floor(s / 3600) });
}
function age(ms) { return span(Math.max(0, ms)); }

async function loadTargets() {
  let targets;
  let accounts;
  try { [targets, accounts] = await Promise.all([api('GET', '/console/targets'), api('GET', '/console/routes')]); } catch { return; }
  $('#targets-table tbody').replaceChildren(...targets.map(targetRow));
  $('#config-table tbody').replaceChildren(...targets.map(configRow));
  $('#routes-table tbody').replaceChildren(...accounts.flatMap(routeRows));
}

function targetRow(target) {
  const recent = target.recent;
  const listeners = target.listeners == null ? ''
    : el('span', { class: 'listeners', title: t('t.listeners.title') }, target.listeners === 1 ? t('t.listener') : t('t.listeners', { n: target.listeners }));
  const open = target.breaker === 'open';
  return el('tr', { 'data-target': target.target },
    el('td', {}, target.account),
    el('td', {}, target.target, listeners),
    el('td', { class: 'pending' }, target.pending), el('td', {}, target.in_flight), el('td', { class: 'dead' }, target.dead),
    el('td', { class: 'oldest' }, target.oldest_pending_ms == null ? '-' : age(Date.now() - target.oldest_pending_ms)),
    el('td', { class: 'window', title: target.retry_window.text },
      t('t.attempts', { window: span(target.retry_window.earliest_ms), n: target.retry_window.attempts })),
    el('td', {}, `${recent.delivered_1m} / ${recent.delivered_5m}`),
    el('td', {}, `${recent.failed_1m} / ${recent.failed_5m}`),
    el('td', { class: open ? 'breaker-open' : '' }, open ? t('t.open', { s: Math.ceil(target.breaker_open_ms / 1000) }) : t('t.closed')),
    el('td', { class: 'mono' }, recent.last_error ? `${time(recent.last_error_at_ms)} ${recent.last_error}` : '-'),
    el('td', {}, el('button', { type: 'button', class: 'backfill', onclick: () => backfill(target.account, target.target) }, t('backfill.button'))));
}

// Senders as the server lets the page show them: in clear with admin.show_content, else a count
// and the keyed hashes log lines carry.
function usersText(users) {
  const count = users.count === 1 ? t('cfg.user') : t('cfg.users', { n: users.count });
  if (!users.ids.length) return count;
  return users.in_clear ? `${count}: ${users.ids.join(', ')}` : `${count}; ${t('cfg.users.hashed', { ids: users.ids.join(', ') })}`;
}

// How a target is configured: its URL (secrets redacted by the server), filters, the routes whose
// reply it owns, and the rest that changes what it gets (shadow, pace, listen).
function configRow(target) {
  const filters = (target.filters || []).map((f) => el('div', { class: 'filter', 'data-filter': f.key },
    el('span', { class: 'key' }, `${f.key}: `), f.users ? usersText(f.users) : f.values.join(', ')));
  const replies = (target.replies_to || []).map((r) => el('div', { class: 'route' },
    r.listed_users_only ? t('cfg.listed_only', { route: r.route }) : r.route));
  const also = [];
  if (target.shadow_of) also.push(t('cfg.shadow', { target: target.shadow_of }));
  if (target.rate_limit_per_sec != null) also.push(t('cfg.rate', { n: target.rate_limit_per_sec }));
  if (target.kind === 'listen') also.push(t('cfg.listen', { path: target.url, backlog: span((target.listen_backlog_s || 0) * 1000) }));
  if (target.kind === 'late_replies') also.push(t('cfg.late'));
  return el('tr', { 'data-target': target.target, 'data-account': target.account },
    el('td', {}, target.account), el('td', {}, target.target),
    el('td', { class: 'mono url' }, target.url ?? '-'),
    el('td', { class: 'filters-cell' }, ...(filters.length ? filters : [t('cfg.no_filters')])),
    el('td', { class: 'replies' }, ...(replies.length ? replies : [t('cfg.none')])),
    el('td', { class: 'also' }, ...(also.length ? also.map((a) => el('div', {}, a)) : ['-'])));
}

// An account's routing table: one row per route and owner, the most specific route first; what
// happens to the callbacks no route claims.
function routeRows(account) {
  const rows = account.routes.map((r) => el('tr', { 'data-account': account.account, 'data-route': r.route, 'data-owner': r.owner },
    el('td', {}, account.account), el('td', { class: 'mono' }, r.route === '*' ? t('routes.any') : r.route),
    el('td', { class: 'owner' }, r.owner),
    el('td', {}, r.users ? t('routes.listed', { users: usersText(r.users) }) : t('routes.everyone'))));
  let note = null;
  if (account.pay) note = t('routes.pay');
  else if (!account.routes.length) note = t('routes.none');
  else if (account.unclaimed_success) note = t('routes.unclaimed');
  if (note) rows.push(el('tr', { 'data-account': account.account, class: 'unclaimed' }, el('td', {}, account.account), el('td', { colSpan: 3, class: 'empty' }, note)));
  return rows;
}

// `30m`, `6h`, `2d`, `90s` → milliseconds, or null.
function ago(text) {
  const m = /^\s*(\d+)\s*(s|m|h|d)\s*$/.exec(text);
  return m ? Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2]] : null;
}

function backfill(account, target) {
  const result = $('#backfill-result');
  const since = ago($('#backfill-since').value);
  const say = (text) => { result.textContent = text; result.hidden = false; };
  if (since == null) { say(t('backfill.bad')); return; }
  confirmThen(t('backfill.confirm', { account, target, since: $('#backfill-since').value.trim() }), async () => {
    const path = `/targets/${encodeURIComponent(account)}/${encodeURIComponent(target)}/backfill?since_ms=${Date.now() - since}`;
    try {
      const r = await api('POST', path);
      say(t('backfill.done', { account, target, queued: r.queued, already: r.already, filtered: r.filtered }) +
        (r.unknown ? t('backfill.unknown', { n: r.unknown }) : '') + (r.unreadable ? t('backfill.unreadable', { n: r.unreadable }) : '') +
        (i18n.lang === 'zh-CN' ? '。' : '.'));
    } catch (e) { say(t('backfill.failed', { error: e.message })); }
    loadTargets();
  });
}

