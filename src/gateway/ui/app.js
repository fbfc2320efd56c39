// switchyard's dashboard: reads and changes a gateway through its admin API.
//
// Hand-written, no build step, no library. The page is built with
// createElement and textContent only, never from HTML strings: route,
// target and key names come from the configuration and the admin API.
'use strict';

const POLL_MS = 2000;
const HISTORY = 150; // points kept per series: five minutes at one poll per 2 s
// Upper bounds of the latency histogram's buckets in ms (src/metrics.rs,
// BUCKETS_MICROS); the last bucket is unbounded.
const BUCKETS_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000];
const KEY_STORE = 'switchyard.admin-key';
// The admin API's root: where /ui is served from.
const API = location.pathname.replace(/\/ui\/?$/, '');
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  key: null,
  timer: null,
  busy: false,
  polls: 0,
  view: 'splits',
  modelRoutes: [],
  rollouts: true,
  prev: new Map(), // "route/target" -> last counters and time
  series: new Map(), // "route/target" -> [{t, rate, err, p99}]
  dirty: new Set(), // routes whose weight inputs the user is editing
  cards: new Map(), // route -> its split card
  serverPrev: new Map(), // server name -> {requests, t} at the last poll
};

// === building the page ===

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  setAttrs(e, attrs);
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = String(v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
}

function table(headers, rows) {
  const head = el('tr', {}, ...headers.map((h) => el('th', { scope: 'col', text: h })));
  return el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows));
}

const td = (text, attrs) => el('td', Object.assign({ text }, attrs || {}));
const num = (n, digits) => (n === null || n === undefined || Number.isNaN(n) ? '–' : Number(n).toFixed(digits || 0));
const pct = (x) => (x === null ? '–' : (x * 100).toFixed(x < 0.1 ? 2 : 1) + ' %');
const ms = (x) => (x === null ? '–' : x === Infinity ? '> 120 s' : '≤ ' + x + ' ms');
const enc = encodeURIComponent;

function notice(text, error) {
  const p = $('notice');
  p.textContent = text;
  p.className = error ? 'error' : '';
}

// === the admin API ===

