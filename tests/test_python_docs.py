"""docs/python.md is executable: every ```python block runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_python_docs_examples_run(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "did you mean 'topology'" in out and "K_c = " in out
    assert (tmp_path / "runs" / "sweep.h5").is_file()
