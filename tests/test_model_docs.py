"""docs/model.md is executable: every ```python block runs, in order, in one namespace."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch

from lotsim.model import LOTModel, ModelConfig, available_attentions, unregister_attention

DOC = Path(__file__).resolve().parents[1] / "docs" / "model.md"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_docs_examples_run(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    before = set(available_attentions())
    torch.manual_seed(0)
    namespace: dict = {}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
    finally:
        for name in set(available_attentions()) - before:
            unregister_attention(name)
    out = capsys.readouterr().out
    assert "simulate.toml" in out and "'lattice'" in out and "'vanilla'" in out


def test_model_docs_toml_section_validates():
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    sections = [tomllib.loads(b)["model"] for b in blocks if "[model]" in b]
    assert sections
    for section in sections:
        config = ModelConfig.model_validate(section)
        assert config.d_ff == 688
        with torch.device("meta"):
            LOTModel(config)
