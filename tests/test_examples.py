"""Every notebook in examples/ runs top to bottom on a real Jupyter kernel (nbclient), without an error."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.ipynb"))


def test_the_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"quickstart.ipynb", "roofline.ipynb", "sweep_and_export.ipynb",
                                          "serving.ipynb"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   store_widget_state=True).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert "image/png" in kinds  # the charts rendered
    if path.stem == "quickstart":
        assert "application/vnd.tuner.run+json" in kinds
        assert "application/vnd.jupyter.widget-view+json" in kinds  # the panel
        assert (tmp_path / "tuner-runs").is_dir() and len(list((tmp_path / "tuner-runs").glob("*.json"))) == 4
        texts = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
        assert "Paris" in texts  # the real model's reply
    if path.stem == "serving":
        assert {"application/vnd.tuner.serve+json", "application/vnd.tuner.capacity+json"} <= kinds
        assert len(list((tmp_path / "tuner-runs" / "serve").glob("*.json"))) == 1  # the magic's record
        assert "max-num-batched-tokens: 128" in (tmp_path / "exports" / "vllm-config.yaml").read_text()
    if path.stem == "sweep_and_export":
        assert "application/vnd.tuner.sweep+json" in kinds
        assert {p.name for p in (tmp_path / "exports").iterdir()} >= {"tuner.yaml", "vllm-config.yaml", "tgi.env"}
