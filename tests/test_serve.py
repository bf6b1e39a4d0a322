"""Serving under traffic: the scheduler gives every request its solo tokens however requests interleave;
arrivals, traces, serving metrics, goodput, capacity and bad input."""

import json
import math
import os
import signal
import threading

import numpy as np
import pytest
import torch

import tuner
from conftest import VOCAB
from tuner.engine.scheduler import Sequence
from tuner.serve.metrics import summarize
from tuner.serve.traffic import Traffic, read_trace


def _prompts(lengths, seed=0, prefix=()):
    g = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _solo(path, prompts, outs):
    engine = tuner.Engine(model=str(path), max_seq_len=256)
    return [engine.generate([p], tuner.SamplingParams(max_new_tokens=n, ignore_eos=True)).tokens[0]
            for p, n in zip(prompts, outs, strict=True)]


def _serve(engine, prompts, outs, arrivals_ms=None):
    seqs = [Sequence(p, n, frozenset(), id=i, arrival_ms=(arrivals_ms or [0.0] * len(prompts))[i])
            for i, (p, n) in enumerate(zip(prompts, outs, strict=True))]
    stats, sched = engine.serve(seqs, tuner.SamplingParams())
    return seqs, stats, sched


SHARED = _prompts([24], seed=9)[0]  # three full blocks of 8, shared by every request below


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_every_request_gets_its_solo_tokens_under_chunked_prefill_preemption_and_prefix_hits(checkpoint, family):
    path, _ = checkpoint(family)
    prompts = _prompts([17, 30, 9, 41, 26, 12], seed=4, prefix=SHARED)
    outs = [20, 7, 25, 12, 18, 30]
    solo = _solo(path, prompts, outs)
    # 4 rows, 16 tokens of budget (prompts are cut into chunks), 16 blocks of 8: fewer than 4 running sequences
    # need, so the newest are preempted and recomputed; prefix caching shares SHARED's blocks
    engine = tuner.Engine(model=str(path), batch_size=4, max_seq_len=128, kv_cache="paged", block_size=8,
                          num_blocks=16, max_num_batched_tokens=16, enable_chunked_prefill=True,
                          enable_prefix_caching=True)
    seqs, stats, sched = _serve(engine, prompts, outs, arrivals_ms=[0, 0, 5, 5, 10, 10])
    assert [s.tokens for s in seqs] == solo
    assert sched.preemptions >= 1 and sum(s.preemptions for s in seqs) == sched.preemptions
    assert sum(s.prefix_hit_tokens for s in seqs) >= 24  # at least one request took the shared blocks
    assert stats.mixed_ms  # some steps ran prefill chunks beside decodes
    assert all(s.finished_ms is not None for s in seqs) and not sched.running and not sched.waiting
    assert engine.cache.allocator.refs == [0] * 16  # every block handed back


def test_a_prefix_hit_computes_fewer_prefill_tokens_and_gives_the_same_tokens(checkpoint):
    path, _ = checkpoint("llama")
    prompts = _prompts([5, 11, 3], seed=5, prefix=SHARED)
    outs = [6, 6, 6]
    runs = {}
    for caching in (False, True):
        engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128, kv_cache="paged", block_size=8,
                              enable_prefix_caching=caching)
        # one after the other, so the first request's blocks are in the index when the next arrives
        seqs, _, _ = _serve(engine, prompts, outs, arrivals_ms=[0, 300, 600])
        runs[caching] = seqs
    assert [s.tokens for s in runs[True]] == [s.tokens for s in runs[False]] == _solo(path, prompts, outs)
    computed = {c: sum(s.prefill_tokens for s in seqs) for c, seqs in runs.items()}
    assert computed[False] == sum(map(len, prompts))
    assert computed[True] == computed[False] - 2 * 24  # the 2nd and 3rd requests reuse the 3 shared blocks
    assert [s.prefix_hit_tokens for s in runs[True]] == [0, 24, 24]


def test_static_scheduling_starts_a_batch_only_when_the_last_has_finished(checkpoint):
    path, _ = checkpoint("llama")
    prompts, outs = _prompts([6, 9, 4, 12, 7], seed=6), [3, 9, 5, 4, 6]
    static = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128, scheduling="static")
    seqs, _, _ = _serve(static, prompts, outs)
    assert [s.tokens for s in seqs] == _solo(path, prompts, outs)
    waves = sorted({s.wave for s in seqs})
    assert waves == [0, 1, 2]
    for w in waves[1:]:
        started = min(s.admitted_ms for s in seqs if s.wave == w)
        assert started >= max(s.finished_ms for s in seqs if s.wave == w - 1)
    # continuous: the row the 3-token request frees is taken at once, before its partner finishes
    cont, _, _ = _serve(tuner.Engine(model=str(path), batch_size=2, max_seq_len=128), prompts, outs)
    assert cont[2].admitted_ms < cont[1].finished_ms
    assert [s.tokens for s in cont] == [s.tokens for s in seqs]