async function api(method, path, body) {
  const init = { method, cache: 'no-store', credentials: 'omit', headers: { Authorization: 'Bearer ' + state.key } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(API + path, init);
  const text = await res.text();
  let doc = text;
  try { doc = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const detail = doc && (doc.detail || doc.title);
    const err = new Error(res.status + (detail ? ': ' + detail : ''));
    err.status = res.status;
    throw err;
  }
  return doc;
}

// === the key ===

async function open(key) {
  state.key = key;
  try {
    await api('GET', '/splits');
  } catch (e) {
    if (e.status === 401 || e.status === 403) return logout('Key refused. The admin API answered ' + e.message + '.');
    return logout('The admin API did not answer: ' + e.message);
  }
  sessionStorage.setItem(KEY_STORE, key);
  $('login-key').value = '';
  $('login').hidden = true;
  $('login-error').hidden = true;
  for (const id of ['views', 'tabs', 'logout']) $(id).hidden = false;
  state.polls = 0;
  clearInterval(state.timer);
  state.timer = setInterval(poll, POLL_MS);
  await poll();
}

function logout(message) {
  clearInterval(state.timer);
  state.timer = null;
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  for (const id of ['views', 'tabs', 'logout']) $(id).hidden = true;
  $('login').hidden = false;
  const p = $('login-error');
  p.textContent = message || '';
  p.hidden = !message;
  if (message) $('login-key').focus();
}

// === polling ===

async function poll() {
  if (state.busy || !state.key) return;
  state.busy = true;
  try {
    if (state.polls++ % 15 === 0) await discover();
    const parts = [
      api('GET', '/splits').then(async (splits) => {
        renderSplits(splits);
        const compared = await Promise.all(splits.map((x) => api('GET', '/splits/' + enc(x.route) + '/compare')));
        compared.forEach(renderCompare);
      }),
      api('GET', '/upstreams').then(renderUpstreams),
      api('GET', '/servers').then(renderServers),
      api('GET', '/keys').then((d) => renderKeys(d.keys)),
      pollModels(),
    ];
    if (state.rollouts) parts.push(pollRollouts());
    const failed = (await Promise.allSettled(parts)).filter((r) => r.status === 'rejected').map((r) => r.reason);
    const out = failed.find((e) => e.status === 401 || e.status === 403);
    if (out) return logout('Key refused. The admin API answered ' + out.message + '.');
    if (failed.length) notice('Some views are stale: ' + failed[0].message, true);
    else notice('Updated at ' + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.status === 401 || e.status === 403) logout('Key refused. The admin API answered ' + e.message + '.');
    else notice('The admin API did not answer: ' + e.message, true);
  } finally {
    state.busy = false;
  }
}

// Which routes are model routes (from the configuration), and whether
// this gateway has rollouts at all.
async function discover() {
  const config = await api('GET', '/config');
  state.modelRoutes = (config.routes || []).filter((r) => r.model).map((r) => r.name);
  $('tab-models').hidden = state.modelRoutes.length === 0;
  state.rollouts = true;
}

// === routes and splits ===

function renderSplits(splits) {
  const box = $('splits');
  const now = Date.now();
  const seen = new Set();
  const empty = box.querySelector('.empty');
  if (empty) empty.remove();
  for (const split of splits) {
    seen.add(split.route);
    const names = split.targets.map((t) => t.name).join('\n');
    let card = state.cards.get(split.route);
    if (!card || card.names !== names) {
      const fresh = splitCard(split);
      if (card) card.root.replaceWith(fresh.root); else box.append(fresh.root);
      card = fresh;
      card.names = names;
      state.cards.set(split.route, card);
    }
    updateSplit(card, split, now);
  }
  for (const [route, card] of state.cards) {
    if (!seen.has(route)) { card.root.remove(); state.cards.delete(route); }
  }
  if (!splits.length) box.replaceChildren(el('p', { class: 'empty', text: 'No split routes.' }));
}

function splitCard(split) {
  const route = split.route;
  const inputs = new Map();
  const form = el('form', { class: 'controls', 'data-route': route, 'aria-label': 'Weights of ' + route });
  split.targets.forEach((t, i) => {
    const id = 'weight-' + route + '-' + t.name;
    const input = el('input', { id, type: 'number', min: 0, step: 1, required: true, 'data-route': route, 'data-target': t.name });
    inputs.set(t.name, input);
    form.append(el('label', { for: id, class: 'weight' }, el('span', { class: 'swatch c' + i }), t.name + ' weight'), input);
  });
  form.append(
    el('button', { type: 'submit', id: 'set-weights-' + route, text: 'Set weights' }),
    ...split.targets.map((t) => el('button', {
      type: 'button', id: 'promote-' + route + '-' + t.name, 'data-action': 'promote', 'data-route': route, 'data-target': t.name, text: 'Promote ' + t.name,
    })),
    el('button', { type: 'button', id: 'rollback-' + route, 'data-action': 'rollback', 'data-route': route, text: 'Roll back' }),
  );
  form.addEventListener('input', () => state.dirty.add(route));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const weights = {};
    for (const [name, input] of inputs) weights[name] = Number(input.value);
    act('PUT', '/splits/' + enc(route) + '/weights', weights, route + ': weights set', route);
  });
  const bar = svg('svg', { class: 'bar', viewBox: '0 0 100 6', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
  const rows = el('tbody');
  const charts = el('div', { class: 'charts' });
  const head = el('tr', {}, ...['Target', 'Weight', 'Share', 'Requests/s', 'Errors', 'p99', 'In flight', 'Requests']
    .map((h) => el('th', { scope: 'col', text: h })));
  const root = el('article', { class: 'card', id: 'route-' + route, 'data-route': route },
    el('h3', { text: route }), bar, el('table', {}, el('thead', {}, head), rows), form, charts);
  return { root, bar, rows, charts, inputs };
}

function updateSplit(card, split, now) {
  const route = split.route;
  const total = split.targets.reduce((s, t) => s + t.weight, 0) || 1;
  card.bar.replaceChildren();
  let x = 0;
  const rows = [];
  split.targets.forEach((t, i) => {
    const share = (t.weight / total) * 100;
    card.bar.append(svg('rect', { class: 'c' + i, x, y: 0, width: share, height: 6 }));
    x += share;
    const point = sample(route + '/' + t.name, t, now);
    rows.push(el('tr', { 'data-target': t.name },
      el('th', { scope: 'row' }, el('span', { class: 'swatch c' + i }), t.name),
      td(t.weight, { id: 'live-' + route + '-' + t.name, 'data-weight': t.weight }),
      td(share.toFixed(1) + ' %'),
      td(point ? num(point.rate, 1) : '–'),
      td(point ? pct(point.err) : '–'),
      td(point ? ms(point.p99) : '–'),
      td(t.in_flight), td(t.requests)));
    const input = card.inputs.get(t.name);
    if (input && !state.dirty.has(route) && document.activeElement !== input) input.value = t.weight;
  });
  card.rows.replaceChildren(...rows);
  const series = split.targets.map((t, i) => ({ cls: 'c' + i, points: state.series.get(route + '/' + t.name) || [] }));
  card.charts.replaceChildren(
    chart('Requests/s', series, (p) => p.rate, (v) => v.toFixed(1), now),
    chart('Error rate', series, (p) => p.err, (v) => (v * 100).toFixed(1) + ' %', now),
    chart('p99 (ms)', series, (p) => (p.p99 === Infinity ? null : p.p99), (v) => String(v), now),
  );
}

// One point of a target's series from the difference between this poll's
// counters and the last one's; null on the first poll or after a reset.
function sample(key, t, now) {
  const answered = Object.values(t.responses).reduce((s, n) => s + n, 0) + t.errors;
  const bad = t.responses['5xx'] + t.errors;
  const cur = { t: now, requests: t.requests, answered, bad, buckets: t.latency.buckets };
  const prev = state.prev.get(key);
  state.prev.set(key, cur);
  if (!prev || cur.requests < prev.requests || cur.answered < prev.answered) return null;
  const secs = (now - prev.t) / 1000;
  const dAnswered = answered - prev.answered;
  const delta = cur.buckets.map((n, i) => n - (prev.buckets[i] || 0));
  const point = {
    t: now,
    rate: secs > 0 ? (cur.requests - prev.requests) / secs : 0,
    err: dAnswered > 0 ? (bad - prev.bad) / dAnswered : null,
    p99: quantile(delta, 0.99),
  };
  const series = state.series.get(key) || [];
  series.push(point);
  if (series.length > HISTORY) series.shift();
  state.series.set(key, series);
  return point;
}

// The upper bound of the bucket holding the q-quantile (Infinity beyond
// the last bound), or null without samples.
function quantile(buckets, q) {
  const count = buckets.reduce((s, n) => s + n, 0);
  if (count <= 0) return null;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i];
    if (seen >= q * count) return i < BUCKETS_MS.length ? BUCKETS_MS[i] : Infinity;
  }
  return Infinity;
}

