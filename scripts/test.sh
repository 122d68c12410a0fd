#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine and run it:
# a virtualenv with the package and its dev extras, nginx, Apache and logrotate
# from Debian (the integration tests start their own instances on 127.0.0.1),
# Debian's python3.11 (the parser is checked under it too), php-cli (tirreno's rules),
# PostgreSQL and MariaDB running, php-sqlite3 and Node with the Express app's npm
# packages (the live framework tests), then ruff, mypy (strict) and pytest.
# Usage: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,frameworks]'

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
# The live framework tests (tests/integration/test_framework_*.py): PHP's built-in
# server (php-cli, below) with PDO SQLite, and Node for the Express app.
php -m 2>/dev/null | grep -qx pdo_sqlite || need+=(php-sqlite3)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# Debian 12's own python3.11 (3.11.2): tests/test_system_python.py parses under it.
[ -x /usr/bin/python3.11 ] || need+=(python3.11)
# PHP 8.2 (tirreno's own): tests/test_tirreno.py checks the acceptance rules against PHP.
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qi '^mbstring$' || need+=(php-mbstring)
# The man page is rendered with groff and the zsh completion script parsed with zsh
# (tests/test_cli_help.py).
command -v groff >/dev/null 2>&1 || need+=(groff-base)
command -v zsh >/dev/null 2>&1 || need+=(zsh)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # Debian starts the packaged services on install; the tests run their own on
        # 127.0.0.1. Only what this script just installed is stopped: a web server
        # that was already running (perhaps the site itself) is left alone.
        for svc in nginx apache2; do
            if [[ " ${need[*]} " == *" $svc "* ]]; then
                service "$svc" stop >/dev/null 2>&1 || true
            fi
        done
    else
        echo "missing: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

# The databases the resolver tests use; start them if they have stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    for _ in $(seq 1 30); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi

# The Express app's packages, exactly as package-lock.json pins them (npm ci is
# skipped when node_modules already matches the lock file).
express_app=tests/integration/apps/express
if ! cmp -s "$express_app/package-lock.json" "$express_app/node_modules/.package-lock.json.installed" 2>/dev/null; then
    (cd "$express_app" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$express_app/package-lock.json" "$express_app/node_modules/.package-lock.json.installed"
fi

.venv/bin/ruff check tirreno_shipper tests benchmarks
.venv/bin/ruff format --check tirreno_shipper tests benchmarks
.venv/bin/mypy
exec .venv/bin/pytest "$@"
