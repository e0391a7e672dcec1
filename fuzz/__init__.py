"""Fuzzing memos_lab as a stranger would attack it: damaged artifacts and inputs, a hostile server, hostile
run folders. A development tool beside the package (not shipped in the wheel); run it from the repository's
root as `python -m fuzz` (see fuzz/__main__.py)."""
