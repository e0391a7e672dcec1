import numpy as np

from memos_lab.models.embedder import EmbeddingCache, HashingEmbedder


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
