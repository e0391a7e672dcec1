"""The ONNX embedder: refuses what it cannot run, and matches the torch MiniLM (integration)."""

import sys

import numpy as np
import pytest

from memos_lab.errors import ConfigError
from memos_lab.models.embedder import OnnxEmbedder, SentenceTransformerEmbedder


def test_unknown_quantisation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="quantize.*int8"):
        OnnxEmbedder(export_dir=str(tmp_path), quantize="int4")


def test_a_missing_runtime_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="onnxruntime"):
        OnnxEmbedder(export_dir=str(tmp_path))


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no model folder"):
        OnnxEmbedder(export_dir=str(tmp_path), model_path=str(tmp_path / "nowhere"))


@pytest.mark.integration
def test_onnx_minilm_matches_torch_and_is_exported_once(tmp_path):
    texts = ["Caroline: I went to a LGBTQ support group yesterday.", "hi", "Melanie: " + "a long turn " * 200]
    reference = SentenceTransformerEmbedder().encode(texts)
    fp32 = OnnxEmbedder(export_dir=str(tmp_path), quantize="none")
    np.testing.assert_allclose(fp32.encode(texts), reference, atol=1e-4)
    exported = sorted(tmp_path.rglob("*.onnx"))
    stamps = [path.stat().st_mtime_ns for path in exported]
    int8 = OnnxEmbedder(export_dir=str(tmp_path), quantize="int8")
    assert (int8.encode(texts) * reference).sum(axis=1).min() > 0.97  # int8 weights: close, not equal
    assert [path.stat().st_mtime_ns for path in exported] == stamps  # the fp32 export was reused
    assert int8.dim == 384 and len(sorted(tmp_path.rglob("*.onnx"))) == 2


@pytest.mark.integration
def test_a_replaced_or_truncated_onnx_export_is_rebuilt_never_used(tmp_path, caplog):
    texts = ["Caroline went to a support group.", "hi"]
    first = OnnxEmbedder(export_dir=str(tmp_path), quantize="none")
    reference = first.encode(texts)
    [graph] = tmp_path.rglob("model.onnx")
    assert graph.parent.parent.name == first.name.split("/")[0]  # the folder is named by the model fingerprint
    original = graph.read_bytes()
    for damaged in (original[: len(original) // 2], original[:-64] + bytes(64)):  # truncated; another graph
        graph.write_bytes(damaged)
        caplog.clear()
        again = OnnxEmbedder(export_dir=str(tmp_path), quantize="none")
        [line] = [record.getMessage() for record in caplog.records if "ONNX" in record.getMessage()]
        assert line.startswith("rebuilding the ONNX export: ") and "\n" not in line
        np.testing.assert_allclose(again.encode(texts), reference, atol=1e-5)
        assert graph.read_bytes() != damaged


@pytest.mark.integration
def test_torch_and_onnx_vectors_have_different_names_and_a_cube_refuses_the_other(tmp_path):
    from memos_lab.cube import MemCube
    from memos_lab.errors import IncompatibleError
    from memos_lab.memory.textual.general_text import GeneralTextMemory

    torch_embedder = SentenceTransformerEmbedder()
    onnx_embedder = OnnxEmbedder(export_dir=str(tmp_path / "onnx"), quantize="int8")
    assert torch_embedder.name.split("/")[0] == onnx_embedder.name.split("/")[0]  # the same weights
    assert (torch_embedder.name, onnx_embedder.name) != (onnx_embedder.name, torch_embedder.name)
    memory = GeneralTextMemory(torch_embedder)
    MemCube.create("alice", memory, cube_id="c").dump(tmp_path / "cube")
    with pytest.raises(IncompatibleError, match="onnx-int8.*would not match"):
        MemCube.load(tmp_path / "cube", onnx_embedder)
