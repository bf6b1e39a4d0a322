// Unit tests of the record parsing and chart scales (node's test runner: npm test).
import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import {
  breakdown,
  cdf,
  compareOps,
  compareRows,
  parseCompare,
  constraintsOn,
  fmt,
  overlaps,
  pct,
  percentiles,
  placeLabels,
  si,
  tick,
  linearScale,
  logScale,
  measuredTrials,
  metricRows,
  paretoAxes,
  parseRun,
  parseServe,
  parseSweep,
  roof,
  rooflinePoints,
  serveRows,
  trialKind,
  trialMetric
} from '../data';

const op = (phase: string, name: string, time_ms: number, flops: number, bytes: number, bound: string) => ({
  phase, op: name, calls: 2, time_ms, flops, bytes, intensity: bytes ? flops / bytes : 0,
  achieved_tflops: flops / (time_ms / 1e3) / 1e12, achieved_gbs: bytes / (time_ms / 1e3) / 1e9,
  pct_peak_compute: 0.1, pct_peak_bandwidth: 0.8, bound
});

const RUN = {
  schema: 'tuner.run/1', run_id: 'abc',
  config: { model: 'smollm2-135m', dtype: 'float32', quant: 'int8', kv_cache: 'paged', kv_dtype: 'auto',
            device: 'cpu', backend: 'torch' },
  workload: {}, hardware: { name: 'AMD EPYC', bandwidth_gbs: 50, matmul_tflops: 0.5 },
  metrics: { ttft_ms: 10, ttft_ms_p50: 10, ttft_ms_p90: 11, ttft_ms_p99: 12, tpot_ms: null, output_tok_s: 123.456,
             total_tok_s: 400, mbu: 0.5, mfu: 0.01 },
  ops: [op('decode', 'qkv_proj', 3, 2e6, 4e6, 'memory'), op('decode', 'rope', 1, 0, 1e3, 'overhead'),
        op('prefill', 'qkv_proj', 2, 5e9, 4e6, 'compute')]
};

test('a run record is checked and its metrics read as rows', () => {
  assert.throws(() => parseRun({ schema: 'x' }), /expected "tuner.run\/1"/);
  assert.throws(() => parseRun(null), /not a tuner run record/);
  const run = parseRun(RUN);
  const rows = Object.fromEntries(metricRows(run));
  assert.equal(rows.model, 'smollm2-135m (float32, quant=int8, kv=paged/auto)');
  assert.equal(rows['TTFT ms'], 'mean 10  p50 10  p90 11  p99 12');
  assert.equal(rows['TPOT ms'], undefined); // a null metric is left out, not drawn as 0
  assert.equal(rows.throughput, '123 output tok/s, 400 total tok/s'); // tuner.fmt.num: 3 digits
  assert.equal(rows.decode, 'MBU 50.0% of 50 GB/s; MFU 1.00%');
});

test('one roofline point per op with work; the roof from the measured ceilings', () => {
  const run = parseRun(RUN);
  const pts = rooflinePoints(run);
  assert.deepEqual(pts.map(p => p.label), ['decode: qkv_proj', 'prefill: qkv_proj']); // rope has no FLOPs
  assert.equal(pts[0].x, 0.5);
  assert.ok(Math.abs(pts[0].y - 2e6 / 3e-3) < 1e-3);
  assert.match(pts[0].tooltip, /decode: qkv_proj \(memory-bound\)\ntime 3 ms over 2 calls/);
  assert.match(pts[0].tooltip, /80\.0% of peak/);
  const r = roof(run);
  assert.equal(r.bw, 50e9);
  assert.equal(r.peak, 0.5e12);
  assert.equal(r.ridge, 10);
});

test('the time breakdown is largest first with shares of its phase', () => {
  const b = breakdown(parseRun(RUN));
  assert.deepEqual(b.map(r => r.label), ['decode: qkv_proj', 'prefill: qkv_proj', 'decode: rope']);
  assert.equal(b[0].share, 0.75);
  assert.equal(b[1].share, 1);
});

test('log and linear scales map their domains onto the range, with round ticks', () => {
  const s = logScale([3, 250], 0, 100);
  assert.deepEqual(s.domain, [1, 1000]);
  assert.deepEqual(s.ticks, [1, 10, 100, 1000]);
  assert.equal(s(1), 0);
  assert.equal(s(1000), 100);
  assert.ok(Math.abs(s(10) - 100 / 3) < 1e-9);
  assert.equal(s(0), 0); // clamped, not -Infinity
  const l = linearScale([3, 47], 100, 0, true);
  assert.deepEqual(l.domain, [0, 50]);
  assert.deepEqual(l.ticks, [0, 10, 20, 30, 40, 50]);
  assert.equal(l(0), 100);
  assert.equal(l(50), 0);
  assert.deepEqual(linearScale([], 0, 1).domain, [0, 1]);
});

