"""Fuzzing what memos_lab reads from disk: every artifact kind and every input format, as a stranger writes them.

Each example copies a pristine sample (a cube with KV-cache and LoRA slots, a KV cache, a LoRA memory with
a gate, a statistics cache, a MOS root, and LoCoMo / LongMemEval / zsRE / CounterFact / JSONL inputs),
damages it (a JSON field replaced by a planted `_target_`, a class path, a wrong type, a lone surrogate, a
deep array; bytes truncated or flipped, with or without a forged hash; links, unlisted files, FIFOs,
foreign files with a correct hash; an SQL view for the items table) and loads it. The oracle:

- the load succeeds or raises one MemosError line (anything else is a raw traceback);
- no code runs (audit events of processes, exec, file creation; output on stdout from a planted print);
- no file outside the sample and Python's own installation is opened (audit event "open");
- it finishes within the deadline; the sample's files are unchanged afterwards.

The oracle is fuzz/oracle.py's; this family adds the check that the sample's files are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz.oracle import DEADLINE_S, Guard, Outcome, library_roots, observe, tree_digest

# Values planted into JSON fields: code by name, wrong types, hostile text.
PLANTS: tuple[Any, ...] = (
    {"_target_": "builtins.print", "_args_": ["PLANTED"]},
    {"_target_": "os.makedirs", "name": "PLANTED_DIR"},
    {"_target_": "fuzz.oracle.Sentinel"},
    {"nested": [{"_target_": "subprocess.Popen", "args": ["true"]}]},
    {"_target_": "memos_lab.models.embedder.HashingEmbedder", "_partial_": True},
    "builtins.print",
    "os.makedirs",
    "fuzz.oracle.Sentinel",
    "../../outside/secret.txt",
    "/dev/zero",
    "\ud800",
    "",
    "{memories.__class__}",
    -1,
    0,
    10**30,
    1.5,
    True,
    None,
    [],
    {},
    ["a", 1, None],
    "x" * 5000,
)
DEEP = "[" * 200_000 + "]" * 200_000

# ---- samples --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """A pristine folder (or file) and how to load it."""

    name: str
    path: Path
    load: Callable[[Path], Any]
    json_files: list[str]  # JSON files inside, relative, that mutations edit (the manifest first)
    payload_files: list[str] = field(default_factory=list)  # binary files for byte mutations


def build_samples(workdir: Path) -> list[Sample]:
    """Write one pristine sample of every artifact kind and input format under `workdir`."""
    import torch

    from memos_lab.artifact import read_artifact, write_artifact
    from memos_lab.cube import MemCube
    from memos_lab.data.knowledge import load_counterfact, load_zsre
    from memos_lab.data.locomo import load_locomo
    from memos_lab.data.longmemeval import load_longmemeval
    from memos_lab.data.schema import KnowledgeEdit
    from memos_lab.loading.declarative import jsonl_items
    from memos_lab.memory.activation.kv_cache import KVCacheMemory
    from memos_lab.memory.parametric.gate import EditGate
    from memos_lab.memory.parametric.lora import LoRAMemory
    from memos_lab.memory.textual.vector import VectorMemory
    from memos_lab.models.embedder import HashingEmbedder
    from memos_lab.models.llm import build_tiny_llama
    from memos_lab.mos import MOS

    torch.set_num_threads(1)
    lm = build_tiny_llama(seed=0)
    embedder = HashingEmbedder(dim=64)
    samples = workdir / "pristine"
    samples.mkdir(parents=True)

    def new_text() -> VectorMemory:
        return VectorMemory(embedder, index_type="flat")

    kv = KVCacheMemory(lm)
    kv.add("maya", "Maya lives in Lisbon")
    kv.chunk_cache("Maya has a dog", "item-1")  # a chunk entry and the header it was encoded behind
    kv.save(samples / "kv_cache")
    gate = EditGate({"_target_": "memos_lab.models.embedder.HashingEmbedder", "dim": 64}, threshold=0.3)
    lora = LoRAMemory(
        lm, gate=gate, adapter="alice", rank=2, alpha=4, steps=2, target_modules=["q_proj"], stop_when_learned=False
    )
    lora.edit(
        [
            KnowledgeEdit(
                "e0", "Anouk Elphick", "city", "Anouk Elphick lives in", "Oslo", paraphrases=("Anouk lives in",)
            )
        ]
    )
    lora.save(samples / "lora")
    cube = MemCube.create("alice", new_text(), cube_id="c1")
    cube.text.add(["Maya lives in Lisbon", "Tom bought a red bicycle"])
    cube.activation, cube.parametric = kv, lora
    cube.dump(samples / "cube")
    lora.close()
    write_artifact(
        samples / "stats",
        "stats",
        {"layer": 1, "samples": 8},
        files={"cov.safetensors": _tensor_bytes()},
        fingerprint=lm.fingerprint(),
    )
    mos = MOS(new_text, root=samples / "mos_root")
    for user in ("alice", "bob"):
        mos.register_user(user)
    mos.create_cube("alice", "shared")
    mos.share_cube("alice", "shared", "bob")
    mos.add("alice", "shared", ["Maya lives in Lisbon"])
    mos.save("alice", "shared")

    fixtures = Path(__file__).resolve().parent.parent / "tests" / "data" / "fixtures"
    inputs = samples / "inputs"
    inputs.mkdir()
    for name in ("locomo_tiny.json", "longmemeval_tiny.json", "zsre_tiny.json", "counterfact_tiny.json"):
        shutil.copy(fixtures / name, inputs / name)
    (inputs / "items.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "Maya lives in Lisbon", "tags": ["home"], "session": "s1"},
                {"text": "Tom bought a bicycle", "user": "alice"},
            ]
        )
        + "\n"
    )

    def load_cube(path: Path) -> Any:
        cube = MemCube.load(path, embedder, model=lm)
        cube.parametric.close()  # type: ignore[union-attr]  # the sample cube has a parametric slot; a load that drops it should fail here as it did

    def load_lora(path: Path) -> Any:
        LoRAMemory.load(path, lm).close()

    def load_stats(path: Path) -> Any:
        artifact = read_artifact(path, "stats", fingerprint=lm.fingerprint())
        return [artifact.read_tensors(name) for name in artifact.files]

    def load_mos(path: Path) -> Any:
        return MOS(new_text, root=path)

    cube_json = [
        "manifest.json",
        "index/vector_ids.json",
        "activation/manifest.json",
        "parametric/manifest.json",
        "parametric/adapters/alice/adapter_config.json",
    ]
    return [
        Sample("cube", samples / "cube", load_cube, cube_json, ["items.sqlite", "index/vectors.faiss"]),
        Sample(
            "kv_cache",
            samples / "kv_cache",
            lambda p: KVCacheMemory.load(p, lm),
            ["manifest.json"],
            ["00000.safetensors"],
        ),
        Sample(
            "lora",
            samples / "lora",
            load_lora,
            ["manifest.json", "adapters/alice/adapter_config.json"],
            ["adapters/alice/adapter_model.safetensors"],
        ),
        Sample("stats", samples / "stats", load_stats, ["manifest.json"], ["cov.safetensors"]),
        Sample(
            "mos_root",
            samples / "mos_root",
            load_mos,
            ["registry.json", "cubes/shared/manifest.json"],
            ["cubes/shared/items.sqlite"],
        ),
        Sample("locomo", inputs / "locomo_tiny.json", lambda p: list(load_locomo(str(p))), [""]),
        Sample("longmemeval", inputs / "longmemeval_tiny.json", lambda p: list(load_longmemeval(str(p))), [""]),
        Sample("zsre", inputs / "zsre_tiny.json", lambda p: load_zsre(str(p)), [""]),
        Sample("counterfact", inputs / "counterfact_tiny.json", lambda p: load_counterfact(str(p)), [""]),
        Sample("jsonl", inputs / "items.jsonl", lambda p: list(jsonl_items(p, "alice")), [""]),
    ]


def _tensor_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"cov": torch.eye(4)})


# ---- mutations ------------------------------------------------------------------------------------------


def json_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node of a JSON value as a path of keys and indices (the root is ())."""
    paths = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths += json_paths(item, (*path, i))
    return paths


