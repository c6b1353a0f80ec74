#!/usr/bin/env bash
# Serve the admin on the demo's databases and settings, styled, on 127.0.0.1.
# scripts/demo.sh writes those settings to .demo.env (never .env, so a production
# configuration is never read or touched here). Debug stays off, as in production: the
# admin's CSS and the report's Chart.js are collected into staticfiles/ and served by
# WhiteNoise, exactly as gunicorn would serve them.
#   ADMIN_PORT (default 8000), DEMO_ENV_FILE (default .demo.env)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
cd "$ROOT"

ENV_FILE="${DEMO_ENV_FILE:-$ROOT/.demo.env}"
if [ ! -f "$ENV_FILE" ]; then
    echo "$ENV_FILE not found: run 'bash scripts/demo.sh' first" >&2
    exit 1
fi
export TESTIZER_ENV_FILE="$ENV_FILE"
PORT="${ADMIN_PORT:-8000}"

"$PY" manage.py migrate --no-input -v0
"$PY" manage.py collectstatic --no-input --clear -v0
echo "==> admin on http://127.0.0.1:$PORT/admin/ (Ctrl-C to stop)" >&2
# --noreload: one process, so WhiteNoise's file list and the demo's session key stay put.
exec "$PY" manage.py runserver --noreload "127.0.0.1:$PORT"
