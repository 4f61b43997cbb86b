#!/usr/bin/env bash
# Install curate from a source tree into one Python environment. This is the whole install
# step of both images (Dockerfile.cpu, Dockerfile.cuda); it is a plain script so that it can be
# run and tested without docker (tests/test_docker.py).
#
#   docker/install.sh [--dry-run] [SRC]    SRC: the source tree (default: this script's repo)
#
# Environment, all optional:
#   PYTHON              interpreter to install into (default: python3)
#   TORCH_INDEX_URL     install torch and torchvision from this index first, at the versions
#                       pyproject.toml pins (the CPU image uses the CPU-only wheels: the PyPI
#                       torch is the CUDA build, ~4 GB of libraries a CPU node never loads)
#   NIMA_URL            download NIMA's AVA checkpoint into $CURATE_IQA_WEIGHTS
#   CURATE_IQA_WEIGHTS  the folder curate searches for weights (curation/metrics/loader.py)
# --dry-run prints the commands instead of running them.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
SRC="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
# Absolute, because the checks below run from another folder.
PYTHON="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
# No pip cache: in an image it would only add a layer's worth of wheels.
PIP=("$PYTHON" -m pip install --no-cache-dir --disable-pip-version-check)

run() {
    echo "+ $*"
    if [[ $dry_run == 0 ]]; then "$@"; fi
}

# The versions come from pyproject.toml, never from a second list here.
pins="$("$PYTHON" - "$SRC/pyproject.toml" <<'EOF'
import re, sys

if sys.version_info < (3, 11):  # before tomllib (3.11+) fails with a less clear message
    sys.exit(f"curate needs Python >= 3.11 (pyproject.toml), not {sys.version.split()[0]}")
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = {re.split(r"[ \[<>=!~;]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
print(deps["torch"], deps["torchvision"])
EOF
)"

if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    # shellcheck disable=SC2086  # two requirement strings, split on purpose
    run "${PIP[@]}" --index-url "$TORCH_INDEX_URL" $pins
fi
# Not editable: the image keeps the installed package (with its vendored NIQE/BRISQUE weights
# as package data), not the source tree. An installed torch of the pinned version, CPU build
# included (2.14.1+cpu satisfies ==2.14.1), is left as it is. The s3 extra: cluster nodes read
# and write runs on object stores (README, "Runs on object stores").
run "${PIP[@]}" "${SRC}[s3]"

# pyiqa's dependency facexlib pulls in opencv-python, the GUI build: it overwrites the headless
# cv2 that pyproject.toml asks for, and needs libGL, which server images often lack. Put headless
# back, at the version pip chose for it.
headless="$("$PYTHON" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version

try:
    version("opencv-python")
    print(version("opencv-python-headless"))
except PackageNotFoundError:
    pass
EOF
)"
if [[ -n "$headless" ]]; then
    run "$PYTHON" -m pip uninstall --yes --disable-pip-version-check opencv-python
    run "${PIP[@]}" --no-deps --force-reinstall "opencv-python-headless==$headless"
fi

# From here on, outside the source tree: what imports is the installed package.
cd /
if [[ -n "${NIMA_URL:-}" ]]; then
    : "${CURATE_IQA_WEIGHTS:?NIMA_URL needs CURATE_IQA_WEIGHTS, the folder to put it in}"
    # The file name is the one pyiqa uses (from the registry); like torch.hub, the sha256 of
    # the file must start with the hash in that name, so a wrong or truncated file fails here.
    run "$PYTHON" - "$NIMA_URL" "$CURATE_IQA_WEIGHTS" <<'EOF'
import hashlib, pathlib, re, sys, urllib.request

from curation.metrics.registry import get_spec

url, folder = sys.argv[1], pathlib.Path(sys.argv[2])
name = get_spec("nima").weights_file
folder.mkdir(parents=True, exist_ok=True)
tmp = folder / (name + ".part")
urllib.request.urlretrieve(url, tmp)
digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
expected = re.search(r"-([0-9a-f]{8,})\.", name).group(1)
if not digest.startswith(expected):
    tmp.unlink()
    sys.exit(f"{url}: sha256 {digest} does not start with {expected} (from {name})")
tmp.rename(folder / name)
print(f"NIMA checkpoint: {folder / name}")
EOF
fi

# Prove the install: cv2 imports, the vendored weights are in the installed package, the CLI
# entry point runs.
run "$PYTHON" - "$SRC" <<'EOF'
import sys
from pathlib import Path

import cv2  # fails without libGL if a GUI build of OpenCV took over cv2

from curation.metrics.loader import VENDORED_WEIGHTS_DIR
from curation.metrics.registry import get_spec

if Path(sys.argv[1]) in VENDORED_WEIGHTS_DIR.parents:
    sys.exit(f"curation imports from the source tree {sys.argv[1]}, not the installed package")
for metric in ("niqe", "brisque"):
    path = VENDORED_WEIGHTS_DIR / get_spec(metric).weights_file
    if not path.is_file():
        sys.exit(f"{metric}: {path} missing from the installed package")
    print(f"{metric} weights: {path}")
print(f"cv2 {cv2.__version__}")
EOF
run "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/curate" --help
