#!/usr/bin/env bash
# Creates the Python environment the celery handler's tests run a real Celery worker from: a venv with the
# pinned packages of requirements.txt (Celery, kombu, redis-py, channels, channels_redis at the validator's
# versions), from PyPI. Nothing else is downloaded.
#
# Usage: bash tests/celery/setup-venv.sh [VENV_DIR]     (default: tests/celery/.venv)
# Then the tests find tests/celery/.venv/bin/python, or the python named by FACILITATOR_CELERY_PYTHON.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup-venv: $python has no venv/ensurepip module (Debian: apt-get install -y python3-venv)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import celery, kombu, channels_redis, django; print("setup-venv: celery", celery.__version__, "kombu", kombu.__version__, "in", __import__("sys").prefix)'
