// The /calibration dashboard: polls /api/v1 and draws the storage documents as inline SVG.
'use strict';

const REFRESH_MS = 5000;
const TOKEN_KEY = 'model-feedback.api-token';
const BAND = [0.70, 0.90];
const PSI_LIMIT = 0.25;
const SHIFT_LIMIT = 0.20;
const QUANTILES = [
  { key: 'p10', nominal: 0.10 },
  { key: 'p50', nominal: 0.50 },
  { key: 'p90', nominal: 0.90 },
];

// ---- errors: shown on the page (and collected for the browser test) -------------------------

const errors = [];
function reportError(message) {
  errors.push(String(message));
  const box = document.getElementById('errors');
  if (!box) return;
  box.hidden = false;
  box.dataset.count = String(errors.length);
  box.textContent = 'Dashboard error: ' + errors.slice(-3).join(' | ');
}
window.addEventListener('error', (e) => {
  const target = e.target;
  if (target && target !== window && (target.src || target.href)) {
    reportError('cannot load ' + (target.src || target.href));
  } else {
    reportError(e.message || 'script error');
  }
}, true);
window.addEventListener('unhandledrejection', (e) => reportError(e.reason && e.reason.message || e.reason));
document.addEventListener('securitypolicyviolation', (e) => reportError('blocked by the content security policy: ' + e.violatedDirective));

// ---- small helpers --------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
const isNum = (x) => typeof x === 'number' && isFinite(x);
const fix = (x, d) => (isNum(x) ? x.toFixed(d) : '–');
const pct = (x, d = 1) => (isNum(x) ? (100 * x).toFixed(d) + '%' : '–');
const money = (x) => (isNum(x) ? x.toLocaleString('en-US', { maximumFractionDigits: 2, minimumFractionDigits: 2 }) : '–');
const signed = (x, d) => (isNum(x) ? (x > 0 ? '+' : '') + x.toFixed(d) : '–');
const r1 = (x) => Math.round(x * 10) / 10;

// A status as a badge: colour, a symbol and words, so it never rests on colour alone.
const STATUS = {
  ok: ['ok', '✓', 'ok'],
  healthy: ['ok', '✓', 'healthy'],
  warn_low: ['bad', '▼', 'warn low'],
  warn_high: ['warn', '▲', 'warn high'],
  insufficient_data: ['muted', '…', 'insufficient data'],
  firing: ['bad', '!', 'firing'],
  resolved: ['ok', '✓', 'resolved'],
  elsewhere: ['muted', '⇄', 'owned by another instance'],
};
function badge(status, label) {
  const [cls, sym, words] = STATUS[status] || ['muted', '?', status];
  return `<span class="badge ${cls}" title="${esc(status)}"><span aria-hidden="true">${sym}</span> ${esc(label ? label + ': ' + words : words)}</span>`;
}

// ---- token and API --------------------------------------------------------------------------

class AuthNeeded extends Error {}

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}

async function api(path) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = 'Bearer ' + t;
  const res = await fetch(path, { headers, cache: 'no-store' });
  if (res.status === 401) throw new AuthNeeded(t ? 'refused' : 'missing');
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(body && body.message ? body.message : 'HTTP ' + res.status);
    err.status = res.status;
    throw err;
  }
  return body;
}

function askForToken(refused) {
  $('token-form').hidden = false;
  $('token-error').hidden = !refused;
  $('picker').hidden = true;
  $('main').innerHTML = '';
  setLive('locked', 'needs the API token');
  $('token').focus();
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  try { sessionStorage.setItem(TOKEN_KEY, value); } catch (_) { /* private mode: kept for this page only */ }
  $('token-form').hidden = true;
  refreshNow();
});

// ---- state and refresh loop -----------------------------------------------------------------

const view = { tenant: new URLSearchParams(location.search).get('tenant'), list: [], docs: null, lastOk: null, timer: null, drawn: '' };

function setLive(kind, text) {
  const el = $('live');
  el.className = 'live ' + kind;
  el.textContent = text;
}

function severity(t) {
  const cal = t.status.calibration.tenant;
  let s = 0;
  if (t.status.performance.tenant === 'firing') s += 4;
  if (cal === 'warn_low' || cal === 'warn_high') s += 4;
  if (t.status.drift === 'firing') s += 2;
  return s;
}

