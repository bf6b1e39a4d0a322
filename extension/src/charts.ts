// SVG charts and tables built with the DOM (no chart library). Colours come from CSS classes in
// style/index.css, which follow JupyterLab's theme variables, so light and dark themes both work.

import {
  Box,
  breakdown,
  cdf,
  change,
  compareOps,
  CompareRecord,
  compareRows,
  constraintsOn,
  fmt,
  linearScale,
  logScale,
  measuredTrials,
  metricRows,
  paretoAxes,
  pct,
  placeLabels,
  roof,
  rooflinePoints,
  RunRecord,
  Scale,
  serveRows,
  ServeRecord,
  si,
  SweepRecord,
  tick,
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

function axes(svg: SVGSVGElement, x: Scale, y: Scale, xlabel: string, ylabel: string, title: string,
              xtick: (v: number) => string = tick, ytick: (v: number) => string = tick, m = M) {
  const g = el('g', { class: 'tuner-axes' }, svg);
  el('rect', { x: m.left, y: M.top, width: W - m.left - M.right, height: H - M.top - M.bottom, class: 'tuner-frame' }, g);
  for (const t of x.ticks) {
    el('line', { x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: 'tuner-grid' }, g);
    text(g, x(t), H - M.bottom + 14, xtick(t), 'tuner-tick');
  }
  for (const t of y.ticks) {
    el('line', { x1: m.left, x2: W - M.right, y1: y(t), y2: y(t), class: 'tuner-grid' }, g);
    text(g, m.left - 4, y(t) + 3, ytick(t), 'tuner-tick', 'end');
  }
  text(g, (m.left + W - M.right) / 2, H - 8, xlabel, 'tuner-label');
  const yl = text(g, 12, (M.top + H - M.bottom) / 2, ylabel, 'tuner-label');
  yl.setAttribute('transform', `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`);
  text(g, W / 2, 16, title, 'tuner-title');
}

const LABELLED = 6; // ops named on the roofline: those that take most time; the rest are listed under it
const RM = { ...M, left: 84 }; // the roofline's left margin: room for ticks in FLOP/s

/** The roofline: the measured bandwidth slope and matmul roof with their values, one point per op (hover: its
 * figures). The LABELLED slowest ops are named beside their points, with labels that never overlap; the others
 * are listed under the chart. */
export function rooflineChart(run: RunRecord): SVGSVGElement {
  const pts = rooflinePoints(run);
  const byTime = [...pts].sort((a, b) => b.time_ms - a.time_ms);
  const { bw, peak, ridge } = roof(run);
  const x = logScale([...pts.map(p => p.x), ridge / 10, ridge * 10], RM.left, W - M.right);
  const y = logScale([...pts.map(p => p.y), peak, peak / 1e4], H - M.bottom, M.top);
  const frame: Box = { x0: RM.left, y0: M.top, x1: W - M.right, y1: H - M.bottom };
  // the labels are placed first, so the chart knows how many lines the list of the others takes
  const obstacles: Box[] = pts.map(p => ({ x0: x(p.x) - 6, x1: x(p.x) + 6, y0: y(p.y) - 6, y1: y(p.y) + 6 }));
  const legendBox: Box = { x0: RM.left + 4, y0: M.top + 2, x1: RM.left + 120, y1: M.top + 6 + 14 * 5 };
  const ceilingBoxes: Box[] = [];
  const [x0, x1] = x.domain;
  if (bw > 0 && peak > 0) {
    ceilingBoxes.push({ x0: x(x1) - 140, x1: x(x1), y0: y(peak) - 16, y1: y(peak) });
    ceilingBoxes.push({ x0: x(x0) + 4, x1: x(x0) + 130, y0: y(bw * x0 * 2) - 20, y1: y(bw * x0 * 2) });
    ceilingBoxes.push({ x0: x(ridge) - 12, x1: x(ridge), y0: (M.top + H - M.bottom) / 2 - 50,
                        y1: (M.top + H - M.bottom) / 2 + 50 });
  }
  const { placed, unplaced } = placeLabels(
    byTime.slice(0, LABELLED).map(p => ({ text: `${p.op} (${p.phase})`, px: x(p.x), py: y(p.y) })),
    [...obstacles, legendBox, ...ceilingBoxes], frame);
  const rest = [...unplaced.map(t => byTime.find(p => `${p.op} (${p.phase})` === t)!),
                ...byTime.slice(LABELLED)].map(p => `${p.op} (${p.phase}) ${fmt(p.time_ms)} ms`);
  const lines: string[] = [];
  for (const item of rest) {
    const last = lines.length ? lines[lines.length - 1] : null;
    if (last !== null && (last + ', ' + item).length * 5.3 < W - 16) {
      lines[lines.length - 1] = last + ', ' + item;
    } else {
      lines.push(item);
    }
  }
  const h = H + (lines.length ? 10 + 12 * lines.length : 0);
  const svg = el('svg', { viewBox: `0 0 ${W} ${h}`, width: W, height: h, class: 'tuner-chart tuner-roofline' });
  axes(svg, x, y, 'arithmetic intensity (FLOP/byte)', 'achieved FLOP/s', 'Roofline (measured ceilings)', tick,
       v => si(v, 'FLOP/s'), RM);
  if (bw > 0 && peak > 0) {
    const path = [x0, ridge, x1].map(v => `${x(v)},${y(Math.min(bw * v, peak))}`).join(' ');
    el('polyline', { points: path, class: 'tuner-roof' }, svg);
    el('line', { x1: x(ridge), x2: x(ridge), y1: M.top, y2: H - M.bottom, class: 'tuner-ridge' }, svg);
    text(svg, x(x1) - 4, y(peak) - 4, `compute ${si(peak, 'FLOP/s')}`, 'tuner-ceiling', 'end');
    const mx = x0 * 2;
    text(svg, x(mx) + 4, y(bw * mx) - 8, `memory ${si(bw, 'B/s')}`, 'tuner-ceiling', 'start');
    const ry = (M.top + H - M.bottom) / 2;
    const r = text(svg, x(ridge) - 4, ry, `ridge ${tick(ridge)} FLOP/B`, 'tuner-ceiling');
    r.setAttribute('transform', `rotate(-90 ${x(ridge) - 4} ${ry})`);
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
  const labels = el('g', { class: 'tuner-oplabels' }, svg);
  for (const l of placed) {
    if (Math.hypot(l.x - l.px, l.y - l.py) > 25) {
      el('line', { x1: l.px, y1: l.py, x2: l.x, y2: l.y - 4, class: 'tuner-leader' }, labels);
    }
    text(labels, l.x, l.y, l.text, 'tuner-tick tuner-oplabel', l.anchor);
  }
  rooflineLegend(svg);
  lines.forEach((line, i) =>
    text(svg, 8, H + 8 + 12 * i, (i === 0 ? 'not labelled, by time: ' : '') + line, 'tuner-tick tuner-unlabelled', 'start'));
  return svg;
}

function rooflineLegend(svg: SVGSVGElement) {
  const g = el('g', { class: 'tuner-legend' }, svg);
  const x0 = RM.left + 12;
  let yy = M.top + 12;
  el('circle', { cx: x0, cy: yy, r: 4, class: 'tuner-point tuner-marker' }, g);
  text(g, x0 + 8, yy + 4, 'prefill', 'tuner-tick', 'start');
  yy += 14;
  el('path', { d: `M${x0},${yy - 5} l4,8 l-8,0 z`, class: 'tuner-point tuner-marker' }, g);
  text(g, x0 + 8, yy + 4, 'decode', 'tuner-tick', 'start');
  for (const b of ['memory', 'compute', 'overhead']) {
    yy += 14;
    el('rect', { x: x0 - 4, y: yy - 4, width: 8, height: 8, class: `tuner-point tuner-${b}` }, g);
    text(g, x0 + 8, yy + 4, `${b}-bound`, 'tuner-tick', 'start');
  }
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
  // the SLO bounds are in the scales, so their lines are on the chart
  const x = linearScale([...trials.map(p => p.xv), ...constraintsOn(sweep, xm).map(c => c.bound)], M.left, W - M.right);
  const y = linearScale([...trials.map(p => p.yv), ...constraintsOn(sweep, ym).map(c => c.bound)], H - M.bottom, M.top);
  axes(svg, x, y, xm, ym, `Sweep ${sweep.study_name}`, fmt, fmt);
  for (const c of constraintsOn(sweep, xm)) {  // the SLOs, where the chart's axes show their metric
    const line = el('line', { x1: x(c.bound), x2: x(c.bound), y1: M.top, y2: H - M.bottom, class: 'tuner-slo' }, svg);
    line.setAttribute('data-slo', c.text);
    text(svg, x(c.bound) + 3, M.top + 10, `SLO ${c.op} ${fmt(c.bound)}`, 'tuner-tick tuner-slo-label', 'start');
  }
  for (const c of constraintsOn(sweep, ym)) {
    const line = el('line', { x1: M.left, x2: W - M.right, y1: y(c.bound), y2: y(c.bound), class: 'tuner-slo' }, svg);
    line.setAttribute('data-slo', c.text);
    text(svg, W - M.right - 3, y(c.bound) - 3, `SLO ${c.op} ${fmt(c.bound)}`, 'tuner-tick tuner-slo-label', 'end');
  }
  const front = trials.filter(p => sweep.pareto.includes(p.t.number)).sort((a, b) => a.xv - b.xv);
  if (front.length > 1) {
    el('polyline', { points: front.map(p => `${x(p.xv)},${y(p.yv)}`).join(' '), class: 'tuner-front' }, svg);
  }
  for (const p of front) {  // a ring on every point of the front: a front of one point is marked too
    const ring = el('circle', { cx: x(p.xv), cy: y(p.yv), r: 8.5, class: 'tuner-front-mark' }, svg);
    ring.setAttribute('data-front', String(p.t.number));
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
  axes(svg, x, y, 'time (s)', 'requests', 'Queue and batch over time', fmt, fmt);
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
  axes(svg, x, y, `${label} (ms)`, 'share of requests', `${label} CDF`, fmt, fmt);
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

const RUN_CLASSES = ['tuner-run-a', 'tuner-run-b', 'tuner-run-c', 'tuner-run-d'];

/** Decode step latency over each run of a comparison, one line per run. */
export function compareStepsChart(c: CompareRecord): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'tuner-chart tuner-compare-steps' });
  const series = c.runs.map(r => r.timings?.decode_step_ms ?? []);
  const x = linearScale([1, ...series.map(s => s.length)], M.left, W - M.right);
  const y = linearScale([0, ...series.flat()], H - M.bottom, M.top, true);
  axes(svg, x, y, 'decode step', 'ms', 'Per-step latency, run against run', fmt, fmt);
  series.forEach((steps, i) => {
    if (!steps.length) {
      return;
    }
    const d = steps.map((v, j) => `${j === 0 ? 'M' : 'L'}${x(j + 1)},${y(v)}`).join(' ');
    const path = el('path', { d, class: `tuner-line ${RUN_CLASSES[i % RUN_CLASSES.length]}` }, svg);
    path.setAttribute('data-run', c.names[i]);
    path.setAttribute('data-steps', String(steps.length));
  });
  legend(svg, c.names.map((n, i) => [RUN_CLASSES[i % RUN_CLASSES.length], `${n} ${c.runs[i].run_id}`] as [string, string]));
  return svg;
}

/** Each op profiled in both A and B: its roofline point in A (hollow) and in B (filled), an arrow from A to B. */
export function compareRooflineChart(c: CompareRecord): SVGSVGElement {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'tuner-chart tuner-compare-roofline' });
  const [a, b] = c.runs;
  const pb = new Map(rooflinePoints(b).map(p => [p.label, p]));
  const pairs = rooflinePoints(a).filter(p => pb.has(p.label)).map(p => [p, pb.get(p.label)!] as const);
  const { bw, peak, ridge } = roof(a);
  const xs = pairs.flatMap(([p, q]) => [p.x, q.x]);
  const ys = pairs.flatMap(([p, q]) => [p.y, q.y]);
  const x = logScale([...xs, ridge / 10, ridge * 10], RM.left, W - M.right);
  const y = logScale([...ys, peak, peak / 1e4], H - M.bottom, M.top);
  axes(svg, x, y, 'arithmetic intensity (FLOP/byte)', 'achieved FLOP/s', `Roofline: ${c.names[0]} (hollow) to ${c.names[1]}`,
       tick, v => si(v, 'FLOP/s'), RM);
  const defs = el('defs', {}, svg);
  const marker = el('marker', { id: 'tuner-arrowhead', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 6,
                                markerHeight: 6, orient: 'auto-start-reverse' }, defs);
  el('path', { d: 'M0,0 L10,5 L0,10 z', class: 'tuner-arrowhead' }, marker);
  if (bw > 0 && peak > 0) {
    const [x0, x1] = x.domain;
    el('polyline', { points: [x0, ridge, x1].map(v => `${x(v)},${y(Math.min(bw * v, peak))}`).join(' '),
                     class: 'tuner-roof' }, svg);
  }
  const g = el('g', { class: 'tuner-points' }, svg);
  for (const [p, q] of pairs) {
    const arrow = el('line', { x1: x(p.x), y1: y(p.y), x2: x(q.x), y2: y(q.y), class: 'tuner-arrow',
                               'marker-end': 'url(#tuner-arrowhead)' }, g);
    arrow.setAttribute('data-op', p.label);
    el('title', {}, arrow).textContent = `${p.label}: ${fmt(p.time_ms)} ms -> ${fmt(q.time_ms)} ms ` +
      `(${change((q.time_ms - p.time_ms) / p.time_ms)})`;
    el('circle', { cx: x(p.x), cy: y(p.y), r: 5, class: `tuner-before tuner-stroke-${p.bound}` }, g);
    el('circle', { cx: x(q.x), cy: y(q.y), r: 5, class: `tuner-point tuner-${q.bound}` }, g);
  }
  return svg;
}

export function compareTable(c: CompareRecord): HTMLTableElement {
  const [head, ...rows] = compareRows(c);
  return table(head, rows, 'tuner-compare-table');
}

export function compareOpsTable(c: CompareRecord): HTMLTableElement {
  const rows = compareOps(c).map(r => [r.phase, r.op, ...r.ms.map(v => fmt(v)), ...r.change.map(change)]);
  return table(['phase', 'op', ...c.names.map(n => `${n} ms`), ...c.names.slice(1).map(n => `${n} vs A`)], rows,
               'tuner-compare-ops');
}
