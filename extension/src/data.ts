// Pure functions over tuner's records: what the renderers draw, with no DOM. Unit-tested in
// src/__tests__/data.spec.ts.

export const RUN_MIME = 'application/vnd.tuner.run+json';
export const SWEEP_MIME = 'application/vnd.tuner.sweep+json';

export interface OpRecord {
  phase: string;
  op: string;
  calls: number;
  time_ms: number;
  flops: number;
  bytes: number;
  intensity: number;
  achieved_tflops: number;
  achieved_gbs: number;
  pct_peak_compute: number;
  pct_peak_bandwidth: number;
  bound: string;
  explanation?: string;
}

export interface RunRecord {
  schema: string;
  run_id: string;
  config: Record<string, unknown>;
  sampling?: Record<string, unknown>;
  workload: Record<string, unknown>;
  hardware: Record<string, unknown>;
  metrics: Record<string, number | null>;
  timings?: { decode_step_ms?: number[] };
  ops?: OpRecord[];
}

export interface Trial {
  number: number;
  state: string;
  params: Record<string, unknown>;
  values: number[] | null;
  metrics: Record<string, number | null>;
  feasible: boolean;
  violated: string[];
  error: string | null;
  duplicate_of?: number | null;
}

export interface SweepRecord {
  schema: string;
  study_name: string;
  objectives: string[];
  constraints: string[];
  space: Record<string, unknown>;
  trials: Trial[];
  pareto: number[];
  best: Record<string, number>;
}

/** Check a record's schema; the error names what was expected. */
export function parseRun(data: unknown): RunRecord {
  const r = data as RunRecord;
  if (!r || typeof r !== 'object' || r.schema !== 'tuner.run/1') {
    throw new Error(`not a tuner run record (schema ${JSON.stringify((r as any)?.schema)}, expected "tuner.run/1")`);
  }
  return { ...r, ops: Array.isArray(r.ops) ? r.ops : [] };
}

export function parseSweep(data: unknown): SweepRecord {
  const s = data as SweepRecord;
  if (!s || typeof s !== 'object' || s.schema !== 'tuner.sweep/1') {
    throw new Error(
      `not a tuner sweep record (schema ${JSON.stringify((s as any)?.schema)}, expected "tuner.sweep/1")`
    );
  }
  return { ...s, trials: Array.isArray(s.trials) ? s.trials : [], pareto: s.pareto ?? [] };
}

/** The headline metrics of a run as [label, text] rows, in the order the Python table prints them. */
export function metricRows(run: RunRecord): [string, string][] {
  const m = run.metrics;
  const rows: [string, string][] = [];
  const c = run.config;
  rows.push(['model', `${c.model} (${c.dtype}, quant=${c.quant}, kv=${c.kv_cache}/${c.kv_dtype})`]);
  rows.push(['device', `${run.hardware.name ?? ''} (${c.device}, ${c.backend})`]);
  for (const [key, label] of [
    ['ttft_ms', 'TTFT ms'],
    ['tpot_ms', 'TPOT ms'],
    ['itl_ms', 'ITL ms'],
    ['e2e_ms', 'e2e ms']
  ]) {
    if (m[key] === null || m[key] === undefined) {
      continue;
    }
    const requests = run.workload?.n_prompts as number | undefined;
    const n = key === 'itl_ms' ? (requests ? Number(m.output_tokens) - requests : null) : requests;
    rows.push([label, percentiles(m, key, n)]);
  }
  if (m.output_tok_s !== undefined && m.output_tok_s !== null) {
    rows.push(['throughput', `${fmt(m.output_tok_s)} output tok/s, ${fmt(m.total_tok_s)} total tok/s`]);
  }
  if (m.mbu !== undefined && m.mbu !== null) {
    rows.push(['decode', `MBU ${pct(m.mbu)} of ${fmt(run.hardware.bandwidth_gbs as number)} GB/s; MFU ${pct(m.mfu)}`]);
  }
  return rows;
}

/** A number as tuner.fmt.num writes it: `digits` significant digits, never scientific notation, thousands
 * separators from 10,000 up (0.000660, 4.12, 412, 19,370). */
export function fmt(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined || Number.isNaN(x)) {
    return '–';
  }
  if (!isFinite(x)) {
    return x > 0 ? 'inf' : '-inf';
  }
  if (x === 0) {
    return '0';
  }
  if (Number.isInteger(x) && Math.abs(x) < 1e15) {
    return Math.abs(x) >= 10000 ? x.toLocaleString('en-US') : String(x);
  }
  return sig(x, digits);
}