def test_poisson_and_gamma_arrivals_have_their_rate_and_burstiness():
    for burstiness, cv in ((1.0, 1.0), (0.25, 2.0), (4.0, 0.5)):
        t = Traffic(rate=10.0, num_prompts=20000, burstiness=burstiness, seed=3).arrivals()
        gaps = np.diff(t)
        assert t[0] == 0.0 and np.all(gaps >= 0)
        assert gaps.mean() == pytest.approx(0.1, rel=0.05)  # mean gap 1 / rate
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)  # CV = 1 / sqrt(burstiness)
    assert np.array_equal(Traffic(rate=5, seed=1).arrivals(), Traffic(rate=5, seed=1).arrivals())
    assert not np.array_equal(Traffic(rate=5, seed=1).arrivals(), Traffic(rate=5, seed=2).arrivals())
    assert np.all(Traffic(rate=math.inf, num_prompts=4).arrivals() == 0)


def test_traffic_lengths_and_shared_prefixes_are_what_was_asked():
    reqs = Traffic(num_prompts=400, prompt_len=(10, 20), output_len=(3, 5), prefix_len=7, prefix_fraction=0.5,
                   seed=2).requests(VOCAB)
    heads = [tuple(r.prompt[:7]) for r in reqs]
    shared = max(set(heads), key=heads.count)
    with_prefix = [r for r in reqs if tuple(r.prompt[:7]) == shared]
    assert 0.4 < len(with_prefix) / len(reqs) < 0.6
    assert all(17 <= len(r.prompt) <= 27 for r in with_prefix)
    assert {len(r.prompt) for r in reqs if r not in with_prefix} <= set(range(10, 21))
    assert {r.output_len for r in reqs} == {3, 4, 5}


def _row(i, arrival_s, ttft, tpot, n, finished=True, rejected=None):
    times = [ttft + k * tpot for k in range(n)]
    return {"id": i, "arrival_s": arrival_s, "prompt_len": 10, "output_len": n if finished else 0,
            "max_new_tokens": n, "finished": finished, "ttft_ms": ttft if finished else None,
            "tpot_ms": tpot if finished and n > 1 else None, "e2e_ms": times[-1] if finished else None,
            "itl_ms": [tpot] * (n - 1) if finished else [], "queue_ms": 1.0 if finished else None, "preemptions": 0,
            "prefix_hit_tokens": 0, "prefill_tokens": 10, "rejected": rejected}


def test_goodput_and_percentiles_of_a_hand_made_record():
    rows = [_row(0, 0.0, 100.0, 10.0, 11),  # meets ttft <= 200, tpot <= 20; ends at 0.2 s
            _row(1, 0.5, 300.0, 10.0, 11),  # TTFT too slow
            _row(2, 1.0, 150.0, 30.0, 11),  # TPOT too slow; ends at 1.0 + 0.45 s
            _row(3, 1.5, 50.0, 5.0, 11),  # meets; ends at 1.5 + 0.1 s
            _row(4, 2.0, 0.0, 0.0, 4, finished=False, rejected="too long")]
    m = summarize(rows, {"ttft_ms": 200, "tpot_ms": 20})
    assert (m["requests"], m["finished"], m["rejected"]) == (5, 4, 1)
    assert m["duration_s"] == pytest.approx(1.6)  # first arrival to last token
    assert m["goodput_req_s"] == pytest.approx(2 / 1.6)
    assert m["slo_attainment"] == pytest.approx(2 / 4)
    assert m["request_throughput"] == pytest.approx(4 / 1.6)
    assert m["output_tokens"] == 44 and m["output_tok_s"] == pytest.approx(44 / 1.6)
    assert m["ttft_ms"] == pytest.approx(150.0)
    assert m["ttft_ms_p50"] == pytest.approx(np.percentile([100, 300, 150, 50], 50))
    assert m["tpot_ms_p99"] == pytest.approx(np.percentile([10, 10, 30, 5], 99))
    assert m["itl_ms_samples"] == 40 and m["itl_ms_p50"] == pytest.approx(10.0)
    assert summarize(rows, {})["goodput_req_s"] is None  # no SLO: no goodput