def set_at(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    node = value
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return value


def _dump(value: Any) -> str:
    """JSON text of `value`, where the string "<DEEP>" becomes a 200,000-deep array."""
    return json.dumps(value).replace('"<DEEP>"', DEEP)


def _jsonl(text: str) -> bool:
    return text.lstrip().startswith("{") and "\n{" in text.strip()


def mutate_json(root: Path, relative: str, path_index: int, new: Any, resign: bool) -> str:
    """Replace one node (chosen by index among all nodes) of a JSON file in the sample."""
    file = root / relative if relative else root
    text = file.read_text(encoding="utf-8")
    if _jsonl(text):  # one JSON object per line: mutate inside the first record
        lines = text.splitlines()
        value = json.loads(lines[0])
        paths = json_paths(value)
        path = paths[path_index % len(paths)]
        lines[0] = _dump(set_at(value, path, new))
        file.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    else:
        value = json.loads(text)
        paths = json_paths(value)
        path = paths[path_index % len(paths)]
        file.write_text(_dump(set_at(value, path, new)), encoding="utf-8", errors="surrogatepass")
    if resign and relative:
        _resign(root, relative)
    return (
        f"json {relative or file.name} {'/'.join(map(str, path))} = {repr(new)[:40]}{' (re-signed)' if resign else ''}"
    )


def mutate_bytes(root: Path, relative: str, how: int, offset: int, resign: bool) -> str:
    file = root / relative
    data = bytearray(file.read_bytes())
    kind = ("truncate", "flip", "junk", "empty")[how % 4]
    if kind == "truncate":
        data = data[: offset % max(1, len(data))]
    elif kind == "flip" and data:
        data[offset % len(data)] ^= 0xFF
    elif kind == "junk":
        data = bytearray(os.urandom(64)) + data[64:]
    else:
        data = bytearray()
    file.write_bytes(bytes(data))
    if resign:
        _resign(root, relative)
    return f"bytes {relative} {kind}@{offset}{' (re-signed)' if resign else ''}"


def mutate_files(root: Path, outside: Path, sample: Sample, how: int, pick: int) -> str:
    """Links, unlisted files, special files, foreign files with a correct hash, escaping file entries, SQL views."""
    names = sample.payload_files + [n for n in sample.json_files if n]
    name = names[pick % len(names)] if names else ""
    target = root / name if name else root
    kind = (
        "symlink-out",
        "symlink-out-resigned",
        "devzero",
        "fifo",
        "unlisted",
        "entry-escape",
        "entry-absolute",
        "sql-view",
        "dir-symlink",
    )[how % 9]
    if kind.startswith("symlink-out") and name:
        target.unlink()
        target.symlink_to(outside / "secret.txt")
        if kind.endswith("resigned"):
            _resign(root, name, source=outside / "secret.txt")
    elif kind == "devzero" and name:
        target.unlink()
        target.symlink_to("/dev/zero")
    elif kind == "fifo" and name:
        target.unlink()
        os.mkfifo(target)
    elif kind == "unlisted":
        (target.parent if name else root.parent / "stray").joinpath("stray.json").write_text("{}")
    elif kind in ("entry-escape", "entry-absolute") and (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text())
        entry = {"bytes": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}
        key = "../outside/secret.txt" if kind == "entry-escape" else str(outside / "secret.txt")
        if isinstance(manifest.get("files"), dict):
            manifest["files"][key] = entry
        (root / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "sql-view" and (root / "items.sqlite").is_file():
        with contextlib.closing(sqlite3.connect(root / "items.sqlite")) as db, db:
            db.execute("ALTER TABLE items RENAME TO real_items")
            db.execute(
                "CREATE VIEW items AS WITH RECURSIVE r(position, id, text, metadata, embedding) AS "
                "(SELECT 0, 'a', 'b', '{}', NULL UNION ALL SELECT position + 1, id, text, metadata, embedding FROM r) "
                "SELECT * FROM r"
            )
        _resign(root, "items.sqlite")
    elif kind == "dir-symlink" and (root / "index").is_dir():
        shutil.rmtree(root / "index")
        (root / "index").symlink_to(outside)
    return f"files {kind} {name}"


def _resign(root: Path, relative: str, source: Path | None = None) -> None:
    """Record a file's new size and sha256 in the manifest of the artifact holding it, as a forger would."""
    parts = Path(relative).parts
    for cut in range(len(parts) - 1, -1, -1):
        manifest_path = root.joinpath(*parts[:cut], "manifest.json")
        if manifest_path.is_file() and manifest_path != root / relative:
            break
    else:
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        return
    data = (source or root / relative).read_bytes()
    name = "/".join(parts[cut:])
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest_path.write_text(json.dumps(manifest))


# ---- running one example ---------------------------------------------------------------------------------


class Fuzzer:
    """Builds the samples once; `run(sample, mutate)` loads one damaged copy under the oracle."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        os.environ.setdefault("HF_DATASETS_CACHE", str(self.workdir / "hf_datasets"))
        import datasets.config

        # datasets reads the variable once, at its first import (maybe before this fuzzer): point it there too
        datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])
        self.samples = {s.name: s for s in build_samples(self.workdir)}
        self.outside = self.workdir / "outside"
        self.outside.mkdir(parents=True, exist_ok=True)
        (self.outside / "secret.txt").write_text("not yours\n")
        roots = [self.workdir / "cases", Path(os.environ["HF_DATASETS_CACHE"]), *library_roots()]
        self.guard = Guard(roots, [self.workdir / "cases", Path(os.environ["HF_DATASETS_CACHE"])])
        for sample in self.samples.values():  # warm every import and cache, so the oracle sees only the load
            self._load(sample, sample.path)
        self.count = 0

    def _load(self, sample: Sample, path: Path) -> Any:
        return sample.load(path)

    def run(self, sample_name: str, mutate: Callable[[Path, Path, Sample], str]) -> Outcome:
        sample = self.samples[sample_name]
        self.count += 1
        case = self.workdir / "cases" / f"{self.count:06d}"
        case.mkdir(parents=True)
        copy = case / sample.path.name
        (shutil.copytree if sample.path.is_dir() else shutil.copy)(sample.path, copy)
        try:
            mutation = mutate(copy, self.outside, sample)
        except (OSError, ValueError, KeyError, IndexError, TypeError, sqlite3.Error) as error:
            mutation = f"(mutation not applicable: {type(error).__name__})"
        before = tree_digest(case)
        outcome = observe(self.guard, sample_name, mutation, lambda: self._load(sample, copy), DEADLINE_S)
        if (case / "PLANTED_DIR").exists() or Path("PLANTED_DIR").exists():
            outcome.code_executions.append("a planted _target_ made its folder")
        outcome.changed = tree_digest(case) != before
        shutil.rmtree(case, ignore_errors=True)
        return outcome


# ---- hypothesis strategies --------------------------------------------------------------------------------


def mutations(fuzzer: Fuzzer) -> Any:
    """A hypothesis strategy of (sample name, mutate function) pairs covering every sample and field."""
    from hypothesis import strategies as st

    names = sorted(fuzzer.samples)
    plant = st.one_of(
        st.sampled_from((*PLANTS, "<DEEP>")), st.text(max_size=20), st.integers(), st.floats(allow_nan=False)
    )

    @st.composite
    def one(draw: Any) -> tuple[str, Callable[[Path, Path, Sample], str]]:
        name = draw(st.sampled_from(names))
        sample = fuzzer.samples[name]
        family = draw(st.sampled_from(["json", "json", "json", "bytes", "files"]))
        if family == "bytes" and sample.payload_files:
            relative = draw(st.sampled_from(sample.payload_files))
            how, offset, resign = draw(st.integers(0, 3)), draw(st.integers(0, 10**6)), draw(st.booleans())
            return name, lambda root, outside, s: mutate_bytes(root, relative, how, offset, resign)
        if family == "files" and sample.path.is_dir():
            how, pick = draw(st.integers(0, 8)), draw(st.integers(0, 100))
            return name, lambda root, outside, s: mutate_files(root, outside, s, how, pick)
        relative = draw(st.sampled_from(sample.json_files))
        index, new, resign = draw(st.integers(0, 10**6)), draw(plant), draw(st.booleans())
        return name, lambda root, outside, s: mutate_json(root, relative, index, new, resign)

    return one()


def planted_cases(fuzzer: Fuzzer) -> Iterator[tuple[str, Callable[[Path, Path, Sample], str]]]:
    """Every node of every JSON file of every artifact sample, replaced by every planted `_target_` and class path."""
    plants = [
        p
        for p in PLANTS
        if (isinstance(p, dict) and p) or p in ("builtins.print", "os.makedirs", "fuzz.oracle.Sentinel")
    ]
    for name, sample in sorted(fuzzer.samples.items()):
        if not sample.path.is_dir():
            continue
        for relative in sample.json_files:
            value = json.loads((sample.path / relative).read_text())
            for index in range(len(json_paths(value))):
                for new in plants:
                    yield (
                        name,
                        (lambda r, i, n: lambda root, outside, s: mutate_json(root, r, i, n, True))(
                            relative, index, new
                        ),
                    )
