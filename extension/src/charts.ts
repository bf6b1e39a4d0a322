// SVG charts and tables built with the DOM (no chart library). Colours come from CSS classes in
// style/index.css, which follow JupyterLab's theme variables, so light and dark themes both work.

import {
  breakdown,
  cdf,
  fmt,
  linearScale,
  logScale,
  measuredTrials,
  metricRows,
  paretoAxes,
  pct,
  roof,
  rooflinePoints,
  RunRecord,
  Scale,
  serveRows,
  ServeRecord,
  SweepRecord,
  trialKind,
  trialMetric
} from './data';

const SVG = 'http://www.w3.org/2000/svg';

function el<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
  parent?: Element
): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    e.setAttribute(k, String(v));
  }
  parent?.appendChild(e);
  return e;
}

function text(parent: Element, x: number, y: number, s: string, cls: string, anchor = 'middle'): SVGTextElement {
  const t = el('text', { x, y, class: cls, 'text-anchor': anchor }, parent);
  t.textContent = s;
  return t;
}

const W = 560;
const H = 360;
const M = { left: 64, right: 16, top: 28, bottom: 44 };

function axes(svg: SVGSVGElement, x: Scale, y: Scale, xlabel: string, ylabel: string, title: string, log: boolean) {
  const g = el('g', { class: 'tuner-axes' }, svg);
  el('rect', { x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom, class: 'tuner-frame' }, g);
  for (const t of x.ticks) {
    el('line', { x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: 'tuner-grid' }, g);
    text(g, x(t), H - M.bottom + 14, log ? tick(t) : fmt(t), 'tuner-tick');
  }
  for (const t of y.ticks) {
    el('line', { x1: M.left, x2: W - M.right, y1: y(t), y2: y(t), class: 'tuner-grid' }, g);
    text(g, M.left - 4, y(t) + 3, log ? tick(t) : fmt(t), 'tuner-tick', 'end');
  }
  text(g, (M.left + W - M.right) / 2, H - 8, xlabel, 'tuner-label');
  const yl = text(g, 14, (M.top + H - M.bottom) / 2, ylabel, 'tuner-label');
  yl.setAttribute('transform', `rotate(-90 14 ${(M.top + H - M.bottom) / 2})`);
  text(g, W / 2, 16, title, 'tuner-title');
}

function tick(v: number): string {
  const e = Math.round(Math.log10(v));
  return `1e${e}`;
}

/** The roofline: the measured bandwidth slope and matmul roof, one point per op (hover: its figures). */
export function rooflineChart(run: RunRecord): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'tuner-chart tuner-roofline' });
  const pts = rooflinePoints(run);
  const { bw, peak, ridge } = roof(run);
  const x = logScale([...pts.map(p => p.x), ridge / 10, ridge * 10], M.left, W - M.right);
  const y = logScale([...pts.map(p => p.y), peak, peak / 1e4], H - M.bottom, M.top);
  axes(svg, x, y, 'arithmetic intensity (FLOP/byte)', 'achieved FLOP/s', 'Roofline (measured ceilings)', true);
  if (bw > 0 && peak > 0) {
    const [x0, x1] = x.domain;
    const path = [x0, ridge, x1].map(v => `${x(v)},${y(Math.min(bw * v, peak))}`).join(' ');
    el('polyline', { points: path, class: 'tuner-roof' }, svg);
  }
  const g = el('g', { class: 'tuner-points' }, svg);
  for (const p of pts) {
    const shape =
      p.phase === 'decode'
        ? el('path', { d: `M${x(p.x)},${y(p.y) - 6} l5,9 l-10,0 z`, class: `tuner-point tuner-${p.bound}` }, g)
        : el('circle', { cx: x(p.x), cy: y(p.y), r: 5, class: `tuner-point tuner-${p.bound}` }, g);
    shape.setAttribute('data-op', p.label);
    const title = el('title', {}, shape);
    title.textContent = p.tooltip;
  }
  legend(svg, ['memory', 'compute', 'overhead'].map(b => [`tuner-${b}`, `${b}-bound`]));
  return svg;
}

function legend(svg: SVGSVGElement, items: [string, string][]) {
  const g = el('g', { class: 'tuner-legend' }, svg);
  items.forEach(([cls, label], i) => {
    el('circle', { cx: M.left + 12, cy: M.top + 12 + 14 * i, r: 4, class: `tuner-point ${cls}` }, g);
    text(g, M.left + 20, M.top + 16 + 14 * i, label, 'tuner-tick', 'start');
  });
}

/** Time per op as horizontal bars (largest first), coloured by bound, with the share of its phase. */
export function breakdownChart(run: RunRecord, limit = 14): SVGSVGElement {
  const rows = breakdown(run).slice(0, limit);
  const rowH = 18;
  const h = M.top + rows.length * rowH + 24;
  const left = 170;
  const svg = el('svg', { viewBox: `0 0 ${W} ${h}`, width: W, height: h, class: 'tuner-chart tuner-breakdown' });
  text(svg, W / 2, 16, 'Where the time goes (ms, share of its phase)', 'tuner-title');
  const x = linearScale(rows.map(r => r.time_ms), left, W - 60, true);
  rows.forEach((r, i) => {
    const yy = M.top + i * rowH;
    text(svg, left - 6, yy + 12, r.label, 'tuner-tick', 'end');
    const bar = el('rect', { x: left, y: yy + 2, width: Math.max(1, x(r.time_ms) - left), height: rowH - 5,
                             class: `tuner-bar tuner-${r.bound}` }, svg);
    el('title', {}, bar).textContent = `${r.label}: ${fmt(r.time_ms)} ms (${pct(r.share)}), ${r.bound}-bound`;
    text(svg, x(r.time_ms) + 4, yy + 12, `${fmt(r.time_ms, 3)} (${pct(r.share)})`, 'tuner-tick', 'start');
  });
  return svg;
}