// A line chart of the last HISTORY polls, one line per target.
function chart(title, series, value, label, now) {
  const W = 300, H = 80;
  let max = 0, first = now;
  for (const s of series) {
    for (const p of s.points) {
      const v = value(p);
      if (v !== null && v > max) max = v;
      if (p.t < first) first = p.t;
    }
  }
  // From the oldest point (at least a minute, at most HISTORY polls) to now.
  const span = Math.min(Math.max(now - first, 60000), HISTORY * POLL_MS);
  const top = max > 0 ? max * 1.1 : 1;
  const box = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}, last ${Math.round(span / 60000)} min, peak ${label(max)}` });
  box.append(svg('line', { class: 'axis', x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }));
  for (const s of series) {
    let d = '';
    let pen = 'M';
    for (const p of s.points) {
      const v = value(p);
      if (v === null) { pen = 'M'; continue; }
      const x = W - ((now - p.t) / span) * W;
      const y = H - 2 - (v / top) * (H - 4);
      d += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = 'L';
    }
    if (d) box.append(svg('path', { class: 'line ' + s.cls, d }));
  }
  return el('figure', { class: 'chart' }, el('figcaption', {}, title, el('span', { class: 'peak', text: 'peak ' + label(max) })), box);
}

// === rollouts ===

async function pollRollouts() {
  let doc;
  try {
    doc = await api('GET', '/rollouts');
  } catch (e) {
    if (e.status !== 404) throw e;
    // A gateway without rollouts: the panel hides until the next discovery.
    state.rollouts = false;
    $('tab-rollouts').hidden = true;
    if (state.view === 'rollouts') show('splits');
    return;
  }
  $('tab-rollouts').hidden = false;
  renderRollouts(doc.rollouts || []);
}

function stepText(step) {
  if (typeof step === 'string') return step.replace(/_/g, ' ');
  return Object.entries(step).map(([k, v]) => {
    const what = k.replace(/_/g, ' ');
    if (k === 'set_weight') return `${what} ${v} %`;
    if (v && typeof v === 'object') return what + ' ' + Object.entries(v).map(([a, b]) => `${a} ${typeof b === 'object' ? JSON.stringify(b) : b}`).join(', ');
    return `${what} ${v}`;
  }).join('; ');
}

// A version's figures in a verdict: durations ({secs, nanos}) in ms,
// rates in percent, figures it has no data for left out.
function side(s) {
  if (!s) return '–';
  const shown = (k, v) => {
    if (v && typeof v === 'object' && 'secs' in v) return (v.secs * 1000 + v.nanos / 1e6).toFixed(1) + ' ms';
    if (k.endsWith('rate') && typeof v === 'number') return pct(v);
    return typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(3) : String(v);
  };
  return Object.entries(s).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k.replace(/_/g, ' ')} ${shown(k, v)}`).join(', ');
}

