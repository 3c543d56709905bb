"""examples/lecture.ipynb runs top to bottom in a fresh kernel, and is stored without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extras: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extras: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extras: pip install -e '.[test]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lecture.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"code cells {dirty} keep outputs: clear them before committing (Kernel > Restart & Clear)"


def test_notebook_runs_without_errors(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,  # per cell; the whole notebook takes well under a minute on 2 CPU cores
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # anything it writes lands here
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"examples/lecture.ipynb failed:\n{err}")
    seconds = time.perf_counter() - start
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    # The story's claims hold on what it computed: figures drawn, the two unit projections agree.
    figures = sum("image/png" in out.get("data", {}) for out in outputs)
    assert figures >= 8, f"only {figures} figures were drawn"
    printed = "".join(out.get("text", "") for out in outputs)
    assert float(printed.split("largest difference:")[1].split()[0]) < 1e-4
    print(f"examples/lecture.ipynb ran in {seconds:.1f} s")