def test_a_jsonl_trace_replays_its_arrivals_and_lengths(checkpoint, tmp_path):
    path, _ = checkpoint("llama")
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps(r) for r in [
        {"arrival_s": 0.0, "prompt_len": 12, "output_len": 4},
        {"arrival_s": 0.05, "prompt_len": 30, "output_len": 2},
        {"arrival_s": 0.02, "prompt_len": 5, "output_len": 6}]) + "\n\n")
    engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128)
    r = tuner.serve_bench(engine, Traffic(trace=str(trace)), slo={"ttft_ms": 1e6}, warmup=False)
    rows = sorted(r.requests, key=lambda x: x["arrival_s"])
    assert [(x["arrival_s"], x["prompt_len"], x["output_len"]) for x in rows] == [
        (0.0, 12, 4), (0.02, 5, 6), (0.05, 30, 2)]
    assert r.metrics["finished"] == 3 and r.metrics["slo_attainment"] == 1.0
    assert all(x["queue_ms"] >= 0 and x["ttft_ms"] >= x["queue_ms"] for x in rows)


@pytest.mark.parametrize("line, message", [
    ('{"arrival_s": 0, "prompt_len": 4}', "line 2: output_len=None must be a whole number >= 1"),
    ('{"arrival_s": -1, "prompt_len": 4, "output_len": 2}', "line 2: arrival_s=-1 must be a number of seconds"),
    ('not json', "line 2: not a JSON object"),
    ('{"arrival_s": 0, "output_len": 2}', "line 2: give exactly one of prompt_len and prompt"),
    ('{"arrival_s": 0, "prompt": "hi", "output_len": 2}', "line 2: a text prompt needs the model's tokenizer"),
    ('{"arrival_s": 0, "prompt_len": 4, "output_len": 2, "user": 7}', "line 2: unknown field"),
])
def test_a_malformed_trace_line_is_named_by_its_number(tmp_path, line, message):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"t.jsonl, {message}"):
        read_trace(trace, VOCAB)


@pytest.mark.parametrize("kw, message", [
    ({"rate": 0}, "rate=0 is not allowed: the request rate must be > 0"),
    ({"rate": -2.0}, "rate=-2.0 is not allowed"),
    ({"burstiness": 0}, "burstiness=0 is not allowed: it must be a finite number > 0"),
    ({"burstiness": -1.0}, "burstiness=-1.0 is not allowed"),
    ({"prompt_len": (9, 3)}, r"prompt_len=\(9, 3\) is not allowed: a range \[low, high\] needs"),
    ({"output_len": 0}, "output_len=0 is not allowed"),
    ({"prefix_fraction": 1.5}, "prefix_fraction=1.5 is not allowed"),
    ({"num_prompts": 0}, "num_prompts=0 is not allowed"),
])
def test_bad_traffic_is_refused_naming_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        Traffic(**kw)


def test_a_request_longer_than_the_window_is_rejected_with_its_reason_while_the_rest_run(checkpoint):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=64)
    r = tuner.serve_bench(engine, Traffic(num_prompts=6, prompt_len=(40, 70), output_len=8, seed=2), warmup=False)
    too_long = [x for x in r.requests if x["prompt_len"] + 8 > 64]  # 67 and 66 of 49, 67, 49, 66, 44, 46
    assert too_long and all(x["rejected"].startswith(f"prompt {x['prompt_len']} + output 8 tokens exceed "
                                                     "max_seq_len=64") for x in too_long)
    assert all(x["finished"] and x["output_len"] == 8 for x in r.requests if x["rejected"] is None)
    assert r.metrics["rejected"] == len(too_long) and r.metrics["finished"] == 6 - len(too_long)


def test_a_kv_pool_too_small_for_one_request_is_refused_before_the_run():
    with pytest.raises(ValueError, match="num_blocks=3 cannot hold one sequence of max_seq_len=128"):
        tuner.serve_bench({"model": "tiny", "kv_cache": "paged", "block_size": 16, "num_blocks": 3,
                           "max_seq_len": 128}, Traffic(num_prompts=2))


def test_bad_slos_are_refused_naming_the_allowed_keys():
    with pytest.raises(ValueError, match="slo key 'ttft_ms_p99' is not allowed: use ttft_ms, tpot_ms, e2e_ms"):
        tuner.serve_bench({"model": "tiny"}, Traffic(num_prompts=1), slo={"ttft_ms_p99": 5})
    with pytest.raises(ValueError, match="slo ttft_ms=0 is not allowed"):
        tuner.serve_bench({"model": "tiny"}, Traffic(num_prompts=1), slo={"ttft_ms": 0})


