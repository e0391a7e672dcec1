#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment outside the checkout and runs the main job
# from another folder: proves the configs travel inside the package. The new environment borrows the
# dependencies of .venv (a path entry, so .venv's editable install of memos_lab is not seen) instead of
# downloading them again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV_PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/wheel" . >/dev/null 2>&1; rm -rf build
"$VENV_PY" -m venv "$work/env"
site=$("$work/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/borrowed-deps.pth"
"$work/env/bin/python" -m pip install --quiet --no-deps "$work"/wheel/memos_lab-*.whl
cd "$work"
"$work/env/bin/python" - <<'PY'
import memos_lab.settings as settings
assert "site-packages" in str(settings.CONF_DIR), f"configs found outside the installed wheel: {settings.CONF_DIR}"
PY
"$work/env/bin/memos-lab" --help >/dev/null
"$work/env/bin/memos-lab" run model=tiny_llama embedder=hashing logger=none hydra.run.dir="$work/run"
test -s "$work/run/metrics.json"
echo "wheel check: the installed wheel ran the main job from $work"