function renderRollouts(list) {
  const box = $('rollouts');
  if (!list.length) return box.replaceChildren(el('p', { class: 'empty', text: 'No route has a rollout plan.' }));
  box.replaceChildren(...list.map((r) => {
    const route = r.route;
    const live = r.state === 'running' || r.state === 'paused';
    const button = (action, text, enabled) => el('button', {
      type: 'button', id: `rollout-${action}-${route}`, 'data-action': 'rollout', 'data-verb': action, 'data-route': route, disabled: !enabled, text,
    });
    const steps = el('ol', { class: 'steps', 'aria-label': 'Steps' }, ...(r.steps || []).map((s, i) => el('li', {
      class: i < r.step ? 'done' : i === r.step && live ? 'current' : '',
      'aria-current': i === r.step && live ? 'step' : null,
      text: stepText(s),
    })));
    const verdicts = (r.verdicts || []).slice(-5).reverse().map((v) => el('tr', {},
      td(v.outcome, { class: 'outcome-' + v.outcome }), td((v.reasons || []).join('; ')), td(side(v.canary)), td(side(v.stable))));
    const history = (r.history || []).slice(-8).reverse().map((h) => el('li', {
      text: `${new Date(h.at * 1000).toLocaleTimeString()} step ${h.step}: ${h.kind}${h.detail === null || h.detail === undefined ? '' : ' ' + JSON.stringify(h.detail)}`,
    }));
    return el('article', { class: 'card', id: 'rollout-' + route, 'data-rollout': route },
      el('h3', {}, route + ' ', el('span', { class: 'badge state-' + r.state, id: 'rollout-state-' + route, text: r.state })),
      el('p', { text: `${r.stable} → ${r.canary}, canary at ${r.canary_weight} %` + (r.started_by ? `, started by ${r.started_by}` : '') + (r.reason ? ` (${r.reason})` : '') }),
      steps,
      el('div', { class: 'controls' },
        button('start', 'Start', !live), button('pause', 'Pause', r.state === 'running'),
        button('resume', 'Resume', r.state === 'paused'), button('abort', 'Abort', live)),
      verdicts.length ? table(['Verdict', 'Reasons', 'Canary', 'Stable'], verdicts) : el('p', { class: 'empty', text: 'No verdicts yet.' }),
      history.length ? el('details', {}, el('summary', { text: 'History' }), el('ol', { class: 'history' }, ...history)) : null);
  }));
}

// === models ===

