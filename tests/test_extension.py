"""The JupyterLab renderer (extension/): its unit tests, the prebuilt extension in the wheel, JupyterLab's own
check, and a real browser rendering saved tuner outputs with no kernel.

The extension is built by the package's build hook (npm, into tuner/labextension) when tuner is installed
with Node present; .ci/run sets TUNER_CI=1, so there a missing build fails instead of skipping."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest
from labtools import chromium, jupyterlab, need_chromium

import tuner

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "extension"
BUILT = ROOT / "tuner" / "labextension"
ARTIFACTS = Path(__file__).parent / "artifacts"


def _need(cond: bool, why: str) -> None:
    if not cond:
        if os.environ.get("TUNER_CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def labext_path(tmp_path_factory) -> Path:
    """A labextensions folder holding the built renderer under its package name."""
    _need((BUILT / "package.json").exists(), "the renderer is not built (cd extension && npm install && "
                                             "npm run build:prod, or pip install -e . with Node)")
    d = tmp_path_factory.mktemp("labextensions")
    (d / "tuner-jupyterlab").symlink_to(BUILT, target_is_directory=True)
    return d


def test_renderer_unit_tests():
    _need(shutil.which("node") is not None and (EXT / "node_modules").is_dir(),
          "Node and extension/node_modules are needed (npm install in extension/)")
    r = subprocess.run(["npm", "test"], cwd=EXT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "# pass 10" in r.stdout and "# fail 0" in r.stdout


def test_the_wheel_ships_the_prebuilt_renderer_and_jupyterlab_lists_it(tmp_path, labext_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HATCH_JUPYTER_BUILDER_SKIP_NPM": "1"})  # the build above is reused
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(tmp_path.glob("tuner-*.whl"))
    prefix = f"tuner-{tuner.__version__}.data/data/share/jupyter/labextensions/tuner-jupyterlab/"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert prefix + "package.json" in names and prefix + "install.json" in names
        assert any(n.startswith(prefix + "static/remoteEntry.") for n in names)
        z.extractall(tmp_path / "unpacked", [n for n in names if n.startswith(f"tuner-{tuner.__version__}.data/")])
    share = tmp_path / "unpacked" / f"tuner-{tuner.__version__}.data" / "data" / "share" / "jupyter"
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JUPYTER_PATH": str(share)})
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # without its colours
    assert "tuner-jupyterlab v0.1.0 enabled" in text and "OK (python, tuner)" in text, text


def test_jupyterlab_browser_check_passes_with_the_renderer(labext_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "jupyterlab.browser_check", "--no-browser-test",
                        f"--LabApp.extra_labextensions_path={labext_path}", "--allow-root",
                        f"--ServerApp.root_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def _saved_notebook(path: Path) -> tuple[int, int, int]:
    """A notebook whose outputs are a profiled run, a sweep and a serving benchmark, as a kernel would have saved
    them; returns the roofline points (ops with FLOPs), the measured trials and the finished requests it should
    show."""
    e = tuner.Engine(model="smollm2-135m", batch_size=2, max_seq_len=64)
    run = e.generate(tuner.Workload(prompt_len=16, output_len=4), profile=True, logdir=str(path.parent / "traces"))
    kw = dict(workload={"prompt_len": 16, "output_len": 4}, base={"model": "smollm2-135m", "max_seq_len": 64},
              sampler="grid", storage=None, runs_dir=path.parent / "runs", progress=False, warmup=False,
              objectives=["max:output_tok_s", "min:decode_bytes_per_token"])
    # an SLO between batch 2's and batch 4's bytes per token (analytic, the same on any machine): batches 1 and 2
    # break it, so batch 4 is the whole Pareto front however fast the machine runs (at output_len 4 batch 2 and 4
    # can measure the same tok/s, and then both would be on a front that weighs speed)
    first = tuner.sweep({"batch_size": [2, 4]}, **kw)
    per_token = sorted(t["metrics"]["decode_bytes_per_token"] for t in first.trials)
    sweep = tuner.sweep({"batch_size": [1, 2, 4]}, constraints=[f"decode_bytes_per_token <= {sum(per_token) / 2:.0f}"],
                        **kw)
    assert len(sweep.pareto) == 1 and sweep.pareto[0]["params"] == {"batch_size": 4}
    served = tuner.serve_bench(e, tuner.Traffic(rate=50.0, num_prompts=6, prompt_len=(4, 16), output_len=3),
                               slo={"ttft_ms": 1e5}, warmup=False)
    run2 = e.generate(tuner.Workload(prompt_len=16, output_len=6), profile=True, logdir=str(path.parent / "traces"))
    from tuner.compare import Comparison

    nb = nbformat.v4.new_notebook()
    for code, obj in (("run = engine.generate(w, profile=True)\nrun", run), ("tuner.sweep(space, ...)", sweep),
                      ("tuner.serve_bench(engine, traffic, slo)", served),
                      ("%tuner compare -2 -1", Comparison([run, run2]))):
        bundle = obj._repr_mimebundle_()
        cell = nbformat.v4.new_code_cell(code, execution_count=1)
        cell.outputs = [nbformat.v4.new_output("execute_result", data=bundle, execution_count=1)]
        nb.cells.append(cell)
    nbformat.write(nb, path)  # no kernelspec: JupyterLab asks, and the test answers "No Kernel"
    points = sum(1 for o in run.ops_records if o["flops"] > 0 and o["time_ms"] > 0 and o["bytes"] > 0)
    return points, len(sweep.trials), served.metrics["finished"]


def test_a_saved_notebook_renders_in_chromium_with_no_kernel(labext_path, tmp_path):
    need_chromium()
    points, trials, finished = _saved_notebook(tmp_path / "saved.ipynb")
    ext = f"--LabApp.extra_labextensions_path={labext_path}"
    with jupyterlab(tmp_path, ext) as url, chromium((1400, 1400)) as page:
        page.goto(url + "lab/tree/saved.ipynb")
        # the notebook names no kernel, so JupyterLab asks: answer "No Kernel"; the saved outputs alone must render
        dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
        dialog.wait_for()
        dialog.locator("button", has_text="No Kernel").click()
        dialog.wait_for(state="detached")
        page.wait_for_selector(".tuner-run .tuner-roofline")
        assert page.locator(".tuner-run .tuner-metrics tr").count() >= 5  # model, device, TTFT, ...
        assert page.locator(".tuner-roofline .tuner-point[data-op]").count() == points
        assert page.locator(".tuner-breakdown .tuner-bar").count() > 0
        assert page.locator(".tuner-sweep .tuner-pareto .tuner-point[data-trial]").count() == trials
        assert page.locator(".tuner-sweep .tuner-trials tbody tr").count() == trials
        slo = page.locator(".tuner-sweep .tuner-pareto .tuner-slo")
        assert slo.count() == 1 and slo.get_attribute("data-slo").startswith("decode_bytes_per_token <= ")
        assert page.locator(".tuner-sweep .tuner-pareto .tuner-front-mark").count() == 1  # a one-point front
        # roofline labels: the slowest ops named, no two boxes overlapping (measured by the browser)
        boxes = page.evaluate("() => [...document.querySelectorAll('.tuner-roofline .tuner-oplabel')]"
                              ".map(t => { const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; })")
        assert len(boxes) >= 3
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        ticks = page.locator(".tuner-roofline .tuner-tick").all_text_contents()
        assert any(t.endswith("FLOP/s") for t in ticks) and not any(re.search(r"\de[+-]?\d", t) for t in ticks)
        ceilings = page.locator(".tuner-roofline .tuner-ceiling").all_text_contents()
        assert any(c.startswith("memory ") and c.endswith("B/s") for c in ceilings) and len(ceilings) == 3
        page.wait_for_selector(".tuner-serve .tuner-queue")
        assert page.locator(".tuner-serve .tuner-metrics tr").count() >= 8  # model, ..., goodput, scheduler did
        assert page.locator(".tuner-serve .tuner-queue path[data-series]").count() == 2  # running, waiting
        cdf = page.locator(".tuner-serve .tuner-cdf-ttft_ms path[data-points]")
        assert cdf.get_attribute("data-points") == str(finished)
        assert page.locator(".tuner-serve .tuner-cdf-ttft_ms .tuner-slo").count() == 1
        assert "met the SLO" in page.locator(".tuner-serve .tuner-metrics").text_content()
        compared = page.locator(".tuner-compare")
        compared.wait_for()
        assert compared.locator(".tuner-compare-table th").first.text_content() == ""
        heads = compared.locator(".tuner-compare-table th").all_text_contents()
        assert heads[1].startswith("A ") and heads[2].startswith("B ") and heads[3] == "B/A"
        steps = compared.locator(".tuner-compare-steps path[data-run]")
        assert steps.count() == 2 and steps.nth(1).get_attribute("data-steps") == "5"  # run2: 6 tokens, 5 steps
        assert compared.locator(".tuner-compare-roofline .tuner-arrow[data-op]").count() == points
        assert compared.locator(".tuner-compare-ops tbody tr").count() >= points
        hover = page.locator(".tuner-roofline .tuner-point[data-op] title").first.text_content()
        assert "-bound" in hover and "of peak" in hover
        kernels = json.loads(urllib.request.urlopen(url + "api/kernels", timeout=5).read())
        assert kernels == []  # rendered from the saved file: no kernel ran
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator(".tuner-run").first.screenshot(path=str(ARTIFACTS / "renderer-run.png"))
        page.locator(".tuner-sweep").first.screenshot(path=str(ARTIFACTS / "renderer-sweep.png"))
        page.locator(".tuner-serve").first.screenshot(path=str(ARTIFACTS / "renderer-serve.png"))
        compared.screenshot(path=str(ARTIFACTS / "renderer-compare.png"))
        # the charts follow JupyterLab's theme
        background = ("() => getComputedStyle(document.querySelector('.tuner-roofline'))"
                      ".backgroundColor.match(/\\d+/g).slice(0, 3).map(Number)")
        light = page.evaluate(background)
        page.evaluate("() => { window.jupyterapp.commands.execute('apputils:change-theme', "
                      "{theme: 'JupyterLab Dark'}); return true; }")
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
        time.sleep(1)
        dark = page.evaluate(background)
        assert sum(light) > 600 and sum(dark) < 200, (light, dark)
        page.locator(".tuner-run").first.screenshot(path=str(ARTIFACTS / "renderer-run-dark.png"))
    assert (ARTIFACTS / "renderer-run.png").stat().st_size > 5_000


def test_an_editable_install_without_node_still_builds(tmp_path):
    """The Python side never needs the renderer: with no node or npm on PATH, an editable build warns and
    goes on (optional-editable-build)."""
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(src)], check=True, timeout=120)
    bindir = tmp_path / "bin"  # a PATH with nothing on it
    bindir.mkdir()
    code = ("import shutil, sys; from hatchling.build import build_editable\n"
            "assert shutil.which('node') is None and shutil.which('npm') is None\n"
            "print(build_editable(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=src, capture_output=True,
                       text=True, timeout=300, env={"HOME": str(tmp_path), "PATH": str(bindir)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Could not find cmd (npm)" in r.stderr  # the warning, not a failure
    assert (tmp_path / "out" / r.stdout.strip().splitlines()[-1]).exists()
    assert not (src / "tuner" / "labextension").exists()
