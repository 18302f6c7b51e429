"""models/film_fold.py: the U-Net with FiLM split into a step part and a per-chunk part computes what the U-Net
computes, eagerly and inside an exported whole-loop graph, where the per-chunk part really is computed once."""
from __future__ import annotations

import collections

import pytest
import torch

from models.film_fold import FoldedFiLMUnet, fold_film
from models.sampler import Sampler
from models.schedulers import SchedulerSpec
from models.unet1d import ConditionalUnet1D


def _unet(scale: bool = True) -> ConditionalUnet1D:
    torch.manual_seed(0)
    return ConditionalUnet1D(2, 20, diffusion_step_embed_dim=32, down_dims=(16, 32, 64), kernel_size=3,
                             n_groups=4, cond_predict_scale=scale).eval()


@pytest.mark.parametrize("scale", [True, False])
def test_folded_unet_equals_the_unet(scale):
    unet = _unet(scale)
    folded = FoldedFiLMUnet(unet).eval()
    x, g = torch.randn(3, 16, 2), torch.randn(3, 20)
    with torch.no_grad():
        for t in (torch.tensor([0, 40, 99]), torch.tensor(7), 55):
            assert torch.allclose(folded(x, t, g), unet(x, t, g), atol=1e-5, rtol=1e-5)


def test_only_a_unet_is_folded():
    unet = _unet()
    assert isinstance(fold_film(unet), FoldedFiLMUnet)
    other = torch.nn.Linear(2, 2)
    assert fold_film(other) is other


def test_loop_graph_computes_the_chunk_part_once_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    steps = 6

    class Loop(torch.nn.Module):
        def __init__(self, den):
            super().__init__()
            self.s = Sampler(den, SchedulerSpec(kind="ddim"), steps)

        def forward(self, noise, cond):
            return self.s(noise, cond)

    x, g = torch.randn(1, 16, 2), torch.randn(1, 20)
    counts, outs = {}, {}
    for name, den in (("plain", _unet()), ("folded", fold_film(_unet()))):
        path = tmp_path / f"{name}.onnx"
        with torch.no_grad():
            outs[name] = Loop(den).eval()(x, g)
            torch.onnx.export(Loop(den).eval(), (x, g), str(path), input_names=["noise", "cond"],
                              output_names=["out"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()  # constant folding only: what is left is what runs per chunk
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(tmp_path / f"{name}_folded.onnx")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        counts[name] = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
        got = session.run(None, {"noise": x.numpy(), "cond": g.numpy()})[0]
        assert abs(got - outs[name].numpy()).max() < 1e-4
    assert torch.allclose(outs["folded"], outs["plain"], atol=1e-4)
    blocks = len(_unet().residual_blocks())
    # the condition's projection: once per block per chunk, not once per block per step
    assert counts["folded"]["Gemm"] + counts["folded"]["MatMul"] <= blocks
    assert counts["plain"]["Gemm"] + counts["plain"]["MatMul"] >= blocks * steps
