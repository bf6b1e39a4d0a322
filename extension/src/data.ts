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
  workload: Record<string, unknown>;
  hardware: Record<string, unknown>;
  metrics: Record<string, number | null>;
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
    const ps = [50, 90, 99].map(p => `p${p} ${fmt(m[`${key}_p${p}`])}`).join('  ');
    rows.push([label, `mean ${fmt(m[key])}  ${ps}`]);
  }
  if (m.output_tok_s !== undefined && m.output_tok_s !== null) {
    rows.push(['throughput', `${fmt(m.output_tok_s)} output tok/s, ${fmt(m.total_tok_s)} total tok/s`]);
  }
  if (m.mbu !== undefined && m.mbu !== null) {
    rows.push(['decode', `MBU ${pct(m.mbu)} of ${fmt(run.hardware.bandwidth_gbs as number)} GB/s; MFU ${pct(m.mfu)}`]);
  }
  return rows;
}

export function fmt(x: number | null | undefined, digits = 4): string {
  if (x === null || x === undefined || !isFinite(x)) {
    return '–';
  }
  if (x !== 0 && (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3)) {
    return x.toExponential(2);
  }
  return Number(x.toPrecision(digits)).toString();
}

export function pct(x: number | null | undefined): string {
  return x === null || x === undefined || !isFinite(x) ? '–' : `${(100 * x).toFixed(1)}%`;
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
    rows.push([
      label,
      n === 1 ? `${fmt(m[key])} (1 sample)` : `mean ${fmt(m[key])}  ` + [50, 90, 99].map(p => `p${p} ${fmt(m[`${key}_p${p}`])}`).join('  ')
    ]);
  }
  rows.push(['throughput', `${fmt(m.request_throughput)} req/s, ${fmt(m.output_tok_s)} output tok/s`]);
  const limits = Object.entries(s.slo).map(([k, v]) => `${k} <= ${v}`);
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
