"""Memory scheduling: which memories sit in the fast tiers (working memory, KV cache, weights) and when they move."""
