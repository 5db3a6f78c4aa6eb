// wechat-fanout console: the charts view, drawn as plain SVG from /console/charts (the store's
// per-minute counts, so the whole deployment's): callbacks per minute by outcome, and per
// target its deliveries and failures, its attempts' p50/p99 and its backlog. Read again every
// 10 s while shown, and drawn again to the width of their box when the window changes. Uses
// console.js's helpers ($, el, api): loaded after it.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const charts = { minutes: 60, data: null, error: '' };
const COLORS = {
  accepted: '#1a7f37', duplicate: '#8c959f', rejected: '#cf222e',
  delivered: '#1a7f37', failed: '#cf222e', p50_ms: '#0969da', p99_ms: '#9a6700',
  pending: '#8250df', oldest_s: '#bc4c00',
};

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

// A round top for the y axis: 1, 2 or 5 times a power of ten, at least `max`.
function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= max);
}

// One chart: `series` of per-minute values (null: nothing that minute), as stacked bars
// (`bars`) or as lines. Each bar or point carries its series, value and minute for a look
// (a tooltip) and for the tests.
function drawChart(name, minutes, series, bars, unit, width) {
  const W = Math.max(200, Math.round(width)), H = 150, L = 44, R = 8, T = 10, B = 20;
  const n = minutes.length;
  const totals = minutes.map((_, i) => bars
    ? series.reduce((sum, s) => sum + (s.values[i] || 0), 0)
    : Math.max(0, ...series.map((s) => s.values[i] ?? 0)));
  const top = niceMax(Math.max(0, ...totals));
  const x = (i) => L + (i * (W - L - R)) / n;
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'data-chart': name, class: 'chart' });
  chart.append(
    svg('line', { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: '#d0d7de' }),
    svg('line', { x1: L, y1: y(top), x2: W - R, y2: y(top), stroke: '#eaeef2' }),
    svg('text', { x: L - 4, y: y(top) + 4, 'text-anchor': 'end', class: 'axis' }, unit ? t(unit, { n: top }) : String(top)),
    svg('text', { x: L - 4, y: y(0) + 4, 'text-anchor': 'end', class: 'axis' }, '0'),
    svg('text', { x: L, y: H - 4, class: 'axis' }, hhmm(minutes[0])),
    svg('text', { x: W - R, y: H - 4, 'text-anchor': 'end', class: 'axis' }, hhmm(minutes[n - 1])),
  );
  const label = (s, i, v) => `${hhmm(minutes[i])} ${t(`chart.${s.name}`)}: ${unit ? t(unit, { n: Math.round(v) }) : v}`;
  if (bars) {
    const width = Math.max(1, (W - L - R) / n - 1);
    const base = minutes.map(() => 0);
    for (const s of series) {
      s.values.forEach((v, i) => {
        if (!v) return;
        chart.append(svg('rect', { x: x(i), y: y(base[i] + v), width, height: y(base[i]) - y(base[i] + v), fill: COLORS[s.name], 'data-series': s.name, 'data-value': v, 'data-minute': minutes[i] },
          svg('title', {}, label(s, i, v))));
        base[i] += v;
      });
    }
  } else {
    const mid = (W - L - R) / n / 2;
    for (const s of series) {
      const points = s.values.map((v, i) => (v == null ? null : [x(i) + mid, y(v), v, i])).filter(Boolean);
      if (points.length > 1) chart.append(svg('polyline', { points: points.map(([px, py]) => `${px},${py}`).join(' '), fill: 'none', stroke: COLORS[s.name], 'stroke-width': 1.5 }));
      for (const [px, py, v, i] of points) {
        chart.append(svg('circle', { cx: px, cy: py, r: 2, fill: COLORS[s.name], 'data-series': s.name, 'data-value': v, 'data-minute': minutes[i] },
          svg('title', {}, label(s, i, v))));
      }
    }
  }
  return chart;
}

// A minute as the axes name it: hours and minutes.
const hhmm = (ms) => new Date(ms).toLocaleTimeString(i18n.lang, { hour: '2-digit', minute: '2-digit', hour12: false });

// A chart's box: its title and legend now, the chart itself once the box is on the page and
// its width is known (`draw`).
function chartBox(title, name, minutes, series, bars, unit) {
  const legend = el('div', { class: 'legend' }, ...series.map((s) => el('span', { 'data-series': s.name, class: `key-${s.name}` }, t(`chart.${s.name}`))));
  const box = el('figure', { class: 'chart-box' }, el('figcaption', {}, t(title)), legend);
  box.draw = () => box.append(drawChart(name, minutes, series, bars, unit, box.clientWidth - 18));
  return box;
}

function drawCharts() {
  const view = $('#charts');
  const data = charts.data;
  $('#charts-status').textContent = charts.error ? t('d.failed', { error: charts.error }) : '';
  $('#charts-status').hidden = !charts.error;
  if (!data) return;
  const m = data.minutes;
  const c = data.callbacks;
  const boxes = [chartBox('chart.callbacks', 'callbacks', m,
    ['accepted', 'duplicate', 'rejected'].map((name) => ({ name, values: c[name] })), true, null)];
  for (const target of data.targets) {
    const key = `${target.account}/${target.target}`;
    const s = (...names) => names.map((name) => ({ name, values: target[name] }));
    boxes.push(el('section', { class: 'target-charts', 'data-target': key },
      el('h3', {}, key),
      el('div', { class: 'chart-row' },
        chartBox('chart.deliveries', `deliveries:${key}`, m, s('delivered', 'failed'), true, null),
        chartBox('chart.latency', `latency:${key}`, m, s('p50_ms', 'p99_ms'), false, 'unit.ms'),
        chartBox('chart.backlog', `backlog:${key}`, m, s('pending'), false, null),
        chartBox('chart.oldest', `oldest:${key}`, m, s('oldest_s'), false, 'unit.s'))));
  }
  view.replaceChildren(...boxes);
  for (const box of view.querySelectorAll('figure.chart-box')) box.draw();
}

async function loadCharts() {
  try {
    charts.data = await api('GET', `/console/charts?minutes=${charts.minutes}`);
    charts.error = '';
  } catch (e) {
    charts.error = e.message;
  }
  drawCharts();
}

// Drawn again to the new width, once the window has stopped changing.
let resized = null;
window.addEventListener('resize', () => {
  clearTimeout(resized);
  resized = setTimeout(() => { if (!$('#view-charts').hidden) drawCharts(); }, 150);
});

$('#charts-span').addEventListener('change', (event) => {
  charts.minutes = Number(event.target.value) || 60;
  loadCharts();
});