async function pollModels() {
  const docs = await Promise.all(state.modelRoutes.map((r) => api('GET', '/models/' + enc(r))));
  const box = $('models');
  if (!docs.length) return box.replaceChildren(el('p', { class: 'empty', text: 'No model routes.' }));
  box.replaceChildren(...docs.map((m) => {
    const aliases = (m.catalog.aliases || []).map((a) => el('tr', {},
      el('th', { scope: 'row', text: a.name }),
      td(Object.entries(a.versions).map(([v, w]) => `${v} ${w}`).join(', ')),
      td(a.fallback || '–')));
    const versions = (m.versions || []).map((v) => el('tr', { 'data-model': v.model },
      el('th', { scope: 'row', text: v.model }), td(v.requests), td(v.in_flight),
      td(v.errors + v.responses['5xx']), td(v.prompt_tokens), td(v.completion_tokens),
      td(v.cached_tokens), td(num(v.cost_micros / 1e6, 6)), td(v.priced)));
    return el('article', { class: 'card', id: 'model-' + m.route, 'data-model-route': m.route },
      el('h3', { text: m.route }),
      table(['Alias', 'Versions and weights', 'Fallback'], aliases),
      table(['Version', 'Requests', 'In flight', 'Errors', 'Prompt tokens', 'Completion tokens', 'Cached tokens', 'Cost', 'Priced answers'], versions));
  }));
}

// Whether each target's servers are ready for its share (and for all of
// the traffic), from /splits/{route}/compare, under the split's card.
function renderCompare(c) {
  const card = state.cards.get(c.route);
  if (!card) return;
  if (!card.compare) {
    card.compare = el('div', { class: 'compare', id: 'compare-' + c.route });
    card.root.insertBefore(card.compare, card.charts);
  }
  const rows = c.targets.map((t) => {
    const e = t.endpoints;
    const cap = t.capacity ? t.capacity.needed_now + ' / ' + t.capacity.needed_for_all_traffic : '–';
    // Since the previous poll, when there was one; else since the start.
    const w = t.live && t.live.window;
    return el('tr', { 'data-target': t.target }, el('th', { scope: 'row', text: t.target }), td(t.upstream),
      td(e.healthy + ' of ' + e.total), td(e.draining), td(t.discovery ? t.discovery.source + (t.discovery.stale ? ' (stale)' : '') : 'config'),
      td(cap), td(w ? num(w.rate_per_s, 1) : '–'), td(t.live ? num((w || t.live).error_rate * 100, 1) + ' %' : '–'),
      td(t.live ? num((w || t.live).p99_ms, 1) + ' ms' : '–'));
  });
  card.compare.replaceChildren(
    table(['Target', 'Upstream', 'Healthy servers', 'Draining', 'Servers from', 'Needed (now / all)', 'Requests/s', 'Error rate', 'p99'], rows),
    ...c.warnings.map((w) => el('p', { class: 'warning', text: w })));
}

// === upstreams ===

function renderUpstreams(upstreams) {
  $('upstreams').replaceChildren(...upstreams.map((u) => {
    const d = u.discovery;
    const status = d ? el('p', { class: d.stale ? 'warning' : 'discovery' },
      'Servers from ' + d.source + ': ' + d.endpoints + (d.stale ? ', stale (' + (d.last_error || 'failing') + ')' : '')
        + (d.expired ? ', expired' : '')) : null;
    return el('article', { class: 'card', 'data-upstream': u.name },
      el('h3', { text: u.name }), status,
      table(['Server', 'From', 'Weight', 'Health', 'In flight', 'Requests', 'Failures', 'Ejections'], u.endpoints.map((e) => {
        const health = e.draining ? 'draining' : !e.in_service ? 'ejected' : e.healthy ? 'healthy' : 'unhealthy';
        return el('tr', {}, el('th', { scope: 'row', text: e.url }), td(e.source), td(e.weight), td(health, { class: 'health-' + health }),
          td(e.in_flight), td(e.requests), td(e.failures), td(e.ejections));
      })));
  }));
}

// === the gateway's own servers ===

