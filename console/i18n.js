// wechat-fanout console: its words in English and Simplified Chinese, and the choice between them.
// The language is the one the visitor picked on the page (kept in localStorage), else the first of
// the browser's languages (navigator.languages) that the console speaks, else English.
'use strict';

const LANGS = ['en', 'zh-CN'];
const LANG_KEY = 'wechat-fanout.console.lang';

// `{name}` in a text is replaced by that parameter.
const WORDS = {
  en: {
    'title': 'wechat-fanout console',
    'tab.live': 'Live', 'tab.targets': 'Targets', 'tab.dead': 'Dead letters',
    'instance': 'instance {name}', 'instance.title': 'The instance serving this page (server.instance_name)',
    'lang.title': 'Language',
    'stream.connecting': 'connecting…', 'stream.live': 'live', 'stream.reconnecting': 'reconnecting…', 'stream.offline': 'offline',
    'logout': 'Log out',
    'login.title': 'Sign in', 'login.text': 'This console needs the admin token (admin.token).',
    'login.placeholder': 'admin token', 'login.button': 'Sign in',
    'login.wrong': 'Wrong token ({status})', 'login.down': 'The server does not answer',
    'login.ended': 'Your session ended: sign in again.', 'login.out': 'Signed out.',
    'f.account': 'Account', 'f.target': 'Target', 'f.state': 'State', 'f.any': 'any', 'f.clear': 'Clear',
    'state.pending': 'pending', 'state.delivered': 'delivered', 'state.retrying': 'retrying', 'state.dead': 'dead',
    'state.rejected': 'rejected',
    'col.time': 'Time', 'col.account': 'Account', 'col.kind': 'Type / event', 'col.msgid': 'MsgId', 'col.answer': 'Answer',
    'col.targets': 'Targets', 'col.content': 'Message',
    'live.waiting': 'Waiting for callbacks…',
    'live.dropped': '{n} events dropped: this page could not keep up. Rows may be missing; the targets and dead letters views are complete.',
    'answer.relayed': 'relayed', 'answer.success': 'success', 'answer.duplicate': 'resent copy', 'answer.rejected': 'rejected: {reason}',
    'job.delivered': ' {status} · {time}', 'job.retrying': ' (attempt {attempt}, next {next})', 'job.dead': ' (attempt {attempt})',
    'job.replayed': 'replayed',
    'unit.ms': '{n} ms', 'unit.s': '{n} s', 'unit.min': '{n} min', 'unit.min_s': '{m} min {s} s', 'unit.h': '{n} h', 'unit.h_min': '{h} h {m} min',
    'backfill.since': 'Backfill since', 'backfill.since.title': 'A time ago (30m, 6h, 2d), at most store.delivered_retention_secs',
    'backfill.hint': 'then a target\'s Backfill button queues the stored callbacks of that window its filters take and it never had; nobody else gets anything',
    'backfill.button': 'Backfill', 'backfill.bad': 'Backfill since: a time ago, like 30m, 6h or 2d.',
    'backfill.confirm': 'Queue for {account}/{target} the callbacks of the last {since} it never had?',
    'backfill.done': 'Backfill of {account}/{target}: queued {queued}; skipped {already} already queued, {filtered} not for it by its filters',
    'backfill.unknown': ', {n} stored by an older build', 'backfill.unreadable': ', {n} unreadable with the account\'s key',
    'backfill.failed': 'Backfill failed: {error}',
    't.pending': 'Pending', 't.in_flight': 'In flight', 't.dead': 'Dead', 't.oldest': 'Oldest pending',
    't.window': 'Gives up after', 't.window.title': 'How long a failing delivery is retried before it becomes a dead letter (at the earliest)',
    't.delivered': 'Delivered 1 min / 5 min', 't.failed': 'Failed 1 min / 5 min', 't.circuit': 'Circuit', 't.last_error': 'Last error',
    't.attempts': '{window} ({n} attempts)', 't.open': 'open ({s} s)', 't.closed': 'closed',
    't.listeners': ' · listen, {n} clients', 't.listener': ' · listen, 1 client', 't.listeners.title': 'listen target: clients connected to the deployment',
    'cfg.title': 'As configured', 'cfg.url': 'URL', 'cfg.filters': 'Filters', 'cfg.replies': 'Replies to WeChat', 'cfg.more': 'Also',
    'cfg.no_filters': 'everything', 'cfg.none': '-', 'cfg.users': '{n} users', 'cfg.user': '1 user', 'cfg.users.hashed': 'as the logs name them (keyed hashes): {ids}',
    'cfg.listed_only': '{route} (listed senders only)', 'cfg.shadow': 'shadow of {target}: its answers are compared, never sent to WeChat',
    'cfg.rate': 'at most {n} deliveries a second', 'cfg.listen': 'listen target: its clients connect to {path}; a job waits {backlog} for one',
    'cfg.late': 'late replies, sent through the customer-service API', 'cfg.url.title': 'Passwords and query values are <redacted>',
    'routes.title': 'Routing: who answers WeChat', 'routes.route': 'Route', 'routes.owner': 'Owner', 'routes.for': 'For',
    'routes.everyone': 'everyone', 'routes.listed': '{users}, before everyone else',
    'routes.unclaimed': 'any other callback: no owner, WeChat gets success', 'routes.pay': 'WeChat Pay: no passive reply',
    'routes.none': 'no reply owner: WeChat gets success for every callback', 'routes.any': '* (anything else)',
    'd.died_since': 'Died since', 'd.until': 'until', 'd.limit': 'Limit', 'd.search': 'Search', 'd.replay_matching': 'Replay matching',
    'd.purge_matching': 'Purge matching', 'd.id': 'Id', 'd.received': 'Received', 'd.died': 'Died', 'd.attempts': 'Attempts',
    'd.status': 'Status', 'd.open': 'Open', 'd.empty': 'No dead letters.', 'd.letter': 'Dead letter', 'd.replay': 'Replay',
    'd.purge': 'Purge', 'd.close': 'Close', 'd.request': 'Request', 'd.raw': 'Raw request', 'd.message': 'Message',
    'd.at': 'At', 'd.error': 'Error', 'd.callback': 'Callback', 'd.last_status': 'Last status', 'd.decrypted': '-- decrypted --',
    'd.replayed': 'Replayed {n}', 'd.not_configured': '; {n} not replayed (target not configured)', 'd.purged': 'Purged {n}',
    'd.failed': 'Failed: {error}', 'd.all': 'ALL dead letters', 'd.matching': 'matching {filter}',
    'd.confirm_replay': 'Replay {scope}?', 'd.confirm_purge_one': 'Purge dead letter {id}? It cannot be replayed afterwards.',
    'd.confirm_purge': 'Purge {scope}? This cannot be undone.', 'd.matching_letters': 'dead letters matching {filter}',
    'confirm.yes': 'Yes', 'confirm.no': 'Cancel',
    'msg.raw': 'Raw {format}', 'msg.unreadable': 'Not a message the console can read: shown as received.',
    'h.title': 'Stored callbacks', 'h.user': 'User openid',
    'h.user.title': 'An openid (or WeCom UserID), matched against the keyed hash the store keeps of each sender; never stored or shown',
    'h.since': 'Received since', 'h.reset': 'Latest', 'h.routed': 'Queued for', 'h.older': 'Older',
    'h.callback': 'Callback', 'h.answer': 'The answer WeChat got', 'h.failed': 'Failed attempts',
    'h.none': 'No stored callback matches.', 'h.nobody': 'no target', 'h.no_answer': 'success (no reply was relayed)',
    'h.all_delivered': 'Every job was delivered.', 'state.in_flight': 'in flight',
    'live.stored': 'stored', 'live.stored.title': 'Received before this page opened: open it for the answer WeChat got',
    'state.unknown': 'queued',
    'tab.charts': 'Charts', 'chart.span': 'Over the last', 'chart.hour': 'hour', 'chart.6h': '6 hours', 'chart.day': '24 hours',
    'chart.hint': 'every instance\'s, per minute, from the store; the last minute is still filling',
    'chart.callbacks': 'Callbacks per minute', 'chart.accepted': 'accepted', 'chart.duplicate': 'resent copies', 'chart.rejected': 'rejected',
    'chart.deliveries': 'Deliveries per minute', 'chart.delivered': 'delivered', 'chart.failed': 'failed',
    'chart.latency': 'Attempt duration', 'chart.p50_ms': 'p50', 'chart.p99_ms': 'p99',
    'chart.backlog': 'Backlog', 'chart.pending': 'jobs not delivered yet',
    'chart.oldest': 'Oldest pending', 'chart.oldest_s': 'age of the oldest job',
    'h.state': 'State for it', 'h.instance': 'Accepted by', 'h.instance_unknown': 'unknown (an older build)',
  },
  'zh-CN': {
    'title': 'wechat-fanout 控制台',
    'tab.live': '实时', 'tab.targets': '目标', 'tab.dead': '死信',
    'instance': '实例 {name}', 'instance.title': '提供本页面的实例（server.instance_name）',
    'lang.title': '语言',
    'stream.connecting': '连接中…', 'stream.live': '已连接', 'stream.reconnecting': '重新连接中…', 'stream.offline': '离线',
    'logout': '退出登录',
    'login.title': '登录', 'login.text': '此控制台需要管理令牌（admin.token）。',
    'login.placeholder': '管理令牌', 'login.button': '登录',
    'login.wrong': '令牌错误（{status}）', 'login.down': '服务器无响应',
    'login.ended': '会话已结束，请重新登录。', 'login.out': '已退出登录。',
    'f.account': '账号', 'f.target': '目标', 'f.state': '状态', 'f.any': '全部', 'f.clear': '清空',
    'state.pending': '待投递', 'state.delivered': '已投递', 'state.retrying': '重试中', 'state.dead': '已成死信',
    'state.rejected': '已拒绝',
    'col.time': '时间', 'col.account': '账号', 'col.kind': '类型 / 事件', 'col.msgid': 'MsgId', 'col.answer': '给微信的应答',
    'col.targets': '目标', 'col.content': '消息',
    'live.waiting': '等待回调…',
    'live.dropped': '丢弃了 {n} 个事件：本页面处理不过来。可能缺少若干行；“目标”和“死信”视图是完整的。',
    'answer.relayed': '已转发应答', 'answer.success': 'success', 'answer.duplicate': '重发的副本', 'answer.rejected': '已拒绝：{reason}',
    'job.delivered': ' {status} · {time}', 'job.retrying': '（第 {attempt} 次尝试，下次 {next}）', 'job.dead': '（第 {attempt} 次尝试）',
    'job.replayed': '已重放',
    'unit.ms': '{n} 毫秒', 'unit.s': '{n} 秒', 'unit.min': '{n} 分钟', 'unit.min_s': '{m} 分 {s} 秒', 'unit.h': '{n} 小时', 'unit.h_min': '{h} 小时 {m} 分',
    'backfill.since': '补发范围', 'backfill.since.title': '多久以前（30m、6h、2d），最长为 store.delivered_retention_secs',
    'backfill.hint': '然后点某个目标的“补发”按钮：把这段时间内已存储、该目标的过滤条件接收但它从未收到的回调排队发给它；其他目标不受影响',
    'backfill.button': '补发', 'backfill.bad': '补发范围：写一个时长，例如 30m、6h 或 2d。',
    'backfill.confirm': '把最近 {since} 内 {account}/{target} 从未收到的回调排队发给它？',
    'backfill.done': '{account}/{target} 补发：排队 {queued} 条；跳过已排队的 {already} 条、按过滤条件不属于它的 {filtered} 条',
    'backfill.unknown': '、旧版本存储的 {n} 条', 'backfill.unreadable': '、用账号的密钥无法解开的 {n} 条',
    'backfill.failed': '补发失败：{error}',
    't.pending': '待投递', 't.in_flight': '投递中', 't.dead': '死信', 't.oldest': '最早待投递',
    't.window': '放弃时限', 't.window.title': '投递一直失败时，最早多久之后不再重试、成为死信',
    't.delivered': '成功 1 分钟 / 5 分钟', 't.failed': '失败 1 分钟 / 5 分钟', 't.circuit': '熔断', 't.last_error': '最近错误',
    't.attempts': '{window}（{n} 次尝试）', 't.open': '已熔断（{s} 秒）', 't.closed': '正常',
    't.listeners': ' · 监听，{n} 个客户端', 't.listener': ' · 监听，1 个客户端', 't.listeners.title': '监听目标：连接到本部署的客户端数',
    'cfg.title': '配置', 'cfg.url': '地址', 'cfg.filters': '过滤条件', 'cfg.replies': '负责被动回复', 'cfg.more': '其他',
    'cfg.no_filters': '全部接收', 'cfg.none': '-', 'cfg.users': '{n} 个用户', 'cfg.user': '1 个用户', 'cfg.users.hashed': '日志中的名字（带密钥的哈希）：{ids}',
    'cfg.listed_only': '{route}（仅限所列用户）', 'cfg.shadow': '{target} 的影子目标：其应答只用于比较，不会发给微信',
    'cfg.rate': '每秒最多投递 {n} 次', 'cfg.listen': '监听目标：客户端连接 {path}；任务最多等待客户端 {backlog}',
    'cfg.late': '迟到的回复，通过客服消息接口发送', 'cfg.url.title': '密码和查询参数的值显示为 <redacted>',
    'routes.title': '路由：由谁回复微信', 'routes.route': '路由', 'routes.owner': '回复目标', 'routes.for': '适用于',
    'routes.everyone': '所有用户', 'routes.listed': '{users}，优先于其他规则',
    'routes.unclaimed': '其他回调：无人负责，微信收到 success', 'routes.pay': '微信支付：没有被动回复',
    'routes.none': '没有负责回复的目标：每个回调微信都收到 success', 'routes.any': '*（其余所有）',
    'd.died_since': '成为死信，从', 'd.until': '到', 'd.limit': '条数上限', 'd.search': '查询', 'd.replay_matching': '重放匹配的死信',
    'd.purge_matching': '清除匹配的死信', 'd.id': '编号', 'd.received': '接收时间', 'd.died': '成为死信', 'd.attempts': '尝试次数',
    'd.status': '状态码', 'd.open': '打开', 'd.empty': '没有死信。', 'd.letter': '死信', 'd.replay': '重放',
    'd.purge': '清除', 'd.close': '关闭', 'd.request': '请求', 'd.raw': '原始请求', 'd.message': '消息',
    'd.at': '时间', 'd.error': '错误', 'd.callback': '回调', 'd.last_status': '最后状态码', 'd.decrypted': '-- 解密后 --',
    'd.replayed': '已重放 {n} 条', 'd.not_configured': '；{n} 条未重放（目标已不在配置中）', 'd.purged': '已清除 {n} 条',
    'd.failed': '失败：{error}', 'd.all': '全部死信', 'd.matching': '符合 {filter} 的死信',
    'd.confirm_replay': '重放{scope}？', 'd.confirm_purge_one': '清除死信 {id}？清除后无法再重放。',
    'd.confirm_purge': '清除{scope}？此操作无法撤销。', 'd.matching_letters': '符合 {filter} 的死信',
    'confirm.yes': '确定', 'confirm.no': '取消',
    'msg.raw': '原始 {format}', 'msg.unreadable': '控制台无法解析此消息，按收到的原样显示。',
    'h.title': '已存储的回调', 'h.user': '用户 openid',
    'h.user.title': '输入 openid（或企业微信 UserID），与存储中每个发送者的加密哈希比对；既不存储也不显示',
    'h.since': '接收时间起', 'h.reset': '最新', 'h.routed': '已排队给', 'h.older': '更早',
    'h.callback': '回调', 'h.answer': '微信收到的应答', 'h.failed': '失败的尝试',
    'h.none': '没有匹配的已存储回调。', 'h.nobody': '无目标', 'h.no_answer': 'success（未转发回复）',
    'h.all_delivered': '所有任务均已投递。', 'state.in_flight': '投递中',
    'live.stored': '已存储', 'live.stored.title': '在本页面打开之前收到：打开查看微信收到的应答',
    'state.unknown': '已排队',
    'tab.charts': '图表', 'chart.span': '时间范围', 'chart.hour': '最近 1 小时', 'chart.6h': '最近 6 小时', 'chart.day': '最近 24 小时',
    'chart.hint': '所有实例的数据，按分钟汇总，来自存储；最后一分钟仍在累计',
    'chart.callbacks': '每分钟回调数', 'chart.accepted': '已接收', 'chart.duplicate': '重发副本', 'chart.rejected': '已拒绝',
    'chart.deliveries': '每分钟投递', 'chart.delivered': '已投递', 'chart.failed': '失败',
    'chart.latency': '投递耗时', 'chart.p50_ms': 'p50', 'chart.p99_ms': 'p99',
    'chart.backlog': '积压', 'chart.pending': '尚未投递的任务',
    'chart.oldest': '最早待投递', 'chart.oldest_s': '最早任务的等待时间',
    'h.state': '该目标的状态', 'h.instance': '接收实例', 'h.instance_unknown': '未知（由旧版本接收）',
  },
};

