"""Dataset loaders and generators; every one yields the records of `schema`."""
