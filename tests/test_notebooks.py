"""Every notebook under notebooks/ runs end to end at the tiny size, and is committed stripped.

The notebooks run in a fresh kernel of this interpreter (nbclient) with
``COMPDIFF_NOTEBOOK_SIZE=tiny``; the first cell's pip install is skipped because
compdiff imports.
"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def _name(path: str) -> str:
    return os.path.basename(path)


def test_there_are_notebooks():
    assert {"quickstart_2d.ipynb", "clevr_positions.ipynb"} <= set(map(_name, NOTEBOOKS))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{_name(path)}: cells {dirty} hold outputs; clear all "
                       "outputs (Jupyter: Edit > Clear All Outputs) and save it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs_at_tiny_size(path, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPDIFF_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("COMPDIFF_NOTEBOOK_WORKDIR", str(tmp_path))
    # One XLA CPU thread (compdiff.runtime.configure_cpu, called by the notebooks as by the
    # scripts): at this size compiling dominates, and a second thread only spins beside
    # the other tests of a parallel CI run.
    monkeypatch.setenv("COMPDIFF_CPU_THREADS", "1")
    # The kernel must import this checkout's compdiff and configs, as pytest does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        ROOT, os.environ.get("PYTHONPATH", "")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "size tiny" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 2, f"{_name(path)} showed {images} figures"  # the data, the samples