/** `digits` significant digits of a non-zero finite number, as a float is written (1 -> "1.00"). */
function sig(x: number, digits = 3): string {
  const mag = Math.floor(Math.log10(Math.abs(x)));
  if (mag >= digits - 1) {
    const r = Math.round(x);
    return Math.abs(r) >= 10000 ? r.toLocaleString('en-US') : String(r);
  }
  const places = digits - 1 - mag;
  if (places > 8) {
    return Math.abs(x) < 5e-9 ? '0' : x.toFixed(8).replace(/0+$/, '');
  }
  return x.toFixed(places);
}

/** A fraction as a percent, as tuner.fmt.pct writes it: one decimal from 10% up, three significant digits below. */
export function pct(x: number | null | undefined): string {
  if (x === null || x === undefined || !isFinite(x)) {
    return '–';
  }
  const p = 100 * x;
  if (p === 0) {
    return '0%';
  }
  return Math.abs(p) >= 10 ? `${p.toFixed(1)}%` : `${sig(p)}%`;
}

/** An axis tick: the shortest decimal of 3 significant digits, never scientific notation (0.01, 1, 30.5). */
export function tick(v: number): string {
  if (v === 0) {
    return '0';
  }
  const r = Number(v.toPrecision(3));
  const places = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(r))));
  return places > 0 ? r.toFixed(places).replace(/\.?0+$/, '') : r.toFixed(0);
}

/** A value with an SI prefix and its unit: 30.5 GB/s, 1 TFLOP/s, 40 MFLOP/s. */
export function si(v: number, unit: string): string {
  for (const [prefix, scale] of [['P', 1e15], ['T', 1e12], ['G', 1e9], ['M', 1e6], ['k', 1e3]] as [string, number][]) {
    if (Math.abs(v) >= scale) {
      return `${tick(v / scale)} ${prefix}${unit}`;
    }
  }
  return `${tick(v)} ${unit}`;
}

