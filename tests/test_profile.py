"""The profiler: cost model against hand counts and torch's own FLOP counter, the roofline verdicts on
this CPU, traces that TensorBoard (a real server) and Perfetto read, plots, and `tuner hw`."""

import dataclasses
import gzip
import json
import re
import time

import pytest
import torch

import tuner
from conftest import VOCAB
from tuner.cli import main
from tuner.models.args import resolve_model
from tuner.profile import cost
from tuner.profile.capture import classify
from tuner.profile.hardware import cache_dir, calibrate, datasheet_key, hw_table

LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")


def small_args(**kw):
    args, _ = resolve_model("tiny")
    fields = dict(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=96, vocab_size=100,
                  qk_norm=False, qkv_bias=False, o_bias=False, mlp_bias=False)
    return dataclasses.replace(args, **{**fields, **kw})


def test_cost_model_matches_hand_counts_for_every_op_in_decode():
    a = small_args()
    p = cost.Precision(act_bytes=4)
    seqs = [(1, 9), (1, 4)]  # two sequences decoding one token after 9 and 4 cached ones
    c = cost.step_costs(a, p, seqs, logits_rows=2, greedy=True, from_cache=True)
    L, rows = 2, 2
    assert set(c) == set(cost.OPS)
    assert c["qkv_proj"] == (L * 2 * rows * 64 * 128, L * (64 * 128 * 4 + rows * (64 + 128) * 4))
    assert c["o_proj"] == (L * 2 * rows * 64 * 64, L * (64 * 64 * 4 + rows * 128 * 4))
    assert c["gate_up_proj"] == (L * 2 * rows * 64 * 192, L * (64 * 192 * 4 + rows * (64 + 192) * 4))
    assert c["down_proj"] == (L * 2 * rows * 96 * 64, L * (96 * 64 * 4 + rows * 160 * 4))
    assert c["lm_head"] == (2 * rows * 64 * 100, 64 * 100 * 4 + rows * 164 * 4)
    # attention: keys 10 and 5; q.k and p.v 2*16 FLOPs per head and key each, softmax 5 per score
    keys = 10 + 5
    assert c["attention"] == (L * (4 * 4 * 16 * keys + 5 * 4 * keys),
                              L * (2 * rows * 4 * 16 * 4 + 2 * keys * 2 * 16 * 4))
    assert c["attn_norm"] == c["mlp_norm"] == (L * 4 * rows * 64, L * (2 * rows * 64 * 4 + 64 * 4))
    assert c["rope"] == (L * 3 * rows * 6 * 16, L * (2 * rows * 6 * 16 * 4 + 2 * rows * 16 * 4))
    assert c["kv_write"] == (0, L * rows * 2 * 2 * (16 * 4 + 16 * 4))
    assert c["residual"] == (L * 2 * rows * 64, L * 6 * rows * 64 * 4)
    assert c["act_mul"] == (L * 5 * rows * 96, L * 3 * rows * 96 * 4)
    assert c["qk_norm"] == (0, 0)
    assert c["embedding"] == (0, 2 * rows * 64 * 4)
    assert c["final_norm"] == (4 * rows * 64, 2 * rows * 64 * 4 + 64 * 4)
    assert c["sampling"] == (rows * 100, 4 * rows * 100)


def test_cost_model_prefill_quantization_and_kv_dtype():
    a = small_args(qk_norm=True)
    # a 5-token prompt: 1+2+3+4+5 = 15 causal (query, key) pairs per head
    c = cost.step_costs(a, cost.Precision(act_bytes=2, quant="int4", group_size=32, kv_dtype="int8"),
                        [(5, 0)], logits_rows=1, greedy=False)
    assert c["attention"][0] == 2 * (4 * 4 * 16 * 15 + 5 * 4 * 15)
    # int4: half a byte per weight plus a 16-bit scale and zero per group of 32
    assert c["qkv_proj"][1] == 2 * (64 * 128 / 2 + 2 * 128 * (64 / 32) * 2 + 5 * (64 + 128) * 2)
    assert c["lm_head"][1] == 64 * 100 + 100 * 2 + 1 * 164 * 2  # int8 head beside int4 layers
    # int8 KV: one byte per value plus a 4-byte scale per token and head; quantizing costs ~3 FLOPs a value
    assert c["kv_write"] == (2 * 3 * 5 * 2 * 2 * 16, 2 * 5 * 2 * 2 * (16 * 2 + 16 + 4))
    assert c["qk_norm"][0] == 2 * 4 * 5 * 6 * 16
    assert c["sampling"][0] == 5 * 100
    with pytest.raises(ValueError, match="'none', 'int8', 'int4' or 'fp8'"):
        cost.weight_bytes(8, 8, "int3", 32, 2)


