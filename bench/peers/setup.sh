#!/bin/sh
# The bench-only virtualenv of the peers (Celery, Dramatiq, huey, RQ): never part of herald's dependencies.
#   sh bench/peers/setup.sh            creates bench/.venv-peers (gitignored)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../.venv-peers"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
print("peers:", ", ".join(f"{p} {version(p)}" for p in ("celery", "dramatiq", "huey", "rq", "redis")))
PY
