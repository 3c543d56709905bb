"""The documentation's Python code blocks run, in order, page by page (like notebooks)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_every_page_is_collected() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/quickstart.md", "docs/tutorials/lecture.md"} <= names


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_code_blocks_run(page: Path, tmp_path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs:{page.name}"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # figures the pages save land here
    try:
        for number, block in enumerate(BLOCK.findall(page.read_text()), start=1):
            try:
                exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{page.relative_to(ROOT)} block {number} failed: {err!r}\n{block}") from err
    finally:
        os.chdir(cwd)


def test_api_reference_is_up_to_date() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "api.md").read_text() == module.render(), "run: python docs/make_api.py"
