"""One way to persist: every folder memos_lab writes and reads back is an *artifact*, written and read here.

An artifact is a folder with a `manifest.json`:

    {"format": "memos_lab.artifact", "version": 2, "kind": "cube" | "kv_cache" | "lora" | "stats" | ...,
     "created_at": ISO time, "fingerprint": the model's identity or null, "meta": the kind's own fields,
     "files": {"relative/path": {"bytes": n, "sha256": hex}}, "children": ["sub/folder", ...]}

`children` are sub-folders that are artifacts of their own (a cube's activation and parametric slots).

Writing (`write_artifact`) builds the folder beside its target and swaps it in atomically (crash-safe).
Reading (`read_artifact`) treats every byte as written by a stranger:
- the manifest is size-bounded, strict JSON (depth, duplicate keys, NaN, lone surrogates refused), type-checked;
- every path is relative and confined to the folder; no symbolic link and no special file is accepted;
- only the listed files (and children) may exist; each is read no further than its declared size and must
  match its sha256;
- a `_target_` may appear only where the kind declares one, and any class it or a class field names must be
  a registered component of its family (`memos_lab.registry`): loading never runs code chosen by data;
- the model fingerprint is compared by one rule (`check_fingerprint`).
Every refusal is one line (DataError / IncompatibleError) naming the file and the field.

Writers of one target serialise on `writer_lock(target)`, a `filelock` lock file `<target>.lock` beside it;
`remove_stale_staging(target)` deletes the staging folders an interrupted write left, only when no writer
holds that lock.

The package's modules follow those steps: `manifest` (the layout), `strict_json`, `files` (confined, bounded
access), `trust` (registered classes), `peft` (adapter folders), `reading`, `writing` and `lock` (writers' lock
and leftovers). Import from `memos_lab.artifact`; the modules are how it is organised, not its interface.
"""

from memos_lab.artifact.files import file_entry, open_sqlite_readonly, read_bounded, read_json_file
from memos_lab.artifact.lock import remove_stale_staging, staging_leftovers, writer_lock
from memos_lab.artifact.manifest import FORMAT, MANIFEST, VERSION, FileEntry, now_iso
from memos_lab.artifact.peft import PEFT_CONFIG, PEFT_INFORMATIONAL, PEFT_PREFIX, PEFT_WEIGHTS, write_peft_adapter
from memos_lab.artifact.reading import FINGERPRINT_IGNORED, Artifact, check_fingerprint, read_artifact
from memos_lab.artifact.strict_json import MAX_JSON_BYTES, MAX_JSON_DEPTH, check_json, check_plain, parse_json
from memos_lab.artifact.trust import (
    HYDRA_KEYS,
    class_path,
    require_trusted,
    trusted_class,
    trusted_settings,
)
from memos_lab.artifact.writing import (
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_text,
    write_artifact,
    write_manifest,
)

__all__ = [
    "FINGERPRINT_IGNORED",
    "FORMAT",
    "HYDRA_KEYS",
    "MANIFEST",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "PEFT_CONFIG",
    "PEFT_INFORMATIONAL",
    "PEFT_PREFIX",
    "PEFT_WEIGHTS",
    "VERSION",
    "Artifact",
    "FileEntry",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_text",
    "check_fingerprint",
    "check_json",
    "check_plain",
    "class_path",
    "file_entry",
    "now_iso",
    "open_sqlite_readonly",
    "parse_json",
    "read_artifact",
    "read_bounded",
    "read_json_file",
    "remove_stale_staging",
    "require_trusted",
    "staging_leftovers",
    "trusted_class",
    "trusted_settings",
    "write_artifact",
    "write_manifest",
    "write_peft_adapter",
    "writer_lock",
]