function defaultTenant(list) {
  if (!list.length) return null;
  const worst = list.slice().sort((a, b) => severity(b) - severity(a))[0];
  return severity(worst) > 0 ? worst.tenant : list[0].tenant;
}

function tenantBadges(t) {
  const out = [];
  const cal = t.status.calibration.tenant || 'insufficient_data';
  if (cal !== 'ok') out.push(badge(cal, 'calibration'));
  if (t.status.performance.tenant === 'firing') out.push(badge('firing', 'degraded'));
  if (t.status.drift === 'firing') out.push(badge('firing', 'drift'));
  if (!out.length) out.push(badge('healthy'));
  if (t.owned === false) out.push(badge('elsewhere'));
  return out.join(' ');
}

function drawPicker() {
  const filter = $('filter').value.trim().toLowerCase();
  const items = view.list
    .filter((t) => !filter || t.tenant.includes(filter))
    .sort((a, b) => severity(b) - severity(a) || a.tenant.localeCompare(b.tenant))
    .map((t) => `<a class="tenant${t.tenant === view.tenant ? ' current' : ''}" href="?tenant=${encodeURIComponent(t.tenant)}" data-tenant="${esc(t.tenant)}"${t.tenant === view.tenant ? ' aria-current="page"' : ''}><span class="name">${esc(t.tenant)}</span> ${tenantBadges(t)}</a>`);
  $('tenants').innerHTML = items.join('') || '<p class="muted">No tenant matches.</p>';
  $('picker').hidden = view.list.length === 0;
}

