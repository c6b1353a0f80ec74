#!/usr/bin/env bash
# The whole test suite, on SQLite and on MariaDB, every time. Installs what it needs
# (system packages, MariaDB server if absent, Debian's Chromium for the browser tests, the
# virtualenv) and starts MariaDB when it is not running. Extra arguments go to pytest.
# Ends with one line "total: N passed, N failed, N skipped" over both databases.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

system_packages_for_python
apt_install chromium mariadb-server mariadb-client
venv_install "$ROOT/requirements-dev.txt"

mariadb_ping() { mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -u"$1" ${2:+-p"$2"} ping >/dev/null 2>&1; }

start_mariadb() {
    mariadb-admin ping >/dev/null 2>&1 && return 0
    mariadb_ping root "" && return 0
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    if command -v start-stop-daemon >/dev/null; then
        as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    else
        as_root service mariadb start
    fi
    for _ in $(seq 60); do
        mariadb-admin ping >/dev/null 2>&1 && return 0
        mariadb_ping root "" && return 0
        sleep 1
    done
    log "MariaDB did not start"; return 1
}
start_mariadb

# This workplace's MariaDB lets root in over TCP with no password; a stock Debian one
# authenticates root by socket only, so make a test user through the socket there.
if [ -n "${TEST_MARIADB_URL:-}" ]; then
    MARIADB_URL="$TEST_MARIADB_URL"
elif mariadb_ping root ""; then
    MARIADB_URL="mysql://root@127.0.0.1:3306"
else
    as_root mariadb -e "CREATE USER IF NOT EXISTS 'testizer'@'127.0.0.1' IDENTIFIED BY 'testizer';
        GRANT ALL PRIVILEGES ON *.* TO 'testizer'@'127.0.0.1'; FLUSH PRIVILEGES;"
    MARIADB_URL="mysql://testizer:testizer@127.0.0.1:3306"
fi

export TESTIZER_ENV_FILE=/dev/null
mkdir -p test-artifacts
status=0

log "tests on SQLite"
env DATABASE_URL="sqlite:///$ROOT/db.sqlite3" MODX_DATABASE_URL="sqlite:///$ROOT/demo_modx.sqlite3" \
    "$PY" -m pytest --create-db --junitxml=test-artifacts/junit-sqlite.xml "$@" || status=1

log "tests on MariaDB"
# TEST_DB_NAME lets two checkouts on one server test at the same time (pytest-django adds
# the "test_" prefix; the benchmark's scratch tables are named after it too).
DB_NAME="${TEST_DB_NAME:-testizer}"
env DATABASE_URL="$MARIADB_URL/$DB_NAME" MODX_DATABASE_URL="$MARIADB_URL/${DB_NAME}_modx" \
    "$PY" -m pytest --create-db --junitxml=test-artifacts/junit-mariadb.xml "$@" || status=1

"$PY" - <<'PY'
import xml.etree.ElementTree as ET
totals = {"passed": 0, "failed": 0, "skipped": 0}
for name in ("sqlite", "mariadb"):
    try:
        suite = ET.parse(f"test-artifacts/junit-{name}.xml").getroot().find("testsuite")
    except (FileNotFoundError, ET.ParseError):
        print(f"{name}: no results (pytest did not finish)")
        totals["failed"] += 1
        continue
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = tests - failures - errors - skipped
    print(f"{name}: {passed} passed, {failures + errors} failed, {skipped} skipped")
    totals["passed"] += passed
    totals["failed"] += failures + errors
    totals["skipped"] += skipped
print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
PY
exit $status
