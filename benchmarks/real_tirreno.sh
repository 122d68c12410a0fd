#!/usr/bin/env bash
# Set up (or tear down) a real tirreno on this machine for benchmarks/lanes.py --sensor-url.
# Not for CI. tirreno's code is never committed here: pass the git dir the `fetch` tool
# returned for tirrenotechnologies/tirreno (v0.10.0), or any tirreno checkout's .git.
#
#   benchmarks/real_tirreno.sh setup GIT_DIR   # Debian packages, role+db, schema, config, operator
#   benchmarks/real_tirreno.sh start           # php -S on 127.0.0.1:8585 (pid in $DEST/php.pid)
#   benchmarks/real_tirreno.sh key             # prints the API key (dshb_api.key)
#   benchmarks/real_tirreno.sh stop            # stops the php server this script started
#   benchmarks/real_tirreno.sh drop            # drops the database and the role
#
# PostgreSQL must be running on 127.0.0.1:5432 with a `postgres` superuser reachable by psql.
set -euo pipefail
DEST=${DEST:-/tmp/tirreno}
DB=${DB:-tirreno_bench}
ROLE=${ROLE:-tirreno_bench}
PASSWORD=${PASSWORD:-tirreno_bench_pw}
PORT=${PORT:-8585}
SU=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt)
AS_ROLE=(env PGPASSWORD="$PASSWORD" psql -h 127.0.0.1 -U "$ROLE" -d "$DB" -v ON_ERROR_STOP=1 -qAt)

setup() {
    local git_dir=$1
    rm -rf "$DEST" && mkdir -p "$DEST"
    git --git-dir="$git_dir" archive HEAD | tar -x -C "$DEST"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q php8.2-cli php8.2-pgsql php8.2-curl \
        php8.2-mbstring php8.2-xml php8.2-intl >/dev/null
    "${SU[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "DROP ROLE IF EXISTS $ROLE" \
        -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE $DB OWNER $ROLE"
    # Extensions need the superuser; install.sql itself runs as the owning role.
    "${SU[@]}" -d "$DB" -c "CREATE EXTENSION IF NOT EXISTS citext" \
        -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "CREATE EXTENSION IF NOT EXISTS pgcrypto"
    "${AS_ROLE[@]}" -f "$DEST/install/install.sql" >/dev/null
    cat >"$DEST/config/local/config.local.ini" <<INI

[globals]
SITE="http://127.0.0.1:$PORT"
DATABASE_URL="pgsql://$ROLE:$PASSWORD@127.0.0.1:5432/$DB"
PEPPER="$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)"
FORCE_HTTPS="false"
INI
    # What .htaccess does under Apache: the sensor, existing files as they are, the rest to index.php.
    cat >"$DEST/router.php" <<'PHP'
<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if (preg_match('#^/sensor/(index\.php)?$#', $path)) {
    chdir(__DIR__ . '/sensor');
    require __DIR__ . '/sensor/index.php';
    return true;
}
if ($path !== '/' && is_file(__DIR__ . $path)) {
    return false;
}
$_SERVER['SCRIPT_NAME'] = '/index.php';
require __DIR__ . '/index.php';
return true;
PHP
    # The signup form checks the email's MX record (no DNS here), so make the operator with
    # the model calls Signup::proceedPostRequest makes: index.php's bootstrap, then those calls.
    sed 's#^tirreno(.router.)->run();#require __DIR__ . "/operator_calls.php";#' \
        "$DEST/index.php" >"$DEST/create_operator.php"
    cat >"$DEST/operator_calls.php" <<'PHP'
<?php
tirreno('utils')->database->initConnect(false);
$operatorId = tirreno('models')->operator->insertRecord('bench-password-1', 'bench@example.com', 'UTC');
tirreno('utils')->operatorAccess->addOperatorRoleById(tirreno('utils')->constants->GUEST_ROLE_ID, $operatorId);
tirreno('utils')->operatorAccess->addOperatorRoleById(tirreno('utils')->constants->OPERATOR_ROLE_ID, $operatorId);
$skip = json_encode(array_keys(tirreno('utils')->constants->ENRICHING_ATTRIBUTES));
$apiKey = tirreno('models')->apiKeys->insertRecord($skip, true, $operatorId);
tirreno('controllers')->rules->applyRulesPresetById(
    tirreno('utils')->constants->BASE_RULE_PRESET_ID, tirreno('utils')->constants->PRIMARY_RULES_SET_ID, $apiKey);
echo "operator $operatorId api key id $apiKey\n";
PHP
    start
    # One GET /signup runs the migrations.
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/signup"
    (cd "$DEST" && php create_operator.php)
    echo "key: $(key)"
}

start() {
    cd "$DEST"
    PHP_CLI_SERVER_WORKERS=4 setsid php -S "127.0.0.1:$PORT" router.php >"$DEST/php.log" 2>&1 &
    echo $! >"$DEST/php.pid"
    for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/sensor/" -X POST 2>/dev/null && break
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
}

key() { "${AS_ROLE[@]}" -c "SELECT key FROM dshb_api ORDER BY id LIMIT 1"; }

stop() { [ -f "$DEST/php.pid" ] && kill -- "-$(cat "$DEST/php.pid")" 2>/dev/null; rm -f "$DEST/php.pid"; }

drop() { "${SU[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "DROP ROLE IF EXISTS $ROLE"; }

"$@"