def test_matmul_flops_match_torch_profiler_with_flops():
    a = small_args()
    rows = 3
    shapes = a.linear_shapes()
    ours = sum(cost.linear(rows, inp, out, cost.Precision(4))[0] for out, inp in shapes.values())
    with torch.profiler.profile(with_flops=True) as prof:
        for out, inp in shapes.values():
            torch.mm(torch.randn(rows, inp), torch.randn(inp, out))
    theirs = sum(e.flops for e in prof.key_averages() if e.key == "aten::mm")
    assert theirs == ours == 2 * rows * sum(o * i for o, i in shapes.values())


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """smollm2-135m shapes (dummy weights, fp32): a profiled batch-1 decode and a 4x128 prefill, on the torch
    backend, whose decode names every op of the cost model (the cpu backend's fused ops: test_cpu_kernels)."""
    logdir = tmp_path_factory.mktemp("runs")
    e = tuner.Engine(model="smollm2-135m", batch_size=4, max_seq_len=256, backend="torch")
    e.warmup()
    decode = e.generate(tuner.Workload(batch=1, prompt_len=32, output_len=12), profile=True, logdir=logdir)
    prefill = e.generate(tuner.Workload(batch=4, prompt_len=128, output_len=1), profile=True, logdir=logdir)
    return decode, prefill, logdir


def _again(r, hw) -> str:
    """The verdict of a recorded op row, computed again from its own recorded time and costs."""
    return classify(r.phase, r.name, r.calls, r.time_ms * 1e3, r.flops, r.bytes, hw, "cpu")["bound"]


def test_decode_gemvs_sit_left_of_the_ridge_and_big_prefill_gemms_right_of_it(profiled):
    # which side of the ridge an op sits on is analytic and cannot flip; whether a busy machine left it at its
    # ceiling (memory or compute) or below 30% of both (overhead) is timing, so only that choice may vary
    decode, prefill, _ = profiled
    hw = decode.hardware
    ridge = hw["matmul_tflops"] * 1e12 / (hw["bandwidth_gbs"] * 1e9)
    d = decode.ops[decode.ops.phase == "decode"].set_index("op")
    for op in LINEARS:
        assert d.loc[op, "intensity"] < 1 < ridge  # fp32 GEMV: ~2 FLOPs per 4-byte weight
        assert d.loc[op, "bound"] in ("memory", "overhead") and _again(d.loc[op], hw) == d.loc[op, "bound"]
    p = prefill.ops[prefill.ops.phase == "prefill"].set_index("op")
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert p.loc[op, "intensity"] > max(50, 2 * ridge)
        assert p.loc[op, "bound"] in ("compute", "overhead") and _again(p.loc[op], hw) == p.loc[op, "bound"]
    assert d.loc["qkv_proj", "calls"] == 30 * 11  # 30 layers x 11 decode steps
    assert set(prefill.ops.phase) == {"prefill"}