def test_ctrl_c_keeps_every_finished_request_row(checkpoint):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128)
    sent = []

    def on_step(event):  # once some requests finished, a real SIGINT, as Ctrl-C sends it
        if event["done_tokens"] >= 40 and not sent:
            sent.append(1)
            threading.Timer(0, os.kill, (os.getpid(), signal.SIGINT)).start()

    r = tuner.serve_bench(engine, Traffic(num_prompts=40, prompt_len=8, output_len=10), on_step=on_step,
                          warmup=False)
    assert r.stopped and r.notes == ["interrupted (Ctrl-C): the rows that finished are kept"]
    done = [x for x in r.requests if x["finished"]]
    assert 4 <= len(done) < 40 and all(x["output_len"] == 10 and x["e2e_ms"] > 0 for x in done)
    assert len(r.requests) == 40 and r.metrics["finished"] == len(done)
    assert engine.generate([[1, 2, 3]], tuner.SamplingParams(max_new_tokens=3)).tokens  # the engine still runs


def test_max_concurrency_keeps_that_many_in_flight_and_times_from_sending(checkpoint):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=4, max_seq_len=128)
    r = tuner.serve_bench(engine, Traffic(num_prompts=8, prompt_len=8, output_len=5, max_concurrency=2),
                          warmup=False)
    assert max(p["running"] + p["waiting"] for p in r.timeline) <= 2
    assert r.metrics["finished"] == 8
    assert r.metrics["queue_ms_p99"] < r.metrics["e2e_ms_p50"]  # each is timed from when the client sent it


def test_the_serve_record_round_trips_and_displays(checkpoint, tmp_path):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128, kv_cache="paged", block_size=8)
    r = tuner.serve_bench(engine, Traffic(rate=200.0, num_prompts=6, prompt_len=(4, 16), output_len=(2, 6)),
                          slo={"ttft_ms": 1e5, "tpot_ms": 1e5}, warmup=False)
    again = tuner.ServeResult.load(r.save(tmp_path / "serve.json"))
    assert again.to_dict() == r.to_dict() and again.to_dict()["schema"] == "tuner.serve/1"
    bundle = r._repr_mimebundle_()
    assert "goodput" in bundle["text/plain"] and "data:image/png;base64," in bundle["text/html"]
    assert bundle[tuner.ServeResult.MIME]["requests"] == r.requests
    assert r.timeline and {"t_ms", "step_ms", "phase", "running", "waiting", "kv_blocks_used",
                           "sched_ms"} <= set(r.timeline[0])
    assert all(p["kv_blocks_used"] >= 0 for p in r.timeline)
    with pytest.raises(ValueError, match="not a tuner serve record"):
        tuner.ServeResult.from_dict({"schema": "tuner.run/1"})


def test_capacity_climbs_a_rate_ladder_and_bisects(checkpoint):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=4, max_seq_len=128)
    traffic = Traffic(num_prompts=6, prompt_len=8, output_len=4)
    # an SLO nothing can miss: the ladder doubles to its top rung and the capacity is the highest rate tried
    easy = tuner.capacity(engine, traffic, {"e2e_ms": 1e7}, start_rate=50.0, max_rungs=3, bisections=2)
    assert [p["rate"] for p in easy.points] == [50.0, 100.0, 200.0] and easy.capacity_req_s == 200.0
    # an SLO nothing can meet: the ladder halves, finds nothing, and says so
    hard = tuner.capacity(engine, traffic, {"ttft_ms": 1e-6}, start_rate=50.0, max_rungs=3, bisections=2)
    assert [p["rate"] for p in hard.points] == [50.0, 25.0, 12.5] and hard.capacity_req_s is None
    assert "capacity: none of the rates tried" in hard.table()
    assert hard._repr_mimebundle_()["text/html"].count("data:image/png;base64,") == 1
    with pytest.raises(ValueError, match="capacity needs an SLO"):
        tuner.capacity(engine, traffic, {})


