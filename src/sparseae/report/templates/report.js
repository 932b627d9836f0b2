// The report's browser: the feature index is inline; each feature's detail is in a chunk file
// (FILES/features-NNNN.js) loaded on demand by a script element that calls sparseaeChunk(), which works from
// file:// where fetch() of local files does not. Every string from data is written with textContent.
'use strict';
const D = JSON.parse(document.getElementById('report-index').textContent);
const $ = (id) => document.getElementById(id);
const chunks = {}, waiting = {};
const PAGE = 120;
let page = 0, current = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function fmt(v) { return v === 0 ? '0' : Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? String(+v.toPrecision(4)) : v.toExponential(2); }

window.sparseaeChunk = function (kind, i, data) {
  const key = kind + i;
  chunks[key] = data;
  for (const done of waiting[key] || []) done(data);
  delete waiting[key];
};
function loadChunk(kind, i, done) {
  const key = kind + i;
  if (chunks[key]) return done(chunks[key]);
  if (waiting[key]) return waiting[key].push(done);
  waiting[key] = [done];
  const s = document.createElement('script');
  s.src = D.files + '/' + kind + '-' + String(i).padStart(4, '0') + '.js';
  s.onerror = () => {
    delete waiting[key];
    $('info').replaceChildren(el('p', 'Could not load ' + s.src + ': keep the folder ' + D.files + ' beside this page.'));
  };
  document.head.appendChild(s);
}
function loadAll(kind, ids, done) {
  const out = {}, need = [...new Set(ids)];
  let left = need.length;
  if (!left) return done(out);
  for (const i of need) loadChunk(kind, i, (data) => { Object.assign(out, data); if (--left === 0) done(out); });
}

// --- the feature list: sort, filter, search, pages ---
const F = D.features;  // columnar: id, freq, mean, max
const BANDS = {all: () => true, alive: (f) => f > 0, dead: (f) => f === 0, dense: (f) => f > 0.1,
  b1: (f) => f > 0.01 && f <= 0.1, b2: (f) => f > 0.001 && f <= 0.01, b3: (f) => f > 1e-4 && f <= 0.001, b4: (f) => f > 0 && f <= 1e-4};
function listed() {
  const keep = BANDS[$('filter').value], word = $('search').value.trim().toLowerCase();
  let allowed = null;
  if (word) allowed = new Set(D.search[word] || []);
  const rows = [];
  for (let i = 0; i < F.id.length; i++) {
    if (keep(F.freq[i]) && (allowed === null || allowed.has(F.id[i]))) rows.push(i);
  }
  const key = $('sort').value;
  if (key === 'id') rows.sort((a, b) => F.id[a] - F.id[b]);
  else rows.sort((a, b) => F[key][b] - F[key][a] || F.id[a] - F.id[b]);
  return rows;
}
function drawList() {
  const rows = listed(), pages = Math.max(1, Math.ceil(rows.length / PAGE)), word = $('search').value.trim().toLowerCase();
  page = Math.min(page, pages - 1);
  const box = $('features');
  box.replaceChildren();
  for (const i of rows.slice(page * PAGE, (page + 1) * PAGE)) {
    const id = F.id[i], node = el('a', undefined, 'feature');
    node.href = '#feature-' + id;
    node.dataset.id = id;
    node.title = 'feature ' + id + ': frequency ' + fmt(F.freq[i]) + ', mean ' + fmt(F.mean[i]);
    if (D.tiles) { const im = el('img'); im.src = D.tiles[i]; im.width = 42; im.className = 'pix'; node.appendChild(im); }
    node.appendChild(el('div', '#' + id));
    node.appendChild(el('div', fmt(F.freq[i]), 'muted'));
    if (id === current) node.classList.add('sel');
    box.appendChild(node);
  }
  $('page-info').textContent = D.common.includes(word) ? '"' + word + '" is in the top examples of too many features to list'
    : rows.length + ' features · page ' + (page + 1) + ' of ' + pages;
}
for (const id of ['sort', 'filter']) $(id).addEventListener('change', () => { page = 0; drawList(); });
$('search').addEventListener('input', () => { page = 0; drawList(); });
$('prev').addEventListener('click', () => { page = Math.max(0, page - 1); drawList(); });
$('next').addEventListener('click', () => { page += 1; drawList(); });
$('latent').addEventListener('change', () => { location.hash = '#feature-' + $('latent').value; });

