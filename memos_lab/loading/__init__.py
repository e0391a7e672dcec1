"""`python -m memos_lab load`: one loader per memory type, each `load(cfg) -> summary dict`."""