// The language to show: the one picked on this browser, else the browser's, else English.
function chooseLang() {
  let picked = null;
  try { picked = localStorage.getItem(LANG_KEY); } catch { /* storage disabled */ }
  if (LANGS.includes(picked)) return picked;
  for (const lang of navigator.languages || [navigator.language || '']) {
    const lower = String(lang).toLowerCase();
    if (lower.startsWith('zh')) return 'zh-CN';
    if (lower.startsWith('en')) return 'en';
  }
  return 'en';
}

const i18n = { lang: chooseLang() };

// The text of `key` in the current language, its `{name}`s filled from `params`.
function t(key, params) {
  const text = WORDS[i18n.lang][key] ?? WORDS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (all, name) => (params && name in params ? String(params[name]) : all));
}

// Fills the page's fixed words: `data-i18n` (text), `data-i18n-title`, `data-i18n-placeholder`.
function translatePage() {
  document.documentElement.lang = i18n.lang;
  document.title = t('title');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-title]')) node.title = t(node.dataset.i18nTitle);
  for (const node of document.querySelectorAll('[data-i18n-placeholder]')) node.placeholder = t(node.dataset.i18nPlaceholder);
}

// Switches the language and remembers it on this browser.
function setLang(lang) {
  if (!LANGS.includes(lang)) return;
  i18n.lang = lang;
  try { localStorage.setItem(LANG_KEY, lang); } catch { /* storage disabled: for this page only */ }
  translatePage();
}

translatePage();