// --- one feature ---
function bars(hist) {
  const box = el('div'), peak = Math.max(1, ...hist.counts);
  box.style.height = '60px';
  hist.counts.forEach((c, i) => {
    const b = el('span', undefined, 'bar');
    b.style.height = (60 * c / peak) + 'px';
    b.title = fmt(hist.edges[i]) + ' to ' + fmt(hist.edges[i + 1]) + ': ' + c;
    box.appendChild(b);
  });
  return box;
}
function pairs(title, items, cls) {
  const t = el('table');
  t.appendChild(el('caption', title));
  for (const [name, v] of items) {
    const tr = el('tr');
    tr.appendChild(el('td', name, 'tok'));
    tr.appendChild(el('td', fmt(v), cls));
    t.appendChild(tr);
  }
  return t;
}
function visible(text) { return text.replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192'); }  // a token's newline or tab, seen
function shade(span, value, peak) {
  if (value === null) { span.classList.add('none'); span.title = 'not a held-out row (no activation)'; return; }
  const a = peak > 0 ? Math.max(0, Math.min(1, value / peak)) : 0;
  span.style.background = 'rgba(255, 110, 0, ' + a.toFixed(3) + ')';
  span.title = 'activation ' + fmt(value);
}
function example(ex, rows, peak) {
  const r = rows[String(ex.row)] || {}, box = el('div', undefined, 'example');
  box.dataset.row = ex.row;
  box.dataset.value = ex.value;
  if (ex.ctx) {
    box.classList.add('line');
    ex.ctx.forEach(([text, v], i) => {
      const s = el('span', visible(text), 'tok');
      shade(s, v, peak);
      if (i === ex.at) s.classList.add('at');
      box.appendChild(s);
    });
  } else if (r.img) {
    const im = el('img'); im.src = r.img; im.width = 56; im.className = 'pix'; box.appendChild(im);
  } else if (r.text !== undefined) {
    box.classList.add('line');
    box.appendChild(el('div', r.text, 'text'));
  } else if (r.values) box.appendChild(el('div', r.values.join(', ')));
  box.appendChild(el('div', '#' + ex.row + ' · ' + fmt(ex.value), 'muted value'));
  if (r.label !== null && r.label !== undefined) box.appendChild(el('div', 'label ' + r.label, 'muted'));
  for (const [k, v] of Object.entries(r.extra || {})) box.appendChild(el('div', k + ': ' + v, 'muted'));
  return box;
}
function show(id) {
  id = Number(id);
  const at = F.id.indexOf(id), info = $('info');
  if (at < 0) {
    info.replaceChildren(el('p', 'Feature ' + id + ' is not in this report (it has ' + F.id.length + ' of ' + D.n_latents + ').'));
    $('examples').replaceChildren();
    return;
  }
  current = id;
  $('latent').value = id;
  for (const n of $('features').children) n.classList.toggle('sel', Number(n.dataset.id) === id);
  info.replaceChildren(el('h3', 'Feature ' + id), el('p', 'loading…', 'muted'));
  $('examples').replaceChildren();
  loadChunk('features', Math.floor(id / D.chunk), (data) => {
    const f = data[String(id)], shown = f.top.concat(...f.bands.map((b) => b.examples));
    loadAll('rows', shown.map((e) => Math.floor(e.row / D.row_chunk)), (rows) => { if (current === id) draw(f, rows); });
  });
}
function draw(f, rows) {
  const info = $('info'), ex = $('examples');
  info.replaceChildren(el('h3', 'Feature ' + f.id));
  if (f.img) { const im = el('img'); im.src = f.img; im.width = 112; im.className = 'pix'; info.appendChild(im); }
  info.appendChild(el('p', 'activation frequency ' + fmt(f.freq) + ' (' + f.count + ' of ' + D.n + ' rows) · mean activation ' + fmt(f.mean)));
  if (f.hist.counts.length) {
    info.appendChild(el('p', 'non-zero |activations|, log-spaced bins: ' + fmt(f.hist.edges[0]) + ' to ' + fmt(f.hist.edges[f.hist.edges.length - 1]), 'muted'));
    info.appendChild(bars(f.hist));
  }
  if (f.logits) { info.appendChild(pairs('Tokens it promotes (W_U · atom)', f.logits.up, 'pos')); info.appendChild(pairs('Tokens it suppresses', f.logits.down, 'neg')); }
  if (f.loadings) { info.appendChild(pairs('Largest positive loadings', f.loadings.pos, 'pos')); info.appendChild(pairs('Largest negative loadings', f.loadings.neg, 'neg')); }
  const peak = f.top.length ? f.top[0].value : 0;
  const tops = el('div'); tops.id = 'tops';
  tops.appendChild(el('h3', f.top.length ? 'Top activations' : 'Never active on the held-out rows'));
  for (const t of f.top) tops.appendChild(example(t, rows, peak));
  const bands = el('div'); bands.id = 'bands';
  if (f.bands.length) bands.appendChild(el('h3', 'Examples from quantiles of its non-zero activations'));
  for (const b of f.bands) {
    bands.appendChild(el('h4', b.name));
    for (const t of b.examples) bands.appendChild(example(t, rows, peak));
  }
  ex.replaceChildren(tops, bands);
}
function fromHash() {
  const m = /^#feature-(\d+)$/.exec(location.hash);
  if (m) show(m[1]);
}
window.addEventListener('hashchange', fromHash);

// --- the token view: held-out documents; a click lists the features active on a token ---
function drawDocs() {
  const box = $('docs');
  if (!box) return;
  for (const doc of D.docs) {
    const p = el('div', undefined, 'doc');
    for (const [text, row] of doc) {
      const s = el('span', text.replace(/\t/g, '\u2192'), 'tok');
      if (row < 0) s.classList.add('none');
      else s.addEventListener('click', () => pickToken(s, row));
      s.dataset.row = row;
      p.appendChild(s);
    }
    box.appendChild(p);
  }
}
function pickToken(span, row) {
  for (const s of document.querySelectorAll('.doc .tok.picked')) s.classList.remove('picked');
  span.classList.add('picked');
  const list = $('token-features');
  list.replaceChildren(el('h4', 'Features active on ' + JSON.stringify(span.textContent) + ' (row ' + row + ')'));
  const active = D.token_features[String(row)] || [];
  if (!active.length) list.appendChild(el('p', 'none', 'muted'));
  for (const [id, v] of active) {
    const a = el('a', 'feature ' + id + ' · ' + fmt(v));
    a.href = '#feature-' + id;
    a.dataset.id = id;
    list.appendChild(el('div')).appendChild(a);
  }
}

drawList();
drawDocs();
if (/^#feature-\d+$/.test(location.hash)) fromHash();
else if (F.id.length) show(F.id[listed()[0] ?? 0]);