def test_verdicts_from_recorded_timings(profiled):
    # the real ops' analytic costs, timed as if they ran at a given share of the ceilings
    decode, prefill, _ = profiled
    hw = decode.hardware
    gemv = decode.ops.set_index(["phase", "op"]).loc[("decode", "gate_up_proj")]
    gemm = prefill.ops.set_index(["phase", "op"]).loc[("prefill", "gate_up_proj")]

    def verdict(row, share_of_bandwidth=None, share_of_compute=None):
        t_s = (row.bytes / (share_of_bandwidth * hw["bandwidth_gbs"] * 1e9) if share_of_bandwidth else
               row.flops / (share_of_compute * hw["matmul_tflops"] * 1e12))
        return classify("x", "op", int(row.calls), t_s * 1e6, row.flops, row.bytes, hw, "cpu")

    fast = verdict(gemv, share_of_bandwidth=0.8)
    assert fast["bound"] == "memory" and fast["pct_peak_bandwidth"] == pytest.approx(0.8)
    assert verdict(gemv, share_of_bandwidth=0.1)["bound"] == "overhead"  # 10% of both ceilings
    slow = verdict(gemm, share_of_compute=0.6)
    assert slow["bound"] == "compute" and slow["pct_peak_compute"] == pytest.approx(0.6)
    assert verdict(gemm, share_of_compute=0.2)["bound"] == "overhead"
    tiny = classify("x", "op", 1000, 1000.0, 1e3, 1e3, hw, "cpu")  # 1 us a call: shorter than a dispatch
    assert tiny["bound"] == "overhead" and "shorter than a cpu launch" in tiny["explanation"]


def test_op_table_columns_and_phase_summary(profiled):
    decode, _, _ = profiled
    df = decode.ops
    assert list(df.columns) == ["phase", "op", "calls", "time_ms", "flops", "bytes", "intensity", "achieved_tflops",
                                "achieved_gbs", "pct_peak_compute", "pct_peak_bandwidth", "bound", "explanation"]
    assert set(df.op) == set(cost.OPS) - {"qk_norm"}  # smollm2 has no q/k norm
    row = df[(df.phase == "decode") & (df.op == "gate_up_proj")].iloc[0]
    assert row.achieved_gbs == pytest.approx(row.bytes / (row.time_ms / 1e3) / 1e9)
    assert row.pct_peak_bandwidth == pytest.approx(row.achieved_gbs / decode.hardware["bandwidth_gbs"])
    for phase, entry in decode.profile["phases"].items():
        assert sum(entry["time_share"].values()) == pytest.approx(1.0)
        assert entry["op_time_ms"] == pytest.approx(df[df.phase == phase].time_ms.sum())
    assert all(df.explanation.str.len() > 20)
    text = decode.ops_text()
    assert "gate_up_proj" in text and decode.profile["trace_dir"] in text
    assert all(f"{r.op:<14}" in text and r.bound in text for r in df.itertuples())  # every row, with its verdict
    again = tuner.RunResult.from_json(decode.to_json())
    assert again.ops_records == decode.ops_records and again.profile == decode.profile


def test_traces_are_valid_gzip_json_with_every_op_range(profiled):
    decode, prefill, logdir = profiled
    assert decode.profile["trace_dir"] != prefill.profile["trace_dir"]  # a fresh folder per run
    run_dir = logdir / decode.run_id
    assert str(run_dir) == decode.profile["trace_dir"]
    steps = len(decode.timings["prefill_ms"]) + len(decode.timings["decode_step_ms"])
    assert decode.profile["profiler_steps"] == steps > 10
    for name in ("trace.json.gz", "tuner.pt.trace.json.gz"):
        with gzip.open(run_dir / name, "rt") as f:
            trace = json.load(f)
        names = {ev.get("name") for ev in trace["traceEvents"]}
        assert (set(cost.OPS) - {"qk_norm"}) | {"prefill", "decode"} <= names
        # one profiler step per engine step, each holding one phase range
        marks = sorted((ev for ev in trace["traceEvents"] if ev.get("name", "").startswith("ProfilerStep#")),
                       key=lambda ev: ev["ts"])
        assert [ev["name"] for ev in marks] == [f"ProfilerStep#{i}" for i in range(steps)]
        phases = [ev for ev in trace["traceEvents"] if ev.get("name") in ("prefill", "decode")]
        for mark in marks:
            inside = [ev for ev in phases if mark["ts"] <= ev["ts"] < mark["ts"] + mark["dur"]]
            assert len(inside) == 1, mark["name"]
        ours = {ev.get("cat") for ev in trace["traceEvents"] if ev.get("name") in set(cost.OPS) | {"decode"}}
        # Perfetto: tuner's ranges in their own category; TensorBoard's copy keeps the plugin's operator category
        assert ours == ({"tuner"} if name == "trace.json.gz" else {"cpu_op"}), (name, ours)
    assert re.match(r"^(.*?)(\.\d+)?\.pt\.trace\.json(?:\.gz)?$", "tuner.pt.trace.json.gz")  # TB's run pattern