const SWEEP = {
  schema: 'tuner.sweep/1', study_name: 's', objectives: ['max:output_tok_s', 'min:tpot_ms_p99'],
  constraints: ['tpot_ms_p99 <= 20'], space: { batch_size: [1, 8] }, pareto: [0], best: {},
  trials: [
    { number: 0, state: 'complete', params: { batch_size: 8 }, values: [300, 15], metrics: { mbu: 0.4 },
      feasible: true, violated: [], error: null, duplicate_of: null },
    { number: 1, state: 'complete', params: { batch_size: 1 }, values: [40, 25], metrics: {},
      feasible: false, violated: ['tpot_ms_p99 <= 20'], error: null, duplicate_of: null },
    { number: 2, state: 'complete', params: { batch_size: 64 }, values: [0, 1e12], metrics: {},
      feasible: false, violated: [], error: 'out of memory: RuntimeError', duplicate_of: null },
    { number: 3, state: 'complete', params: { batch_size: 8 }, values: [300, 15], metrics: {},
      feasible: true, violated: [], error: null, duplicate_of: 0 }
  ]
};

test('a sweep record: its axes, trial kinds and metrics; re-proposed points left out', () => {
  assert.throws(() => parseSweep(RUN), /expected "tuner.sweep\/1"/);
  const s = parseSweep(SWEEP);
  assert.deepEqual(paretoAxes(s), { x: 'tpot_ms_p99', y: 'output_tok_s' });
  assert.deepEqual(measuredTrials(s).map(t => t.number), [0, 1, 2]);
  assert.deepEqual(s.trials.map(trialKind), ['feasible', 'infeasible', 'failed', 'feasible']);
  assert.equal(trialMetric(s, s.trials[0], 'tpot_ms_p99'), 15);
  assert.equal(trialMetric(s, s.trials[0], 'mbu'), 0.4);
  assert.equal(trialMetric(s, s.trials[2], 'output_tok_s'), null); // a failed trial's placeholder is not data
  assert.deepEqual(paretoAxes({ ...s, objectives: ['max:output_tok_s'] }), { x: 'tpot_ms_p99', y: 'output_tok_s' });
});

const SERVE = {
  schema: 'tuner.serve/1', run_id: 'srv',
  config: { model: 'tiny', dtype: 'float32', quant: 'none', kv_cache: 'paged', kv_dtype: 'auto', scheduling: 'continuous',
            batch_size: 4, max_num_batched_tokens: 64 },
  traffic: { rate: 2, prompt_len: [8, 32], output_len: 4 }, slo: { ttft_ms: 100 }, hardware: {},
  metrics: { requests: 3, finished: 2, rejected: 1, duration_s: 1.5, ttft_ms: 30, ttft_ms_p50: 30, ttft_ms_p90: 46,
             ttft_ms_p99: 49.6, ttft_ms_samples: 2, tpot_ms: 5, tpot_ms_samples: 1, request_throughput: 1.333,
             output_tok_s: 5.333, goodput_req_s: 0.6667, slo_attainment: 0.5, preemptions: 1, prefix_hit_rate: 0.25 },
  requests: [
    { id: 0, arrival_s: 0, prompt_len: 8, output_len: 4, finished: true, ttft_ms: 10, tpot_ms: 5, e2e_ms: 25,
      queue_ms: 1, rejected: null },
    { id: 1, arrival_s: 0.5, prompt_len: 30, output_len: 4, finished: true, ttft_ms: 50, tpot_ms: null, e2e_ms: 60,
      queue_ms: 2, rejected: null },
    { id: 2, arrival_s: 1, prompt_len: 500, output_len: 0, finished: false, ttft_ms: null, tpot_ms: null,
      e2e_ms: null, queue_ms: null, rejected: 'too long' }
  ],
  timeline: [{ t_ms: 5, running: 1, waiting: 0, kv_blocks_used: 1 }]
};

test('a serve record: its table rows, one sample said as such, and latency CDFs', () => {
  assert.throws(() => parseServe(RUN), /expected "tuner.serve\/1"/);
  const s = parseServe(SERVE);
  const rows = Object.fromEntries(serveRows(s));
  assert.equal(rows.traffic, '3 requests at 2 req/s, prompt 8-32 tokens, output 4');
  assert.equal(rows.finished, '2 of 3 (1 rejected) in 1.50 s');
  assert.equal(rows['TTFT ms'], 'mean 30  p50 30  p90 46  p99 49.6');
  assert.equal(rows['TPOT ms'], '5 (1 sample)');
  assert.equal(rows.goodput, '0.667 req/s met the SLO (ttft_ms <= 100): 50.0% of requests');
  assert.equal(rows['queue ms'], undefined);
  assert.deepEqual(cdf([30, null, 10, 20]), [{ x: 10, p: 1 / 3 }, { x: 20, p: 2 / 3 }, { x: 30, p: 1 }]);
  assert.deepEqual(parseServe({ ...SERVE, timeline: undefined }).timeline, []);
});