/** A box in SVG coordinates (x0 < x1, y0 < y1). */
export interface Box {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

export function overlaps(a: Box, b: Box): boolean {
  return a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
}

export interface PlacedLabel {
  text: string;
  x: number; // where the text starts (anchor start) or ends (anchor end), at its baseline y
  y: number;
  anchor: 'start' | 'end';
  box: Box;
  px: number; // the point it names
  py: number;
}

/** Place each label beside its point (px, py) at the first offset whose box, with text `charW` wide per character
 * and `lineH` tall, stays inside `frame` and overlaps no label placed before and no obstacle; far offsets are for a
 * leader line. Labels that fit nowhere come back in `unplaced`, for a list under the chart. */
export function placeLabels(
  points: { text: string; px: number; py: number }[],
  obstacles: Box[],
  frame: Box,
  charW = 6.2,
  lineH = 12
): { placed: PlacedLabel[]; unplaced: string[] } {
  const offsets: [number, number][] = [[7, -6], [7, 14], [-7, -6], [-7, 14], [9, -16], [9, 24], [-9, -16], [-9, 24]];
  for (const r of [30, 45, 60]) {
    for (const [dx, dy] of [[1, -1], [1, 1], [-1, -1], [-1, 1], [1.4, 0], [-1.4, 0], [0, -1], [0, 1]]) {
      offsets.push([dx * r, dy * r]);
    }
  }
  const boxes = [...obstacles];
  const placed: PlacedLabel[] = [];
  const unplaced: string[] = [];
  for (const p of points) {
    const w = p.text.length * charW + 4;
    let done = false;
    for (const [dx, dy] of offsets) {
      const anchor = dx >= 0 ? 'start' : 'end';
      const x = p.px + dx;
      const y = p.py + dy;
      const box = { x0: anchor === 'start' ? x - 2 : x - w + 2, x1: anchor === 'start' ? x + w - 2 : x + 2,
                    y0: y - lineH + 2, y1: y + 3 };
      const inside = box.x0 >= frame.x0 && box.x1 <= frame.x1 && box.y0 >= frame.y0 && box.y1 <= frame.y1;
      if (inside && !boxes.some(b => overlaps(b, box))) {
        placed.push({ text: p.text, x, y, anchor, box, px: p.px, py: p.py });
        boxes.push(box);
        done = true;
        break;
      }
    }
    if (!done) {
      unplaced.push(p.text);
    }
  }
  return { placed, unplaced };
}

/** The constraints of a sweep on one metric, parsed from "metric <= bound" strings. */
export function constraintsOn(sweep: SweepRecord, metric: string): { op: string; bound: number; text: string }[] {
  const out = [];
  for (const c of sweep.constraints ?? []) {
    const m = /^\s*(\w+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$/.exec(c);
    if (m && m[1] === metric) {
      out.push({ op: m[2], bound: Number(m[3]), text: c });
    }
  }
  return out;
}

/** "mean 4.12  p50 4.01  p90 4.60  p99 5.31", or "4.12 (1 sample)" when the figures rest on one sample. */
export function percentiles(m: Record<string, any>, key: string, samples?: number | null): string {
  const n = samples ?? m[`${key}_samples`];
  if (n === 1) {
    return `${fmt(m[key])} (1 sample)`;
  }
  return `mean ${fmt(m[key])}  ` + [50, 90, 99].map(p => `p${p} ${fmt(m[`${key}_p${p}`])}`).join('  ');
}

/** A log10 scale: maps [lo, hi] (positive) onto [r0, r1]. */
export interface Scale {
  (v: number): number;
  domain: [number, number];
  ticks: number[];
}

export function logScale(values: number[], r0: number, r1: number): Scale {
  const pos = values.filter(v => v > 0 && isFinite(v));
  let lo = pos.length ? Math.min(...pos) : 1;
  let hi = pos.length ? Math.max(...pos) : 10;
  lo = Math.pow(10, Math.floor(Math.log10(lo)));
  hi = Math.pow(10, Math.ceil(Math.log10(hi)));
  if (hi <= lo) {
    hi = lo * 10;
  }
  const a = Math.log10(lo);
  const b = Math.log10(hi);
  const f = ((v: number) => r0 + ((Math.log10(Math.max(v, lo)) - a) / (b - a)) * (r1 - r0)) as Scale;
  f.domain = [lo, hi];
  f.ticks = [];
  for (let e = a; e <= b + 1e-9; e++) {
    f.ticks.push(Math.pow(10, Math.round(e)));
  }
  return f;
}

export function linearScale(values: number[], r0: number, r1: number, zero = false): Scale {
  const fin = values.filter(v => isFinite(v));
  let lo = fin.length ? Math.min(...fin) : 0;
  let hi = fin.length ? Math.max(...fin) : 1;
  if (zero) {
    lo = Math.min(0, lo);
  }
  if (hi === lo) {
    hi = lo + 1;
  }
  const step = niceStep((hi - lo) / 5);
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil(hi / step) * step;
  const f = ((v: number) => r0 + ((v - lo) / (hi - lo)) * (r1 - r0)) as Scale;
  f.domain = [lo, hi];
  f.ticks = [];
  for (let t = lo; t <= hi + step / 2; t += step) {
    f.ticks.push(Number(t.toPrecision(12)));
  }
  return f;
}

function niceStep(raw: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

/** One roofline point per (phase, op) with measurable work: x = FLOP/byte, y = achieved FLOP/s. */
export interface RooflinePoint {
  label: string;
  phase: string;
  op: string;
  x: number;
  y: number;
  time_ms: number;
  bound: string;
  tooltip: string;
}

export function rooflinePoints(run: RunRecord): RooflinePoint[] {
  return (run.ops ?? [])
    .filter(o => o.flops > 0 && o.time_ms > 0 && o.bytes > 0)
    .map(o => ({
      label: `${o.phase}: ${o.op}`,
      phase: o.phase,
      op: o.op,
      x: o.intensity,
      y: o.achieved_tflops * 1e12,
      time_ms: o.time_ms,
      bound: o.bound,
      tooltip:
        `${o.phase}: ${o.op} (${o.bound}-bound)\n` +
        `time ${fmt(o.time_ms)} ms over ${o.calls} calls\n` +
        `${fmt(o.achieved_tflops)} TFLOP/s (${pct(o.pct_peak_compute)} of peak), ` +
        `${fmt(o.achieved_gbs)} GB/s (${pct(o.pct_peak_bandwidth)} of peak)\n` +
        `intensity ${fmt(o.intensity)} FLOP/B`
    }));
}

/** The roof: min(bandwidth * intensity, matmul peak) in FLOP/s, and the ridge intensity. */
export function roof(run: RunRecord): { bw: number; peak: number; ridge: number } {
  const bw = Number(run.hardware.bandwidth_gbs ?? 0) * 1e9;
  const peak = Number(run.hardware.matmul_tflops ?? 0) * 1e12;
  return { bw, peak, ridge: bw > 0 ? peak / bw : 0 };
}

/** Time per (phase, op), largest first, with its share of its phase. */
export function breakdown(run: RunRecord): { label: string; time_ms: number; share: number; bound: string }[] {
  const total: Record<string, number> = {};
  for (const o of run.ops ?? []) {
    total[o.phase] = (total[o.phase] ?? 0) + o.time_ms;
  }
  return (run.ops ?? [])
    .map(o => ({
      label: `${o.phase}: ${o.op}`,
      time_ms: o.time_ms,
      share: total[o.phase] ? o.time_ms / total[o.phase] : 0,
      bound: o.bound
    }))
    .sort((a, b) => b.time_ms - a.time_ms);
}

/** The first two objectives' metric names (or the objective and TPOT p99) for the Pareto chart. */
export function paretoAxes(sweep: SweepRecord): { x: string; y: string } {
  const names = sweep.objectives.map(o => o.split(':').pop() as string);
  const y = names[0];
  const x = names.length > 1 ? names[1] : y === 'tpot_ms_p99' ? 'output_tok_s' : 'tpot_ms_p99';
  return { x, y };
}

export function trialMetric(sweep: SweepRecord, t: Trial, name: string): number | null {
  const i = sweep.objectives.findIndex(o => o.split(':').pop() === name);
  if (i >= 0 && t.values && !t.error) {
    return t.values[i];
  }
  const v = t.metrics?.[name];
  return v === undefined ? null : v;
}

export type TrialKind = 'feasible' | 'infeasible' | 'failed';

export function trialKind(t: Trial): TrialKind {
  return t.error ? 'failed' : t.feasible ? 'feasible' : 'infeasible';
}

/** Trials that measured something (re-proposed points reuse a measurement and are left out). */
export function measuredTrials(sweep: SweepRecord): Trial[] {
  return sweep.trials.filter(t => t.duplicate_of === null || t.duplicate_of === undefined);
}

// -- serving benchmarks (tuner.serve/1) ----------------------------------------------------------------

export const SERVE_MIME = 'application/vnd.tuner.serve+json';

export interface ServeRequest {
  id: number;
  arrival_s: number;
  prompt_len: number;
  output_len: number;
  finished: boolean;
  ttft_ms: number | null;
  tpot_ms: number | null;
  e2e_ms: number | null;
  queue_ms: number | null;
  rejected: string | null;
}

export interface ServeRecord {
  schema: string;
  run_id: string;
  config: Record<string, unknown>;
  traffic: Record<string, unknown>;
  slo: Record<string, number>;
  hardware: Record<string, unknown>;
  metrics: Record<string, number | null>;
  requests: ServeRequest[];
  timeline: { t_ms: number; running: number; waiting: number; kv_blocks_used: number | null }[];
}

export function parseServe(data: unknown): ServeRecord {
  const s = data as ServeRecord;
  if (!s || typeof s !== 'object' || s.schema !== 'tuner.serve/1') {
    throw new Error(
      `not a tuner serve record (schema ${JSON.stringify((s as any)?.schema)}, expected "tuner.serve/1")`
    );
  }
  return {
    ...s,
    requests: Array.isArray(s.requests) ? s.requests : [],
    timeline: Array.isArray(s.timeline) ? s.timeline : [],
    slo: s.slo ?? {}
  };
}

function span(v: unknown): string {
  return Array.isArray(v) ? `${v[0]}-${v[1]}` : String(v);
}

/** The serving table as [label, text] rows, as ServeResult.table() prints them. */
export function serveRows(s: ServeRecord): [string, string][] {
  const m = s.metrics;
  const c = s.config;
  const t = s.traffic;
  const rate = t.trace ? `trace ${t.trace}` : t.rate === null || t.rate === undefined ? 'inf (all at once)' : `${t.rate} req/s`;
  const rows: [string, string][] = [
    ['model', `${c.model} (${c.dtype}, quant=${c.quant}, kv=${c.kv_cache}/${c.kv_dtype})`],
    ['scheduler', `${c.scheduling}, max ${c.batch_size} running, token budget ${c.max_num_batched_tokens || 'none'}`],
    ['traffic', `${m.requests} requests at ${rate}, prompt ${span(t.prompt_len)} tokens, output ${span(t.output_len)}`],
    ['finished', `${m.finished} of ${m.requests} (${m.rejected} rejected) in ${fmt(m.duration_s)} s`]
  ];
  for (const [key, label] of [
    ['ttft_ms', 'TTFT ms'],
    ['tpot_ms', 'TPOT ms'],
    ['itl_ms', 'ITL ms'],
    ['e2e_ms', 'e2e ms'],
    ['queue_ms', 'queue ms']
  ]) {
    const n = m[`${key}_samples`] ?? 0;
    if (!n) {
      continue;
    }
    rows.push([label, percentiles(m, key)]);
  }
  rows.push(['throughput', `${fmt(m.request_throughput)} req/s, ${fmt(m.output_tok_s)} output tok/s`]);
  const limits = Object.entries(s.slo).map(([k, v]) => `${k} <= ${fmt(v as number)}`);
  if (limits.length) {
    rows.push(['goodput', `${fmt(m.goodput_req_s)} req/s met the SLO (${limits.join(', ')}): ${pct(m.slo_attainment)} of requests`]);
  }
  rows.push(['scheduler did', `${m.preemptions} preemptions, prefix-cache hits ${pct(m.prefix_hit_rate ?? 0)} of prompt tokens`]);
  return rows;
}

/** The empirical CDF of the non-null values: sorted x with the share of values at or below each. */
export function cdf(values: (number | null)[]): { x: number; p: number }[] {
  const xs = values.filter((v): v is number => v !== null && isFinite(v)).sort((a, b) => a - b);
  return xs.map((x, i) => ({ x, p: (i + 1) / xs.length }));
}

export const COMPARE_MIME = 'application/vnd.tuner.compare+json';

export interface CompareRecord {
  schema: string;
  names: string[];
  runs: RunRecord[];
}

export function parseCompare(data: unknown): CompareRecord {
  const c = data as CompareRecord;
  if (!c || typeof c !== 'object' || c.schema !== 'tuner.compare/1') {
    throw new Error(`not a tuner comparison (schema ${JSON.stringify((c as any)?.schema)}, expected "tuner.compare/1")`);
  }
  if (!Array.isArray(c.runs) || c.runs.length < 2) {
    throw new Error('not a complete tuner comparison: it needs two runs or more');
  }
  return { ...c, runs: c.runs.map(parseRun), names: c.names ?? c.runs.map((_, i) => String.fromCharCode(65 + i)) };
}

const COMPARED = ['ttft_ms', 'ttft_ms_p99', 'tpot_ms', 'tpot_ms_p99', 'itl_ms_p99', 'output_tok_s', 'mbu', 'mfu',
                  'usd_per_1m_output_tokens'];
const PERCENT = new Set(['mbu', 'mfu']);

/** The comparison's table as tuner.compare.Comparison.table() writes it: a header (A <id>, B <id>, ..., B/A, ...),
 * the knobs that differ, then the headline metrics and their ratios to A. */
export function compareRows(c: CompareRecord): string[][] {
  const blank = c.runs.slice(1).map(() => '');
  const rows: string[][] = [['', ...c.runs.map((r, i) => `${c.names[i]} ${r.run_id}`), ...c.names.slice(1).map(n => `${n}/A`)]];
  for (const section of ['config', 'sampling'] as const) {
    const maps = c.runs.map(r => (r[section] ?? {}) as Record<string, unknown>);
    const keys = [...new Set(maps.flatMap(m => Object.keys(m)))].sort();
    for (const k of keys) {
      const vs = maps.map(m => m[k]);
      if (vs.some(v => JSON.stringify(v) !== JSON.stringify(vs[0]))) {
        rows.push([section === 'config' ? k : `sampling ${k}`, ...vs.map(v => String(v)), ...blank]);
      }
    }
  }
  for (const key of COMPARED) {
    const vs = c.runs.map(r => r.metrics[key] ?? null);
    if (vs.every(v => v === null)) {
      continue;
    }
    const a = vs[0];
    rows.push([key, ...vs.map(v => (PERCENT.has(key) ? pct(v) : key.startsWith('usd') && v !== null ? `$${fmt(v)}` : fmt(v))),
               ...vs.slice(1).map(v => (a && v ? `${(v / a).toFixed(2)}x` : ''))]);
  }
  return rows;
}

/** Op by op: each run's time and each later run's change against A, the slowest first. */
export function compareOps(c: CompareRecord): { phase: string; op: string; ms: (number | null)[]; change: (number | null)[] }[] {
  const keys: string[] = [];
  const times = c.runs.map(r => {
    const m = new Map<string, number>();
    for (const o of r.ops ?? []) {
      const k = `${o.phase}\u0000${o.op}`;
      m.set(k, o.time_ms);
      if (!keys.includes(k)) {
        keys.push(k);
      }
    }
    return m;
  });
  return keys
    .map(k => {
      const [phase, op] = k.split('\u0000');
      const ms = times.map(t => t.get(k) ?? null);
      const a = ms[0];
      return { phase, op, ms, change: ms.slice(1).map(b => (a && b !== null ? (b - a) / a : null)) };
    })
    .sort((x, y) => Math.max(...y.ms.map(v => v ?? 0)) - Math.max(...x.ms.map(v => v ?? 0)));
}

/** A change against A: "+25.0%", "-8.10%". */
export function change(x: number | null): string {
  return x === null ? '' : `${x > 0 ? '+' : ''}${pct(x)}`;
}