def test_a_sweep_of_serving_knobs_measures_goodput_under_traffic_and_exports_it_as_served(tmp_path):
    from tuner.tune.export import export

    r = tuner.sweep({"enable_chunked_prefill": [False, True]}, objectives=["max:goodput_req_s"],
                    constraints=["slo_attainment >= 0.5"],
                    base={"model": "tiny", "batch_size": 4, "max_seq_len": 128, "kv_cache": "paged",
                          "max_num_batched_tokens": 64},
                    traffic={"rate": 200.0, "num_prompts": 8, "prompt_len": [8, 40], "output_len": 4},
                    slo={"ttft_ms": 1e5}, sampler="grid", storage=None, runs_dir=tmp_path, progress=False,
                    warmup=False)
    assert r.serving == {"traffic": Traffic(rate=200.0, num_prompts=8, prompt_len=(8, 40), output_len=4).to_dict(),
                         "slo": {"ttft_ms": 1e5}}
    assert sorted(t["params"]["enable_chunked_prefill"] for t in r.trials) == [False, True]
    assert all(t["feasible"] and t["metrics"]["goodput_req_s"] > 0 and t["metrics"]["slo_attainment"] == 1.0
               for t in r.trials)
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / r.study_name).glob("*.json")]
    assert sorted(d["schema"] for d in records) == ["tuner.serve/1"] * 2
    text = export(r, "vllm", tmp_path / "v.yaml").read_text()
    assert "static batch" not in text and "max-num-batched-tokens: 64" in text
    assert tuner.SweepResult.load(tmp_path / "sweeps" / f"{r.study_name}.json").serving == r.serving
    with pytest.raises(ValueError, match="goodput_req_s, slo_attainment, .* are serving metrics"):
        tuner.sweep({"batch_size": [1]}, objectives=["max:goodput_req_s"], storage=None, runs_dir=tmp_path)
    with pytest.raises(ValueError, match="capacity_req_s needs traffic and an slo"):
        tuner.sweep({"batch_size": [1]}, objectives=["max:capacity_req_s"], traffic={"num_prompts": 2},
                    storage=None, runs_dir=tmp_path)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("kv_cache", ["contiguous", "paged"])
def test_the_fixed_shape_decode_step_serves_scattered_rows_with_the_solo_tokens(checkpoint, kv_cache, backend):
    # the fixed-shape decode path (the cupy kernels' torch twins, or the cpu backend's one-call C step) reads each
    # row's blocks through the tables of the rows the scheduler picked, which are not rows 0..B-1 once requests
    # come and go
    path, _ = checkpoint("qwen3")
    prompts = _prompts([9, 21, 5, 14, 30], seed=8)
    outs = [3, 15, 8, 12, 5]
    engine = tuner.Engine(model=str(path), batch_size=3, max_seq_len=128, kv_cache=kv_cache, block_size=8,
                          backend=backend)
    engine.fixed_decode = True
    seqs, _, _ = _serve(engine, prompts, outs, arrivals_ms=[0, 0, 0, 20, 40])
    assert [s.tokens for s in seqs] == _solo(path, prompts, outs)
    assert sorted({s.wave for s in seqs}) == list(range(max(s.wave for s in seqs) + 1))


def test_a_mixed_step_is_one_forward_pass_over_the_chunks_and_the_decode_rows(checkpoint):
    path, _ = checkpoint("llama")
    prompts, outs = _prompts([40, 37, 45], seed=11), [12, 12, 12]
    engine = tuner.Engine(model=str(path), batch_size=3, max_seq_len=128, max_num_batched_tokens=16,
                          enable_chunked_prefill=True, backend="torch")  # decodes through forward
    passes = []
    forward = engine.model.forward
    engine.model.forward = lambda tokens, step, *a, **k: passes.append(step.packed is not None) or forward(
        tokens, step, *a, **k)
    seqs, stats, _ = _serve(engine, prompts, outs, arrivals_ms=[0, 0, 0])
    steps = len(stats.prefill_ms) + len(stats.decode_ms) + len(stats.mixed_ms)
    assert stats.mixed_ms and len(passes) == steps  # one pass per step, mixed steps included
    assert sum(passes) == len(stats.prefill_ms) + len(stats.mixed_ms)  # prefill and mixed passes are packed
    assert [s.tokens for s in seqs] == _solo(path, prompts, outs)


def test_a_step_after_an_idle_wait_is_timed_from_when_it_started(checkpoint):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=2, max_seq_len=128)
    seqs, stats, _ = _serve(engine, _prompts([6, 6], seed=12), [3, 3], arrivals_ms=[0, 400])
    assert [len(s.tokens) for s in seqs] == [3, 3]
    assert max(stats.prefill_ms) < 300  # the 400 ms the engine sat idle before the second request is no step's
    assert sum(p["step_ms"] for p in stats.timeline) < stats.timeline[-1]["t_ms"] - 300
