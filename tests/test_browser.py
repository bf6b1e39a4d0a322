"""A real browser: JupyterLab on 127.0.0.1, headless Chromium (Debian's, through Playwright) opens the
quickstart, runs it, sees the panel render, clicks Run and sees the live chart and the history update,
then compares the last two runs.
The screenshot is kept as a test artifact (tests/artifacts/panel.png).

Needs Debian's `chromium` (apt-get install chromium; never a downloaded browser) and the playwright
package; .ci/run installs both and sets TUNER_CI=1, so there the test cannot skip."""

import shutil
import time
from pathlib import Path

import pytest
from labtools import chromium, jupyterlab, need_chromium

ROOT = Path(__file__).parent.parent
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def lab(tmp_path):
    shutil.copy(ROOT / "examples" / "quickstart.ipynb", tmp_path)
    with jupyterlab(tmp_path, env={"OMP_NUM_THREADS": "1"}) as url:  # leave the browser a core
        yield url, tmp_path


def _idle(page) -> bool:
    _accept_kernel_dialog(page)
    return page.evaluate("Array.from(document.querySelectorAll('.jp-Notebook-ExecutionIndicator'))"
                         ".map(e => e.getAttribute('data-status'))") == ["idle"] and page.evaluate(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel); }")


def _accept_kernel_dialog(page) -> None:
    """JupyterLab sometimes asks which kernel to start (when the notebook opens before the kernel specs
    arrive): take its default, the notebook's own python3."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        dialog.locator("button.jp-mod-accept").click()


def _until(cond, timeout: float, what: str, page) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (tests/artifacts/failure.png)")


def test_quickstart_panel_renders_and_runs_in_chromium(lab):
    need_chromium()
    url, root = lab
    with chromium(viewport=(1400, 3000)) as page:  # tall enough for the whole panel's screenshot
        page.goto(url + "lab/tree/quickstart.ipynb")
        page.wait_for_function("() => window.jupyterapp && "
                               "window.jupyterapp.commands.hasCommand('notebook:run-all-cells')")
        _until(lambda: _idle(page), 60, "the kernel to start", page)
        # not awaited: page.evaluate waits for a returned promise, with no timeout, and run-all's promise
        # settles only when every cell has run (the earlier hangs); the loops below poll with deadlines
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
        run = page.locator(".jupyter-widgets button:has-text('Run')").first
        _until(lambda: run.count() and run.is_visible(), 180, "the panel to render", page)
        _until(lambda: _idle(page), 180, "the notebook to finish", page)
        status = page.locator(".widget-html-content", has_text="ready")
        assert status.count() == 1  # the panel's status before any click
        records_before = len(list((root / "tuner-runs").glob("*.json")))
        run.click()
        done = page.locator(".widget-html-content", has_text="done")
        _until(lambda: done.count() == 1, 180, "the panel's run to finish", page)
        live = page.locator(".jupyter-widgets img").first
        assert (live.get_attribute("src") or "").startswith("blob:")  # the live step-latency chart
        history = page.locator(".jupyter-widgets table.dataframe tbody tr")
        assert history.count() == records_before + 1
        assert page.locator(".jupyter-widgets img:visible").count() == 1  # no empty (broken) charts shown
        compare = page.locator(".jupyter-widgets button:has-text('Compare last two')")
        assert compare.is_enabled()  # the quickstart's own runs are in the history too
        compare.click()
        table = page.locator(".widget-html-content", has_text="A against B")
        _until(lambda: table.count() == 1 and page.locator(".jupyter-widgets img:visible").count() == 2, 120,
               "the comparison of the last two runs", page)
        text = table.inner_text()
        assert " B/A" in text and "tpot_ms_p99" in text  # headed columns: run A, run B and their ratio
        news = page.locator(".jp-Notification-Toast button", has_text="No")
        if news.count():  # JupyterLab's "get notified about news?" toast, out of the screenshot
            news.first.click()
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator(".jupyter-widgets.widget-vbox").first.screenshot(path=str(ARTIFACTS / "panel.png"))
    assert (ARTIFACTS / "panel.png").stat().st_size > 10_000
    assert len(list((root / "tuner-runs").glob("*.json"))) == records_before + 1
