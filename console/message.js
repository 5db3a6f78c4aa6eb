// wechat-fanout console: a message as fields people read (type, sender, content, event key…),
// with the text as received one click away. WeChat's messages are XML (DOMParser, in the browser:
// nothing is sent anywhere), a mini program's may be JSON, and WeChat Pay's decrypted resource is
// JSON. Only shown when the server sends content at all (admin.show_content).
'use strict';

// Known fields, in the order they are shown, with their labels; other fields follow by name.
const FIELD_LABELS = {
  en: {
    MsgType: 'Type', Event: 'Event', EventKey: 'Event key', FromUserName: 'From', ToUserName: 'To',
    CreateTime: 'Sent', Content: 'Content', MsgId: 'MsgId', MediaId: 'Media id', PicUrl: 'Picture URL',
    Format: 'Format', Recognition: 'Recognition', Title: 'Title', Description: 'Description', Url: 'URL',
    Location_X: 'Latitude', Location_Y: 'Longitude', Scale: 'Scale', Label: 'Place', Latitude: 'Latitude',
    Longitude: 'Longitude', Ticket: 'QR ticket', AgentID: 'App (AgentID)', InfoType: 'Info type',
    AuthorizerAppid: 'Authorizer', event_type: 'Event type', summary: 'Summary', out_trade_no: 'Order number',
    transaction_id: 'Transaction id', trade_state: 'Trade state', trade_state_desc: 'Trade state text',
    'amount.total': 'Amount (fen)', 'amount.currency': 'Currency', success_time: 'Paid at', refund_status: 'Refund status',
    out_refund_no: 'Refund number',
  },
  'zh-CN': {
    MsgType: '消息类型', Event: '事件', EventKey: '事件 KEY 值', FromUserName: '发送方', ToUserName: '接收方',
    CreateTime: '发送时间', Content: '内容', MsgId: '消息 ID', MediaId: '媒体 ID', PicUrl: '图片链接',
    Format: '语音格式', Recognition: '语音识别结果', Title: '标题', Description: '描述', Url: '链接',
    Location_X: '纬度', Location_Y: '经度', Scale: '缩放', Label: '地理位置', Latitude: '纬度',
    Longitude: '经度', Ticket: '二维码 ticket', AgentID: '应用 AgentID', InfoType: '通知类型',
    AuthorizerAppid: '授权方 AppID', event_type: '通知类型', summary: '回调摘要', out_trade_no: '商户订单号',
    transaction_id: '微信支付订单号', trade_state: '交易状态', trade_state_desc: '交易状态描述',
    'amount.total': '金额（分）', 'amount.currency': '币种', success_time: '支付完成时间', refund_status: '退款状态',
    out_refund_no: '商户退款单号',
  },
};
const FIELD_ORDER = Object.keys(FIELD_LABELS.en);
// The ciphertext of a compatible-mode body says nothing to a person.
const SKIPPED = new Set(['Encrypt']);
const MAX_FIELDS = 40;

// `text` as [format, [[name, value], …]], or null when it is neither XML nor JSON.
function readMessage(text) {
  const trimmed = (text || '').trim();
  let fields = null;
  let format = null;
  if (trimmed.startsWith('<')) {
    const doc = new DOMParser().parseFromString(trimmed, 'application/xml');
    if (doc.getElementsByTagName('parsererror').length === 0 && doc.documentElement) {
      fields = [];
      xmlLeaves(doc.documentElement, '', fields);
      format = 'XML';
    }
  } else if (trimmed.startsWith('{')) {
    try { fields = []; jsonLeaves(JSON.parse(trimmed), '', fields); format = 'JSON'; } catch { fields = null; }
  }
  if (!fields || fields.length === 0) return null;
  const rank = (name) => { const i = FIELD_ORDER.indexOf(name); return i < 0 ? FIELD_ORDER.length : i; };
  fields = fields.filter(([name]) => !SKIPPED.has(name));
  fields.sort((a, b) => rank(a[0]) - rank(b[0]));
  return [format, fields.slice(0, MAX_FIELDS)];
}

function xmlLeaves(node, prefix, out) {
  for (const child of node.children) {
    const name = prefix ? `${prefix}.${child.tagName}` : child.tagName;
    if (child.children.length) xmlLeaves(child, name, out);
    else out.push([name, child.textContent]);
    if (out.length > MAX_FIELDS) return;
  }
}

function jsonLeaves(value, prefix, out) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      jsonLeaves(inner, prefix ? `${prefix}.${key}` : key, out);
      if (out.length > MAX_FIELDS) return;
    }
  } else {
    out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : String(value)]);
  }
}

// A field's value as shown: WeChat's CreateTime (Unix seconds) as a date and time.
function fieldValue(name, value) {
  if (name === 'CreateTime' && /^\d{9,11}$/.test(value)) {
    return `${new Date(Number(value) * 1000).toLocaleString(i18n.lang, { hour12: false })} (${value})`;
  }
  return value;
}

// A node showing `text` as fields (a <dl>), with the text itself in a <details> one click away
// unless `withRaw` is false (the page shows it elsewhere). Unreadable text is shown as it is.
function messageView(text, withRaw = true) {
  const read = readMessage(text);
  const box = el('div', { class: 'message' });
  if (!read) {
    if (text) box.append(el('pre', { class: 'raw-text' }, text));
    return box;
  }
  const [format, fields] = read;
  const labels = FIELD_LABELS[i18n.lang] || FIELD_LABELS.en;
  const list = el('dl', { class: 'fields' });
  for (const [name, value] of fields) {
    list.append(el('dt', { title: name, 'data-field': name }, labels[name] || name),
      el('dd', { 'data-field': name }, fieldValue(name, value)));
  }
  box.append(list);
  if (withRaw) box.append(el('details', { class: 'raw' }, el('summary', {}, t('msg.raw', { format })), el('pre', {}, text)));
  return box;
}
