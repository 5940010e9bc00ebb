"""ONNX export of LOT models (slow): dynamic batch and sequence length, parity with PyTorch in
onnxruntime, for both lattice dynamics modes. Guards against shape-dependent Python control flow
being baked into the exported graph."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from lotsim.model import LOTModel, ModelConfig

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class _Logits(torch.nn.Module):
    def __init__(self, model: LOTModel):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(idx).logits


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {}, {"dynamics": "sequence", "score": "multiplicative", "method": "euler", "n_steps": 2}])
def test_lattice_model_exports_to_onnx(tmp_path, options):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=37, seq_len=32, d_model=32, n_layers=2, n_heads=4, attention="lattice",
                         attention_options=options)
    model = LOTModel(config).eval()
    path = tmp_path / "lot.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model), (torch.randint(0, 37, (2, 16)),), str(path), input_names=["idx"],
                          output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes={"idx": {0: torch.export.Dim("batch"),
                                                  1: torch.export.Dim("seq", max=32)}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 16), (3, 5), (1, 32)]:
        idx = torch.randint(0, 37, shape, generator=torch.Generator().manual_seed(1))
        expected = model(idx).logits.detach().numpy()
        got = session.run(None, {"idx": idx.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