function renderServers(servers) {
  const now = Date.now();
  const rows = servers.map((s) => {
    // Requests a second since the last poll (none on the first).
    const prev = state.serverPrev.get(s.name);
    const rate = prev && now > prev.t && s.requests >= prev.requests
      ? (s.requests - prev.requests) / ((now - prev.t) / 1000) : null;
    state.serverPrev.set(s.name, { requests: s.requests, t: now });
    return el('tr', { 'data-server': s.name },
      el('th', { scope: 'row', text: s.name }), td(s.address),
      td(s.shutting_down ? 'shutting down' : 'serving', { class: s.shutting_down ? 'warning' : null }),
      td(s.active), td(s.accepted), td(s.requests), td(num(rate, 1)),
      td(s.refused_over_cap), td(s.header_timeouts + ' / ' + s.idle_closed + ' / ' + s.body_timeouts),
      td(s.tls_handshake_failures), td(s.panics, { class: s.panics > 0 ? 'warning' : null, 'data-panics': s.panics }));
  });
  $('servers').replaceChildren(servers.length
    ? table(['Server', 'Address', 'State', 'Open connections', 'Accepted', 'Requests', 'Requests/s', 'Refused (at the cap)',
      'Timeouts (head / idle / body)', 'TLS handshakes failed', 'Panics'], rows)
    : el('p', { class: 'empty', text: 'No servers reported to this gateway (Gateway::report_server).' }));
}

// === API keys ===

function renderKeys(keys) {
  const rows = keys.map((k) => el('tr', { 'data-digest': k.digest },
    el('th', { scope: 'row', text: k.id }), td(k.tenant || '–'), td((k.scopes || []).join(' ')),
    td(k.source), td(k.uses), td(k.digest.slice(0, 19) + '…', { title: k.digest, class: 'digest' }),
    el('td', {}, el('button', {
      type: 'button', 'data-action': 'revoke', 'data-digest': k.digest, 'aria-label': 'Revoke the key of ' + k.id, text: 'Revoke',
    }))));
  $('keys').replaceChildren(keys.length ? table(['Identity', 'Tenant', 'Scopes', 'From', 'Requests', 'Digest', ''], rows)
    : el('p', { class: 'empty', text: 'No API keys.' }));
}

// === actions ===

async function act(method, path, body, done, route) {
  try {
    await api(method, path, body);
    if (route) state.dirty.delete(route);
    notice(done);
  } catch (e) {
    if (e.status === 401) return logout('Key refused. The admin API answered ' + e.message + '.');
    notice('Refused: ' + e.message, true);
  }
  await poll();
}

// A destructive button asks for a second click within 4 s.
function confirmed(button) {
  if (button.dataset.armed) return true;
  button.dataset.armed = '1';
  const text = button.textContent;
  button.textContent = 'Confirm ' + text.toLowerCase();
  setTimeout(() => { delete button.dataset.armed; button.textContent = text; }, 4000);
  return false;
}

document.addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-action]');
  if (!b) return;
  const { route, target, verb, digest } = b.dataset;
  switch (b.dataset.action) {
    case 'promote':
      return act('POST', `/splits/${enc(route)}/promote/${enc(target)}`, undefined, `${route}: ${target} promoted`, route);
    case 'rollback':
      return act('POST', `/splits/${enc(route)}/rollback`, undefined, `${route}: rolled back`, route);
    case 'rollout':
      if (verb === 'abort' && !confirmed(b)) return;
      return act('POST', `/rollouts/${enc(route)}${verb === 'start' ? '' : '/' + verb}`,
        verb === 'abort' ? { reason: 'aborted from the dashboard' } : {}, `${route}: rollout ${verb}`);
    case 'revoke':
      if (!confirmed(b)) return;
      return act('DELETE', '/keys/' + enc(digest), undefined, 'key revoked');
  }
});

// === views ===

function show(view) {
  state.view = view;
  for (const s of document.querySelectorAll('main section[data-view]')) s.hidden = s.dataset.view !== view;
  for (const b of document.querySelectorAll('#tabs button')) b.setAttribute('aria-pressed', String(b.dataset.view === view));
}

$('tabs').addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-view]');
  if (b) { show(b.dataset.view); history.replaceState(null, '', '#' + b.dataset.view); }
});
$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const key = $('login-key').value.trim();
  if (key) open(key);
});
$('logout').addEventListener('click', () => logout(''));

show($('view-' + location.hash.slice(1)) ? location.hash.slice(1) : 'splits');
const kept = sessionStorage.getItem(KEY_STORE);
if (kept) open(kept); else $('login-key').focus();
