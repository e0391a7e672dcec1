"""Models used by memos_lab: language models (llm) and text embedders (embedder)."""