$('filter').addEventListener('input', drawPicker);
$('tenants').addEventListener('click', (e) => {
  const a = e.target.closest('a[data-tenant]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey) return;
  e.preventDefault();
  view.tenant = a.dataset.tenant;
  history.pushState(null, '', '?tenant=' + encodeURIComponent(view.tenant));
  view.drawn = '';
  drawPicker();
  $('main').innerHTML = '<p class="muted">Loading ' + esc(view.tenant) + '…</p>';
  refreshNow();
});
window.addEventListener('popstate', () => {
  view.tenant = new URLSearchParams(location.search).get('tenant');
  view.drawn = '';
  refreshNow();
});

function refreshNow() {
  clearTimeout(view.timer);
  refresh();
}

async function refresh() {
  try {
    const list = await api('/api/v1/tenants');
    view.list = list.tenants;
    if (!view.tenant || !view.list.some((t) => t.tenant === view.tenant)) {
      const requested = view.tenant;
      if (requested && !view.list.length) view.tenant = requested;
      else if (!requested) view.tenant = defaultTenant(view.list);
    }
    drawPicker();
    if (!view.tenant) {
      $('main').innerHTML = '<section class="card"><h2>No tenant yet</h2><p>The storage directory holds no documents yet. They appear once the processor has folded records and written them (every few seconds while it runs).</p></section>';
    } else if (!view.list.some((t) => t.tenant === view.tenant)) {
      $('main').innerHTML = `<section class="card"><h2>No documents for ${esc(view.tenant)}</h2><p>The storage directory holds no documents for this tenant (yet). Pick one above.</p></section>`;
      view.drawn = '';
    } else {
      const base = '/api/v1/tenants/' + encodeURIComponent(view.tenant);
      const [performance, calibration, drift] = await Promise.all([
        api(base + '/performance'), api(base + '/calibration'), api(base + '/drift'),
      ]);
      view.docs = { performance, calibration, drift };
      const owned = (view.list.find((t) => t.tenant === view.tenant) || {}).owned;
      const key = JSON.stringify([view.docs, owned]);
      if (key !== view.drawn) {
        view.drawn = key;
        draw();
      }
    }
    view.lastOk = new Date();
    setLive('ok', 'live · updated ' + view.lastOk.toLocaleTimeString());
  } catch (e) {
    if (e instanceof AuthNeeded) {
      askForToken(e.message === 'refused');
      return; // the form's submit starts the loop again
    }
    const since = view.lastOk ? ' · last update ' + view.lastOk.toLocaleTimeString() : '';
    setLive('stale', 'stale: ' + e.message + since + ' (retrying)');
  }
  view.timer = setTimeout(refresh, REFRESH_MS);
}

// Redraw when the page's width changes. The ruler is an empty box as wide as the content, whose
// size nothing else changes, so redrawing inside the callback cannot loop; and a ResizeObserver
// runs before the next paint, so a rotated phone never shows charts at the old width.
let drawnWidth = 0;
new ResizeObserver((entries) => {
  const w = Math.round(entries[entries.length - 1].contentRect.width);
  if (w !== drawnWidth && view.docs) draw();
}).observe($('ruler'));

// ---- drawing --------------------------------------------------------------------------------

function draw() {
  const { performance: perf, calibration: cal, drift } = view.docs;
  const history = cal.history || [];
  const last = history[history.length - 1];
  const main = $('main');
  drawnWidth = Math.round($('ruler').getBoundingClientRect().width);
  const summary = view.list.find((t) => t.tenant === view.tenant);
  main.innerHTML = [
    headerCard(perf, cal, last, summary),
    last ? metersCard(cal, last) : emptyCard('Coverage', 'No calibration history yet: no forecast line has met its actual.'),
    history.length ? trendCard(cal) : '',
    last ? horizonCard(last) : '',
    driftCard(drift),
    performanceCard(perf),
  ].join('');
  // The charts are drawn at the width their box has, so that their text keeps its size.
  const fill = (id, svg) => {
    const box = $(id);
    if (box) box.innerHTML = svg(Math.max(260, box.clientWidth));
  };
  fill('trend-chart', (w) => trendSvg(cal, w));
  fill('drift-chart', (w) => driftSvg(drift.history, w));
}

function emptyCard(title, text) {
  return `<section class="card"><h2>${esc(title)}</h2><p class="muted">${esc(text)}</p></section>`;
}

function headerCard(perf, cal, last, summary) {
  const tags = perf.tags && perf.tags.length
    ? perf.tags.map((t) => `<code class="tag">${esc(t)}</code>`).join(' ')
    : '<span class="muted">none</span>';
  let headline;
  const status = last ? last.status : 'insufficient_data';
  if (status === 'warn_low') {
    headline = `<p class="alert bad"><strong>▼ Intervals too narrow.</strong> Only ${pct(last.coverage.p10_p90)} of actuals fell inside p10–p90 over the last ${cal.window_days} days (target ${pct(BAND[0], 0)}–${pct(BAND[1], 0)}, nominal 80%). The model is overconfident: widen its intervals or retrain.</p>`;
  } else if (status === 'warn_high') {
    headline = `<p class="alert warn"><strong>▲ Intervals too wide.</strong> ${pct(last.coverage.p10_p90)} of actuals fell inside p10–p90 over the last ${cal.window_days} days (target ${pct(BAND[0], 0)}–${pct(BAND[1], 0)}). The model is underconfident: its plans carry more risk margin than needed.</p>`;
  } else if (status === 'ok') {
    headline = `<p class="alert ok"><strong>✓ Calibrated.</strong> ${pct(last.coverage.p10_p90)} of actuals fell inside p10–p90 over the last ${cal.window_days} days, within the ${pct(BAND[0], 0)}–${pct(BAND[1], 0)} band.</p>`;
  } else {
    headline = `<p class="alert muted"><strong>… Not enough pairs yet</strong> to judge calibration (the rule needs 30 in the window).</p>`;
  }
  // A processor that no longer owns the tenant stopped keeping its documents current.
  const elsewhere = summary && summary.owned === false
    ? `<p class="alert muted"><strong>⇄ Owned by another instance.</strong> This tenant's partition is assigned to another instance of the consumer group, which keeps its documents current. Unless the two share this storage directory, what follows is as it stood when the partition moved (as_of ${esc(perf.as_of || '–')}): ask the instance that owns it.</p>`
    : '';
  return `<section class="card head">
    <div class="title-row"><h2>${esc(perf.tenant)}</h2><span class="asof">as_of <strong>${esc(perf.as_of || '–')}</strong></span></div>
    <div class="badges">${summary ? tenantBadges(summary) : ''}</div>
    ${elsewhere}
    ${headline}
    <p class="tags">active tags: ${tags}</p>
  </section>`;
}

// A ConfidenceMeter: the 0..1 scale, the nominal value (or the band), the Wilson interval as a
// bar and the observed coverage as a dot.
function meterSvg(value, ci, nominal, band, tone) {
  const W = 320, H = 58, L = 10, R = 10, y = 24;
  const x = (v) => L + Math.max(0, Math.min(1, v)) * (W - L - R);
  const parts = [`<svg class="meter-svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="observed ${fix(value, 3)} against nominal ${band ? band.join('–') : fix(nominal, 2)}">`];
  parts.push(`<rect x="${L}" y="${y - 3}" width="${W - L - R}" height="6" rx="3" class="track"/>`);
  if (band) {
    parts.push(`<rect x="${r1(x(band[0]))}" y="${y - 11}" width="${r1(x(band[1]) - x(band[0]))}" height="22" class="band"/>`);
  }
  parts.push(`<line x1="${r1(x(nominal))}" x2="${r1(x(nominal))}" y1="${y - 14}" y2="${y + 14}" class="nominal"/>`);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<text x="${r1(x(t))}" y="${H - 4}" class="tick" text-anchor="middle">${t}</text>`);
  }
  if (ci && isNum(ci[0]) && isNum(ci[1])) {
    parts.push(`<rect x="${r1(x(ci[0]))}" y="${y - 5}" width="${Math.max(2, r1(x(ci[1]) - x(ci[0])))}" height="10" rx="2" class="ci ${tone}"/>`);
  }
  if (isNum(value)) parts.push(`<circle cx="${r1(x(value))}" cy="${y}" r="6.5" class="dot ${tone}"/>`);
  parts.push('</svg>');
  return parts.join('');
}

function quantileMeter(q, entry) {
  const v = entry.coverage[q.key], ci = entry.ci[q.key];
  if (!isNum(v)) {
    return `<div class="meter muted"><h3>${q.key} <span class="nominal-label">nominal ${q.nominal.toFixed(2)}</span></h3><p class="muted">no ${q.key} in the forecasts</p></div>`;
  }
  const inside = ci && ci[0] <= q.nominal && q.nominal <= ci[1];
  const tone = inside ? 'ok' : 'warn';
  const verdict = inside
    ? '✓ consistent with nominal'
    : (v > q.nominal ? `▲ too many actuals below ${q.key}: it sits too high` : `▼ too few actuals below ${q.key}: it sits too low`);
  return `<div class="meter ${tone}" data-key="${q.key}">
    <h3>${q.key} <span class="nominal-label">nominal ${q.nominal.toFixed(2)}</span></h3>
    <p class="reading"><span class="value">${fix(v, 3)}</span> <span class="ci-text">[${fix(ci && ci[0], 2)}, ${fix(ci && ci[1], 2)}]</span> <span class="n">n ${entry.n}</span></p>
    ${meterSvg(v, ci, q.nominal, null, tone)}
    <p class="verdict ${tone}">${verdict}</p>
  </div>`;
}

function intervalMeter(entry) {
  const v = entry.coverage.p10_p90, ci = entry.ci.p10_p90;
  const status = entry.status;
  const tone = status === 'warn_low' ? 'bad' : status === 'warn_high' ? 'warn' : status === 'ok' ? 'ok' : 'muted';
  const verdict = {
    warn_low: '▼ WARN LOW: below the 0.70–0.90 band, intervals too narrow',
    warn_high: '▲ WARN HIGH: above the 0.70–0.90 band, intervals too wide',
    ok: '✓ inside the 0.70–0.90 band',
    insufficient_data: '… too few pairs to judge (needs 30)',
  }[status] || status;
  return `<div class="meter interval ${tone}" data-key="p10_p90">
    <h3>p10–p90 interval <span class="nominal-label">band 0.70–0.90 (nominal 0.80)</span></h3>
    <p class="reading"><span class="value">${fix(v, 3)}</span> <span class="ci-text">[${fix(ci && ci[0], 2)}, ${fix(ci && ci[1], 2)}]</span> <span class="n">n ${entry.n}</span></p>
    ${meterSvg(v, ci, 0.8, BAND, tone)}
    <p class="verdict ${tone}">${verdict}</p>
  </div>`;
}

function metersCard(cal, entry) {
  return `<section class="card" id="meters">
    <h2>Coverage against nominal <span class="sub">${cal.window_days}-day window ending ${esc(entry.as_of)} · n ${entry.n} pairs</span></h2>
    <div class="meters">${QUANTILES.map((q) => quantileMeter(q, entry)).join('')}${intervalMeter(entry)}</div>
    <p class="legend"><span class="key-dot"></span> observed coverage <span class="key-ci"></span> Wilson 95% interval <span class="key-nominal"></span> nominal <span class="key-band"></span> target band. Coverage of pNN: share of actuals at or below the forecast's pNN.</p>
  </section>`;
}

const SERIES = [
  { key: 'p10_p90', label: 'p10–p90', cls: 's-int' },
  { key: 'p90', label: 'p90', cls: 's-p90' },
  { key: 'p50', label: 'p50', cls: 's-p50' },
  { key: 'p10', label: 'p10', cls: 's-p10' },
];

function linePath(points) {
  let d = '', pen = false;
  for (const p of points) {
    if (!p) { pen = false; continue; }
    d += (pen ? 'L' : 'M') + r1(p[0]) + ' ' + r1(p[1]);
    pen = true;
  }
  return d;
}

function dateTicks(labels, count) {
  const n = labels.length;
  if (n <= 1) return n ? [0] : [];
  const step = Math.max(1, Math.round((n - 1) / (count - 1)));
  const ticks = [];
  for (let i = 0; i < n; i += step) ticks.push(i);
  if (ticks[ticks.length - 1] !== n - 1) {
    if (n - 1 - ticks[ticks.length - 1] < step / 2) ticks.pop();
    ticks.push(n - 1);
  }
  return ticks;
}

function trendSvg(cal, width) {
  const h = cal.history;
  const W = width, H = width < 500 ? 220 : 270, L = 38, R = 12, T = 12, B = 46;
  const n = h.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (1 - v) * (H - T - B);
  const s = [`<svg class="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="coverage over as_of dates">`];
  s.push(`<rect x="${L}" y="${r1(y(BAND[1]))}" width="${W - L - R}" height="${r1(y(BAND[0]) - y(BAND[1]))}" class="band"/>`);
  s.push(`<text x="${W - R - 4}" y="${r1(y(BAND[1]) + 12)}" class="band-label" text-anchor="end">target band 0.70–0.90</text>`);
  for (const v of [0, 0.1, 0.5, 0.9, 1]) {
    s.push(`<line x1="${L}" x2="${W - R}" y1="${r1(y(v))}" y2="${r1(y(v))}" class="${v === 0 || v === 1 ? 'axis' : 'grid'}"/>`);
    s.push(`<text x="${L - 6}" y="${r1(y(v) + 4)}" class="tick" text-anchor="end">${v}</text>`);
  }
  // The interval's Wilson band, then the four lines.
  const upper = [], lower = [];
  h.forEach((e, i) => {
    const ci = e.ci.p10_p90;
    if (ci) { upper.push([x(i), y(ci[1])]); lower.unshift([x(i), y(ci[0])]); }
  });
  if (upper.length > 1) s.push(`<path d="${linePath(upper.concat(lower))}Z" class="ci-area"/>`);
  for (const ser of SERIES.slice().reverse()) {
    const pts = h.map((e, i) => (isNum(e.coverage[ser.key]) ? [x(i), y(e.coverage[ser.key])] : null));
    s.push(`<path d="${linePath(pts)}" class="line ${ser.cls}"/>`);
  }
  // A strip of each day's status under the chart, with words in the legend.
  const sw = Math.max(1, (W - L - R) / Math.max(1, n));
  h.forEach((e, i) => {
    const cls = { ok: 'ok', warn_low: 'bad', warn_high: 'warn' }[e.status] || 'muted';
    s.push(`<rect x="${r1(x(i) - sw / 2)}" y="${H - B + 6}" width="${r1(sw + 0.3)}" height="8" class="strip ${cls}"><title>${esc(e.as_of)}: ${esc(e.status)}, p10–p90 ${fix(e.coverage.p10_p90, 3)}, n ${e.n}</title></rect>`);
  });
  for (const i of dateTicks(h.map((e) => e.as_of), Math.max(2, Math.min(7, Math.floor(W / 110))))) {
    s.push(`<text x="${r1(x(i))}" y="${H - 8}" class="tick" text-anchor="${i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle'}">${esc(h[i].as_of)}</text>`);
  }
  // Hover targets: one per day.
  h.forEach((e, i) => {
    s.push(`<rect x="${r1(x(i) - sw / 2)}" y="${T}" width="${r1(sw)}" height="${H - T - B}" class="hover"><title>${esc(e.as_of)} (n ${e.n}, ${esc(e.status)})\n${SERIES.map((q) => q.label + ' ' + fix(e.coverage[q.key], 3)).join('\n')}</title></rect>`);
  });
  s.push('</svg>');
  return s.join('');
}

function trendCard(cal) {
  const h = cal.history, n = h.length;
  const legend = SERIES.map((q) => `<span class="lg ${q.cls}"><span class="swatch"></span>${q.label}</span>`).join(' ');
  const warnDays = h.filter((e) => e.status === 'warn_low' || e.status === 'warn_high').length;
  return `<section class="card" id="trend">
    <h2>Coverage trend <span class="sub">each point: the ${cal.window_days}-day window ending that as_of date</span></h2>
    <div class="chart-wrap" id="trend-chart"></div>
    <p class="legend">${legend} <span class="lg band-key"><span class="swatch"></span>target band</span> <span class="lg ci-key"><span class="swatch"></span>p10–p90 Wilson 95%</span></p>
    <p class="legend">status strip: <span class="strip-key ok">✓ ok</span> <span class="strip-key bad">▼ warn low</span> <span class="strip-key warn">▲ warn high</span> <span class="strip-key muted">… insufficient data</span> · ${warnDays} of ${n} days outside the band</p>
  </section>`;
}

function miniBand(v) {
  const W = 90, H = 14, x = (t) => 2 + Math.max(0, Math.min(1, t)) * (W - 4);
  if (!isNum(v)) return '';
  const tone = v < BAND[0] ? 'bad' : v > BAND[1] ? 'warn' : 'ok';
  return `<svg class="mini" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" aria-hidden="true"><rect x="2" y="5" width="${W - 4}" height="4" rx="2" class="track"/><rect x="${r1(x(BAND[0]))}" y="1" width="${r1(x(BAND[1]) - x(BAND[0]))}" height="12" class="band"/><circle cx="${r1(x(v))}" cy="7" r="4" class="dot ${tone}"/></svg>`;
}

function horizonCard(entry) {
  const order = (k) => parseInt(k, 10);
  const rows = Object.keys(entry.by_horizon).sort((a, b) => order(a) - order(b)).map((k) => {
    const sc = entry.by_horizon[k];
    const cell = (q) => (isNum(sc.coverage[q]) ? `${fix(sc.coverage[q], 3)} <span class="ci-text">[${fix(sc.ci[q][0], 2)}, ${fix(sc.ci[q][1], 2)}]</span>` : '–');
    return `<tr class="${sc.status}"><th scope="row">${esc(k)} days</th><td class="num">${sc.n}</td><td>${badge(sc.status)}</td><td class="int">${cell('p10_p90')} ${miniBand(sc.coverage.p10_p90)}</td><td>${cell('p10')}</td><td>${cell('p50')}</td><td>${cell('p90')}</td></tr>`;
  });
  return `<section class="card" id="horizons">
    <h2>By forecast horizon <span class="sub">days between the plan's issue and the date forecast</span></h2>
    <div class="table-wrap"><table>
      <thead><tr><th>horizon</th><th class="num">n</th><th>status</th><th>p10–p90 (0.70–0.90)</th><th>p10 (0.10)</th><th>p50 (0.50)</th><th>p90 (0.90)</th></tr></thead>
      <tbody>${rows.join('')}</tbody>
    </table></div>
  </section>`;
}

function sparkline(values, limits, W, H) {
  const nums = values.filter(isNum);
  if (!nums.length) return '<span class="muted">no samples</span>';
  const max = Math.max(...nums, ...limits.filter(isNum)) * 1.1 || 1;
  const x = (i) => 3 + (values.length === 1 ? (W - 6) / 2 : (i * (W - 6)) / (values.length - 1));
  const y = (v) => H - 3 - (v / max) * (H - 6);
  const parts = [`<svg class="spark" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" aria-hidden="true">`];
  for (const l of limits) if (isNum(l)) parts.push(`<line x1="0" x2="${W}" y1="${r1(y(l))}" y2="${r1(y(l))}" class="limit"/>`);
  parts.push(`<path d="${linePath(values.map((v, i) => (isNum(v) ? [x(i), y(v)] : null)))}" class="line s-int"/>`);
  const lastI = values.length - 1;
  if (isNum(values[lastI])) parts.push(`<circle cx="${r1(x(lastI))}" cy="${r1(y(values[lastI]))}" r="2.5" class="dot-small"/>`);
  parts.push('</svg>');
  return parts.join('');
}

function driftCard(drift) {
  const h = (drift.history || []);
  if (!h.length) return emptyCard('Feature drift', 'No feature-importance event yet.');
  const last = h[h.length - 1];
  // Key features: those the latest event marks key, then any other seen with a PSI.
  const names = new Set(Object.keys(last.features).filter((f) => last.features[f].key));
  h.forEach((e) => Object.entries(e.features).forEach(([f, v]) => { if (isNum(v.psi)) names.add(f); }));
  const rows = [...names].sort((a, b) => (last.features[b] ? last.features[b].share : 0) - (last.features[a] ? last.features[a].share : 0)).map((f) => {
    const cur = last.features[f] || {};
    const psis = h.map((e) => (e.features[f] ? e.features[f].psi : null));
    const drifting = isNum(cur.psi) && cur.psi >= PSI_LIMIT && isNum(cur.psi_critical) && cur.psi > cur.psi_critical;
    return `<tr class="${drifting ? 'warn_low' : ''}"><th scope="row">${esc(f)}</th><td>${drifting ? badge('firing', 'PSI') : isNum(cur.psi) ? badge('ok') : '<span class="muted">no samples</span>'}</td><td class="num">${fix(cur.psi, 3)}</td><td class="num">${fix(cur.psi_critical, 3)}</td><td>${sparkline(psis, [PSI_LIMIT], 110, 26)}</td><td class="num">${pct(cur.share)}</td><td class="num">${pct(cur.baseline_share)}</td></tr>`;
  });
  const entered = last.top_k_entered && last.top_k_entered.length ? ' (' + last.top_k_entered.map(esc).join(', ') + ')' : '';
  return `<section class="card" id="drift">
    <h2>Feature drift <span class="sub">${h.length} events · latest ${esc(String(last.computed_at).slice(0, 10))} · ${badge(last.status)}</span></h2>
    <p class="facts">importance shift <strong>${fix(last.importance_shift, 3)}</strong> (limit 0.20) · spearman <strong>${fix(last.spearman, 2)}</strong> · top-5 churn <strong>${isNum(last.top_k_churn) ? last.top_k_churn : '–'}</strong>${entered}</p>
    <div class="chart-wrap" id="drift-chart"></div>
    <p class="legend">importance shift per event (total variation of the shares against the baseline); <span class="strip-key bad">! firing</span> <span class="strip-key ok">✓ ok</span></p>
    <div class="table-wrap"><table>
      <thead><tr><th>key feature</th><th>status</th><th class="num">PSI</th><th class="num">critical</th><th>PSI history (line: 0.25)</th><th class="num">share</th><th class="num">baseline</th></tr></thead>
      <tbody>${rows.join('')}</tbody>
    </table></div>
  </section>`;
}

// importance_shift over the events, with its limit.
function driftSvg(h, width) {
  const evaluated = h.filter((e) => isNum(e.importance_shift));
  const W = width, H = 150, L = 38, R = 12, T = 10, B = 30;
  const n = h.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const top = Math.max(0.5, ...evaluated.map((e) => e.importance_shift)) ;
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const s = [`<svg class="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="importance shift per event">`];
  for (const v of [0, SHIFT_LIMIT, top]) {
    s.push(`<line x1="${L}" x2="${W - R}" y1="${r1(y(v))}" y2="${r1(y(v))}" class="${v === SHIFT_LIMIT ? 'limit' : 'grid'}"/>`);
    s.push(`<text x="${L - 6}" y="${r1(y(v) + 4)}" class="tick" text-anchor="end">${fix(v, 2)}</text>`);
  }
  s.push(`<text x="${W - R - 4}" y="${r1(y(SHIFT_LIMIT) - 5)}" class="band-label" text-anchor="end">limit 0.20</text>`);
  s.push(`<path d="${linePath(h.map((e, i) => (isNum(e.importance_shift) ? [x(i), y(e.importance_shift)] : null)))}" class="line s-int"/>`);
  h.forEach((e, i) => {
    if (!isNum(e.importance_shift)) return;
    const cls = e.status === 'firing' ? 'bad' : 'ok';
    s.push(`<circle cx="${r1(x(i))}" cy="${r1(y(e.importance_shift))}" r="4" class="dot ${cls}"><title>${esc(e.computed_at)}: shift ${fix(e.importance_shift, 3)}, spearman ${fix(e.spearman, 2)}, ${esc(e.status)}</title></circle>`);
  });
  for (const i of dateTicks(h.map((e) => e.computed_at), Math.max(2, Math.min(6, Math.floor(W / 120))))) {
    s.push(`<text x="${r1(x(i))}" y="${H - 8}" class="tick" text-anchor="${i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle'}">${esc(String(h[i].computed_at).slice(0, 10))}</text>`);
  }
  s.push('</svg>');
  return s.join('');
}

function performanceCard(perf) {
  const order = (k) => parseInt(k, 10);
  const windows = Object.keys(perf.windows).sort((a, b) => order(a) - order(b)).map((k) => {
    const w = perf.windows[k];
    return `<tr><th scope="row">${esc(k)}</th><td class="num">${w.n}</td><td class="num">${money(w.mae)}</td><td class="num">${pct(w.mape)}</td><td class="num">${pct(w.wape)}</td><td class="num">${money(w.bias)}</td></tr>`;
  });
  const plans = Object.entries(perf.plans)
    .sort((a, b) => String(b[1].issued_at || b[0]).localeCompare(String(a[1].issued_at || a[0])))
    .slice(0, 8)
    .map(([id, p]) => {
      const d = p.roas_delta_pct;
      const tone = !isNum(d) ? '' : d <= -0.2 ? 'bad' : d < -0.05 ? 'warn' : 'ok';
      const arrow = !isNum(d) ? '' : d < 0 ? '▼ ' : '▲ ';
      return `<tr><th scope="row">${esc(id)}</th><td>${esc(String(p.issued_at || '').slice(0, 10))}</td><td class="num">${p.matched}/${p.lines}</td><td class="num">${fix(p.planned_roas, 2)}</td><td class="num">${fix(p.actual_roas, 2)}</td><td class="num delta ${tone}">${arrow}${signed(p.roas_delta, 2)}</td><td class="num delta ${tone}">${isNum(d) ? signed(100 * d, 1) + '%' : '–'}</td></tr>`;
    });
  const more = Object.keys(perf.plans).length - plans.length;
  const status = perf.status.performance.tenant || 'ok';
  return `<section class="card" id="performance">
    <h2>Forecast error <span class="sub">p50 against actual revenue · ${badge(status, 'performance')}</span></h2>
    <div class="table-wrap"><table>
      <thead><tr><th>window</th><th class="num">n</th><th class="num">MAE</th><th class="num">MAPE</th><th class="num">WAPE</th><th class="num">bias</th></tr></thead>
      <tbody>${windows.join('')}</tbody>
    </table></div>
    <h3>Plan ROAS <span class="sub">planned = p50 / planned spend, actual = revenue / spend, over matched lines</span></h3>
    <div class="table-wrap"><table>
      <thead><tr><th>plan</th><th>issued</th><th class="num">matched</th><th class="num">planned</th><th class="num">actual</th><th class="num">delta</th><th class="num">delta %</th></tr></thead>
      <tbody>${plans.join('') || '<tr><td colspan="7" class="muted">no plan yet</td></tr>'}</tbody>
    </table></div>
    ${more > 0 ? `<p class="muted">${more} older plans in <code>/api/v1/tenants/${esc(perf.tenant)}/performance</code>.</p>` : ''}
  </section>`;
}

refresh();
