import sqlite3

import numpy as np

from memos_lab.models.embedder import EmbeddingCache, HashingEmbedder, folder_fingerprint


def test_cache_returns_stored_vectors_and_embeds_only_new_texts(tmp_path):
    inner = HashingEmbedder(dim=32)
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return inner.encode(texts)

    cache = EmbeddingCache(tmp_path / "vectors.sqlite", 32)
    first = cache.encode(["a cat", "a dog", "a cat"], encode)
    again = EmbeddingCache(tmp_path / "vectors.sqlite", 32).encode(["a dog", "a bird", "a cat"], encode)
    assert calls == [["a cat", "a dog"], ["a bird"]]
    np.testing.assert_array_equal(first[1], again[0])
    np.testing.assert_allclose(again, inner.encode(["a dog", "a bird", "a cat"]))


def model_folder(path, weights: bytes = b"weights"):
    (path / "1_Pooling").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{}")
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (path / "README.md").write_text("about")
    return path


def test_a_model_folder_is_named_by_its_files_not_by_its_name(tmp_path):
    first = folder_fingerprint(model_folder(tmp_path / "minilm"))
    assert folder_fingerprint(model_folder(tmp_path / "renamed")) == first
    (tmp_path / "renamed" / "README.md").write_text("other documentation")
    assert folder_fingerprint(tmp_path / "renamed") == first
    assert folder_fingerprint(model_folder(tmp_path / "retrained", b"weightz")) != first
    (tmp_path / "renamed" / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert folder_fingerprint(tmp_path / "renamed") != first  # other pooling: other vectors


def test_the_cache_file_is_named_by_the_embedder_that_makes_the_vectors(tmp_path):
    torch_vectors = HashingEmbedder(dim=32)
    torch_vectors.name = "0123456789abcdef/torch"
    onnx_vectors = HashingEmbedder(dim=32)
    onnx_vectors.name = "0123456789abcdef/onnx-int8"
    paths = {EmbeddingCache.for_embedder(tmp_path, embedder).path for embedder in (torch_vectors, onnx_vectors)}
    assert len(paths) == 2 and all(path.parent == tmp_path for path in paths)


def test_a_cache_that_cannot_be_written_still_returns_the_vectors(tmp_path, caplog):
    inner = HashingEmbedder(dim=32)
    cache = EmbeddingCache(tmp_path / "vectors.sqlite", 32)
    with sqlite3.connect(tmp_path / "vectors.sqlite") as db:  # a trigger stands in for a full disk
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON vectors BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
        )
    vectors = cache.encode(["a cat"], inner.encode)
    np.testing.assert_allclose(vectors, inner.encode(["a cat"]))
    assert "not updated" in caplog.text