def test_a_profile_can_also_record_shapes_memory_and_stacks(tmp_path):
    e = tuner.Engine(model="tiny")
    w = tuner.Workload(batch=1, prompt_len=8, output_len=3)
    r = e.generate(w, profile="shapes,memory,stack", logdir=tmp_path)
    assert r.profile["extras"] == ["shapes", "memory", "stack"]
    with gzip.open(r.profile["perfetto_trace"], "rt") as f:
        events = json.load(f)["traceEvents"]
    assert any("Input Dims" in ev.get("args", {}) for ev in events)  # shapes
    assert any(ev.get("name") == "[memory]" for ev in events)  # memory
    assert any(ev.get("cat") == "python_function" for ev in events)  # stacks
    plain = e.generate(w, profile=True, logdir=tmp_path)
    with gzip.open(plain.profile["perfetto_trace"], "rt") as f:
        events = json.load(f)["traceEvents"]
    assert plain.profile["extras"] == [] and not any("Input Dims" in ev.get("args", {}) for ev in events)
    with pytest.raises(ValueError, match="profile extra 'shape' is not allowed: use any of shapes, memory, stack"):
        e.generate(w, profile="shape")


def test_profiling_does_not_change_results(checkpoint, tmp_path):
    path, _ = checkpoint("qwen3")
    e = tuner.Engine(model=str(path), batch_size=2)
    g = torch.Generator().manual_seed(0)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (7, 12)]
    for sp in (tuner.SamplingParams(max_new_tokens=10), tuner.SamplingParams(max_new_tokens=10, temperature=0.9,
                                                                             top_p=0.9, seed=4)):
        plain = e.generate(ps, sp)
        prof = e.generate(ps, sp, profile=True, logdir=tmp_path)
        assert prof.tokens == plain.tokens
        assert "qk_norm" in set(prof.ops.op)
    assert plain.ops.empty and plain.profile == {}


def test_fused_decode_ranges_carry_the_costs_of_the_ops_they_fuse(checkpoint, tmp_path):
    path, _ = checkpoint("llama")
    e = tuner.Engine(model=str(path), batch_size=1)
    e.fixed_decode = True  # the cupy backend's fused decode step, through the kernels' torch twins
    r = e.generate([[1, 2, 3]], tuner.SamplingParams(max_new_tokens=6), profile=True, logdir=tmp_path)
    d = r.ops[r.ops.phase == "decode"].set_index("op")
    assert {"add_norm", "rope_kv_write", "attention", "qkv_proj"} <= set(d.index)
    assert "rope" not in d.index and "residual" not in d.index
    a = e.args
    p = cost.Precision(4)
    expect = [cost.range_costs(cost.step_costs(a, p, [(1, n)], 1, True, True))["rope_kv_write"]
              for n in range(3, 8)]
    assert d.loc["rope_kv_write", "flops"] == pytest.approx(sum(f for f, _ in expect))
    assert d.loc["add_norm", "calls"] == 5 * (2 * a.n_layers + 1)


def test_tensorboard_lists_and_serves_a_profiled_run(profiled):
    from tuner.profile.tensorboard import tensorboard

    decode, _, logdir = profiled
    api = "data/plugin/pytorch_profiler/"
    with tensorboard(logdir) as tb:
        assert tb.url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 90
        runs = {}
        while time.monotonic() < deadline:
            runs = tb.get(api + "runs")
            if decode.run_id in runs["runs"] and not runs["loading"]:
                break
            time.sleep(1)
        assert decode.run_id in runs["runs"]
        run = decode.run_id
        views = tb.get(api + f"views?run={run}")
        assert "Overview" in views and "Operator" in views
        worker = tb.get(api + f"workers?run={run}&view=Overview")
        assert worker == ["tuner"]
        span = tb.get(api + f"spans?run={run}&worker=tuner")[0]
        overview = tb.get(api + f"overview?run={run}&worker=tuner&span={span}")
        # the overview lists the engine's steps, not one "Step 0" over the whole run
        assert len(overview["steps"]["rows"]) == decode.profile["profiler_steps"] > 10, overview["steps"]
        table = tb.get(api + f"operation/table?run={run}&worker=tuner&span={span}&group_by=Operation")
        names = {row["name"] for row in table["data"]}
        assert {"qkv_proj", "attention", "decode"} <= names
        process = tb.process
    assert process.poll() is not None  # stopped on leaving the block