/** Sweep trials on two metrics; feasible, infeasible and failed told apart; the Pareto front joined. */
export function paretoChart(sweep: SweepRecord): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'tuner-chart tuner-pareto' });
  const { x: xm, y: ym } = paretoAxes(sweep);
  const trials = measuredTrials(sweep)
    .map(t => ({ t, xv: trialMetric(sweep, t, xm), yv: trialMetric(sweep, t, ym) }))
    .filter(p => p.xv !== null && p.yv !== null) as { t: any; xv: number; yv: number }[];
  const x = linearScale(trials.map(p => p.xv), M.left, W - M.right);
  const y = linearScale(trials.map(p => p.yv), H - M.bottom, M.top);
  axes(svg, x, y, xm, ym, `Sweep ${sweep.study_name}`, false);
  const front = trials.filter(p => sweep.pareto.includes(p.t.number)).sort((a, b) => a.xv - b.xv);
  if (front.length > 1) {
    el('polyline', { points: front.map(p => `${x(p.xv)},${y(p.yv)}`).join(' '), class: 'tuner-front' }, svg);
  }
  const g = el('g', { class: 'tuner-points' }, svg);
  for (const p of trials) {
    const kind = trialKind(p.t);
    const c = el('circle', { cx: x(p.xv), cy: y(p.yv), r: 5, class: `tuner-point tuner-${kind}` }, g);
    c.setAttribute('data-trial', String(p.t.number));
    const params = Object.entries(p.t.params).map(([k, v]) => `${k}=${v}`).join(' ');
    el('title', {}, c).textContent =
      `trial ${p.t.number} (${kind}${p.t.violated?.length ? ': ' + p.t.violated.join(', ') : ''})\n${params}\n` +
      `${xm} ${fmt(p.xv)}, ${ym} ${fmt(p.yv)}`;
  }
  legend(svg, [['tuner-feasible', 'feasible'], ['tuner-infeasible', 'infeasible'], ['tuner-failed', 'failed']]);
  return svg;
}

export function table(header: string[], rows: (string | number)[][], cls = ''): HTMLTableElement {
  const t = document.createElement('table');
  t.className = `tuner-table ${cls}`;
  const head = t.createTHead().insertRow();
  for (const h of header) {
    const th = document.createElement('th');
    th.textContent = h;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of r) {
      tr.insertCell().textContent = typeof c === 'number' ? fmt(c) : c;
    }
  }
  return t;
}

export function metricsTable(run: RunRecord): HTMLTableElement {
  return table(['', ''], metricRows(run), 'tuner-metrics');
}

export function trialsTable(sweep: SweepRecord): HTMLTableElement {
  const knobs = Object.keys(sweep.space);
  const objs = sweep.objectives.map(o => o.split(':').pop() as string);
  const rows = measuredTrials(sweep).map(t => [
    t.number,
    ...knobs.map(k => String(t.params[k] ?? '')),
    ...objs.map(o => (trialMetric(sweep, t, o) ?? '–') as number | string),
    t.feasible ? 'yes' : 'no',
    t.error ?? t.violated.join(', ')
  ]);
  return table(['trial', ...knobs, ...objs, 'feasible', 'why not'], rows, 'tuner-trials');
}

/** Running and waiting requests after each step, over the run. */
export function queueChart(s: ServeRecord): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'tuner-chart tuner-queue' });
  const t = s.timeline.map(p => p.t_ms / 1e3);
  const x = linearScale([0, ...t], M.left, W - M.right);
  const y = linearScale([0, ...s.timeline.map(p => Math.max(p.running, p.waiting))], H - M.bottom, M.top, true);
  axes(svg, x, y, 'time (s)', 'requests', 'Queue and batch over time', false);
  for (const [key, cls] of [['running', 'tuner-running'], ['waiting', 'tuner-waiting']] as const) {
    let d = '';
    s.timeline.forEach((p, i) => {
      const px = x(p.t_ms / 1e3);
      const py = y(p[key]);
      d += i === 0 ? `M${px},${py}` : ` H${px} V${py}`;
    });
    if (d) {
      el('path', { d, class: `tuner-line ${cls}`, 'data-series': key }, svg);
    }
  }
  legend(svg, [['tuner-running', 'running'], ['tuner-waiting', 'waiting']]);
  return svg;
}

/** The CDF of a per-request latency, with its SLO limit where there is one. */
export function cdfChart(s: ServeRecord, key: 'ttft_ms' | 'tpot_ms', label: string): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: `tuner-chart tuner-cdf tuner-cdf-${key}` });
  const pts = cdf(s.requests.filter(r => r.finished).map(r => r[key]));
  const limit = s.slo[key];
  const x = linearScale([0, ...pts.map(p => p.x), ...(limit ? [limit] : [])], M.left, W - M.right);
  const y = linearScale([0, 1], H - M.bottom, M.top);
  axes(svg, x, y, `${label} (ms)`, 'share of requests', `${label} CDF`, false);
  if (pts.length) {
    let d = `M${x(pts[0].x)},${y(0)}`;
    for (const p of pts) {
      d += ` V${y(p.p)} H${x(p.x)}`;
    }
    el('path', { d, class: 'tuner-line tuner-running', 'data-points': pts.length }, svg);
  }
  if (limit) {
    el('line', { x1: x(limit), x2: x(limit), y1: M.top, y2: H - M.bottom, class: 'tuner-slo' }, svg);
  }
  return svg;
}

export function serveTable(s: ServeRecord): HTMLTableElement {
  return table(['', ''], serveRows(s), 'tuner-metrics');
}
