"""Activation memory: precomputed KV caches reused as prompt prefixes (`base.ActivationMemory`)."""