def test_plots_draw_the_run(profiled):
    import matplotlib

    matplotlib.use("Agg")
    decode, prefill, _ = profiled
    fig = decode.roofline()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == int((decode.ops.flops > 0).sum())
    fig = decode.time_breakdown()
    assert len(fig.axes[0].patches) == len(decode.ops)
    fig = decode.step_latency()
    assert len(fig.axes[0].lines[0].get_xdata()) == len(decode.timings["decode_step_ms"]) == 11
    plain = tuner.RunResult.from_dict({**decode.to_dict(), "ops": []})
    with pytest.raises(ValueError, match="profile=True"):
        plain.roofline()
    with pytest.raises(ValueError, match="phase='warmup'"):
        decode.roofline(phase="warmup")


def test_plots_leave_the_sessions_matplotlib_settings_alone(profiled):
    import matplotlib

    keys = ("axes.grid", "font.size", "axes.edgecolor", "axes.facecolor", "grid.color", "lines.linewidth")
    before = {k: matplotlib.rcParams[k] for k in keys}
    decode, _, _ = profiled
    fig = decode.roofline()
    assert any(line.get_visible() for line in fig.axes[0].xaxis.get_gridlines())  # drawn in the whitegrid look
    decode.time_breakdown(), decode.step_latency()
    assert {k: matplotlib.rcParams[k] for k in keys} == before


def test_hardware_datasheet_calibration_and_tuner_hw(capsys):
    assert datasheet_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert datasheet_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert datasheet_key("NVIDIA H200") == "H200"
    assert datasheet_key("NVIDIA A100-SXM4-40GB") == "A100 40GB"
    assert datasheet_key("NVIDIA A100 80GB PCIe") == "A100 80GB"
    assert datasheet_key("NVIDIA L4") == "L4" and datasheet_key("NVIDIA L40S") == "L40S"
    assert datasheet_key("NVIDIA A10G") == "A10G" and datasheet_key("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert datasheet_key("NVIDIA T4") is None
    cal = calibrate("cpu", (torch.float32,))
    assert cal["bandwidth_gbs"] > 1 and cal["matmul_tflops"]["float32"] > 0.01
    assert cal["cores"] >= 1 and cal["datasheet"] is None
    stored = json.loads((cache_dir() / "hardware.json").read_text())
    assert any(v["bandwidth_gbs"] == cal["bandwidth_gbs"] for v in stored.values())
    assert calibrate("cpu", (torch.float32,)) == cal  # read back from the cache, not measured again
    text = hw_table("cpu", (torch.float32,))
    assert f"{cal['bandwidth_gbs']:.1f}" in text and "datasheet" in text
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "memory GB/s" in out and "float32 matmul TFLOP/s" in out


def test_nvtx_ranges_carry_the_op_names_for_nsight(monkeypatch):
    """NVTX itself needs a CUDA build of torch: here its two calls are recorded to check what tuner sends."""
    from tuner import ranges

    pushed, depth = [], []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: (pushed.append(name), depth.append(name)))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: depth.pop())
    e = tuner.Engine(model="tiny")
    w = tuner.Workload(batch=1, prompt_len=8, output_len=3)
    e.generate(w)
    assert pushed == []  # off unless asked for
    monkeypatch.setattr(ranges, "_nvtx", True)
    e.generate(w)
    assert depth == []  # every range closed
    assert {"prefill", "decode", "qkv_proj", "attention", "lm_head", "sampling"} <= set(pushed)
    assert pushed.count("decode") == 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="NVTX ranges need CUDA"):
            with ranges.nvtx():
                pass