test('numbers as tuner.fmt writes them: 3 significant digits, percents, no scientific notation', () => {
  const cases: [number | null, string][] = [[0.00066, '0.000660'], [4.123, '4.12'], [41.23, '41.2'], [412.3, '412'],
    [9665.2, '9665'], [19370.4, '19,370'], [0, '0'], [-3.14159, '-3.14'], [12345, '12,345'], [1e-9, '0'],
    [null, '–']];
  for (const [x, want] of cases) {
    assert.equal(fmt(x), want, String(x));
  }
  assert.deepEqual([0.1088, 0.0294, 0.0042, 1, 0].map(pct), ['10.9%', '2.94%', '0.420%', '100.0%', '0%']);
  assert.deepEqual([0.01, 1, 30.5, 1000, 3.5612].map(tick), ['0.01', '1', '30.5', '1000', '3.56']);
  assert.equal(si(30.5e9, 'B/s'), '30.5 GB/s');
  assert.equal(si(1.2e12, 'FLOP/s'), '1.2 TFLOP/s');
  assert.equal(si(4e7, 'FLOP/s'), '40 MFLOP/s');
  assert.equal(percentiles({ x: 3.31, x_p50: 3.31, x_p90: 3.31, x_p99: 3.31 }, 'x', 1), '3.31 (1 sample)');
  const rows = Object.fromEntries(metricRows(parseRun({ ...RUN, workload: { n_prompts: 1 } })));
  assert.equal(rows['TTFT ms'], '10 (1 sample)');
});

test('labels are placed where no two overlap, inside the frame, and what fits nowhere is listed', () => {
  const frame = { x0: 0, y0: 0, x1: 300, y1: 200 };
  const pts = [0, 1, 2, 3, 4, 5].map(i => ({ text: `gate_up_proj (decode) ${i}`, px: 150, py: 100 + i }));
  const { placed, unplaced } = placeLabels(pts, [], frame);
  assert.equal(placed.length + unplaced.length, 6);
  assert.ok(placed.length >= 4, String(placed.length));
  for (let i = 0; i < placed.length; i++) {
    const b = placed[i].box;
    assert.ok(b.x0 >= 0 && b.x1 <= 300 && b.y0 >= 0 && b.y1 <= 200);
    for (let j = i + 1; j < placed.length; j++) {
      assert.ok(!overlaps(b, placed[j].box), `${i} overlaps ${j}`);
    }
  }
  const crowded = placeLabels([{ text: 'x', px: 10, py: 10 }], [frame], frame);  // the frame is full
  assert.deepEqual(crowded, { placed: [], unplaced: ['x'] });
});

test('a sweep names its SLO lines by metric', () => {
  const s = parseSweep(SWEEP);
  assert.deepEqual(constraintsOn(s, 'tpot_ms_p99'), [{ op: '<=', bound: 20, text: 'tpot_ms_p99 <= 20' }]);
  assert.deepEqual(constraintsOn(s, 'output_tok_s'), []);
});

test('a comparison: headed columns, ratios to A, and the change of each op', () => {
  assert.throws(() => parseCompare({ schema: 'tuner.compare/1', runs: [RUN] }), /two runs or more/);
  const b = { ...RUN, run_id: 'def', config: { ...RUN.config, quant: 'int4' },
              metrics: { ...RUN.metrics, ttft_ms: 5, mbu: 0.25 },
              ops: [op('decode', 'qkv_proj', 1.5, 2e6, 4e6, 'memory'), op('prefill', 'qkv_proj', 2, 5e9, 4e6, 'compute')] };
  const c = parseCompare({ schema: 'tuner.compare/1', names: ['A', 'B'], runs: [RUN, b] });
  const rows = compareRows(c);
  assert.deepEqual(rows[0], ['', 'A abc', 'B def', 'B/A']);
  const byKey = Object.fromEntries(rows.slice(1).map(r => [r[0], r.slice(1)]));
  assert.deepEqual(byKey.quant, ['int8', 'int4', '']);
  assert.deepEqual(byKey.ttft_ms, ['10', '5', '0.50x']);
  assert.deepEqual(byKey.mbu, ['50.0%', '25.0%', '0.50x']);
  assert.equal(byKey.model, undefined); // the same in both: not listed
  const ops = compareOps(c);
  assert.deepEqual(ops.map(o => `${o.phase}:${o.op}`), ['decode:qkv_proj', 'prefill:qkv_proj', 'decode:rope']);
  assert.deepEqual(ops[0].ms, [3, 1.5]);
  assert.deepEqual(ops[0].change, [-0.5]);
  assert.deepEqual(ops[2].ms, [1, null]); // profiled in A only
  assert.deepEqual(ops[2].change, [null]);
});
