# Sourced by scripts/demo.sh and scripts/test.sh: installs what the project needs on a
# Debian machine that has only python3, then a virtualenv in .venv. Safe to run again:
# each step checks before it installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    # Only the packages that are missing, so a prepared machine does not touch apt.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || { log "apt-get not found; install: ${missing[*]}"; return 1; }
    log "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

system_packages_for_python() {
    # mysqlclient compiles against the MariaDB client library.
    local pkgs=(libmariadb-dev pkg-config gcc)
    # A Debian python3 needs its venv and headers packages; a pyenv/python.org build has them.
    if python3 -c 'import sys; sys.exit(0 if sys.prefix.startswith("/usr") else 1)'; then
        pkgs+=(python3-venv python3-dev)
    fi
    apt_install "${pkgs[@]}"
}

venv_install() {
    # $1: the requirements file. Reinstalls only when it (or what it includes) changed.
    local req="$1" stamp="$VENV/.installed-$(basename "$1")"
    local digest
    digest="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$PY" ]; then
        log "creating virtualenv in .venv"
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        log "installing Python dependencies from $(basename "$req")"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -r "$req"
        echo "$digest" > "$stamp"
    fi
}
