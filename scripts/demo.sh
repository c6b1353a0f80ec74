#!/usr/bin/env bash
# One command from a fresh clone to a working demo: system packages, virtualenv,
# migrations, synthetic MODX data, then the funnel job run LIVE against the project's
# fake Brevo on loopback, a conversion report, and how to open the admin.
# Uses SQLite files in the project folder (db.sqlite3, demo_modx.sqlite3); a .env is
# ignored here so that a production configuration can never be touched by the demo.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

system_packages_for_python
venv_install "$ROOT/requirements.txt"

export TESTIZER_ENV_FILE=/dev/null
export DATABASE_URL="sqlite:///$ROOT/db.sqlite3"
export MODX_DATABASE_URL="sqlite:///$ROOT/demo_modx.sqlite3"
export BREVO_API_KEY="demo-key-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
export BREVO_LANGUAGE_LIST_ID=1 BREVO_NON_LANGUAGE_LIST_ID=2
# The demo's results span 60 days and its first run looks back that far: let the funnels
# take results that old (production's default maximum age is the 30-day look-back).
export FUNNELS_MAX_AGE_DAYS=60
PORT="${DEMO_BREVO_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
export BREVO_BASE_URL="http://127.0.0.1:$PORT/v3"

log "migrating our database"
"$PY" manage.py migrate --no-input -v0
log "creating demo MODX data"
"$PY" manage.py demo_seed --seed "${DEMO_SEED:-42}" --size "${DEMO_SIZE:-2000}"

log "starting the fake Brevo on 127.0.0.1:$PORT"
"$PY" -m fake_brevo.server --port "$PORT" --api-key "$BREVO_API_KEY" > logs/fake_brevo.log 2>&1 &
FAKE_PID=$!
trap 'kill $FAKE_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    grep -q listening logs/fake_brevo.log 2>/dev/null && break
    sleep 0.1
done

log "dry run first, as an operator would (nothing is written, nothing is sent)"
"$PY" manage.py run_funnels --dry-run --since "$(date -u -d '-60 days' +%F)"
log "live run against the fake Brevo"
"$PY" manage.py run_funnels --live --since "$(date -u -d '-60 days' +%F)"
log "a second live run finds nothing new"
"$PY" manage.py run_funnels --live
log "health"
"$PY" manage.py funnels_health || true
log "conversion report, last 60 days, by funnel"
"$PY" manage.py report_conversions --from-date "$(date -u -d '-60 days' +%F)" --to-date "$(date -u +%F)"

# What scripts/admin.sh serves the admin with: the same databases and Brevo settings
# (the fake Brevo stops with this script; the admin only needs to know Brevo is set up).
umask 077
cat > "$ROOT/.demo.env" <<ENV
APP_ENV=development
DEBUG=false
SECRET_KEY=demo-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
DATABASE_URL=$DATABASE_URL
MODX_DATABASE_URL=$MODX_DATABASE_URL
BREVO_API_KEY=$BREVO_API_KEY
BREVO_BASE_URL=$BREVO_BASE_URL
BREVO_LANGUAGE_LIST_ID=$BREVO_LANGUAGE_LIST_ID
BREVO_NON_LANGUAGE_LIST_ID=$BREVO_NON_LANGUAGE_LIST_ID
ENV
umask 022

PASSWORD="${DEMO_ADMIN_PASSWORD:-demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}"
DJANGO_SUPERUSER_PASSWORD="$PASSWORD" "$PY" manage.py createsuperuser --no-input \
    --username demo --email demo@example.com >/dev/null 2>&1 \
    || "$PY" manage.py shell -c "from django.contrib.auth import get_user_model as g; u=g().objects.get(username='demo'); u.set_password('$PASSWORD'); u.save()"

cat <<MSG

Demo ready. Open the admin:
  bash $ROOT/scripts/admin.sh
  then http://127.0.0.1:8000/admin/  user: demo  password: $PASSWORD
Logs: $ROOT/logs/app.log
MSG
