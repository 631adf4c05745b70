#!/usr/bin/env bash
# A team MLflow tracking server: PostgreSQL as the backend store (runs, metrics,
# registry), proxied artifact storage (clients upload and download through the
# server, so they need no shared filesystem). Everything lives under one folder.
#
#   scripts/tracking-server.sh start     # creates the cluster and database when missing
#   scripts/tracking-server.sh stop
#   scripts/tracking-server.sh status
#   scripts/tracking-server.sh purge     # stop, then delete the database and the artifacts
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then `dvc repro` as usual
#   set -a; . .tracking-server/auth/admin.env; set +a   # the credentials (see below)
#
# Authentication: MLflow's basic-auth app (`--app-name basic-auth`) is on. The first
# start generates the admin's password and the server's secret key, kept in
# $TRACKING_SERVER_DIR/auth/ (mode 700; files 600): admin.env holds
# MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, which MLflow's client (and so
# every stage) reads from the environment. Any other local user, and anyone on the
# network, gets HTTP 401. Add teammates with MLflow's users API
# (mlflow.server.get_app_client("basic-auth", ...).create_user). MLFLOW_SERVER_AUTH=off
# starts without it, on a loopback address only.
#
# Settings (environment):
#   TRACKING_SERVER_DIR   where the PostgreSQL cluster, artifacts and logs live
#                         (default: .tracking-server in the project)
#   MLFLOW_SERVER_HOST    address to listen on (default 127.0.0.1; 0.0.0.0 or another
#                         non-loopback address only with authentication on)
#   MLFLOW_SERVER_AUTH    on (default) | off (loopback host only)
#   MLFLOW_SERVER_PORT    (default 5000)
#   MLFLOW_SERVER_WORKERS uvicorn workers (default 2)
#   PG_PORT               PostgreSQL's port, loopback only (default 5433)
#   PG_OPTIONS            extra server settings, e.g. "-c shared_buffers=256MB"
#   MLFLOW_SERVER_ALLOWED_HOSTS  host names teammates use in the URL (MLflow's own
#                         setting: it accepts only localhost and private addresses
#                         otherwise), e.g. "mlflow.team:5000"
#
# The database user's password is generated at the first start and kept in
# $TRACKING_SERVER_DIR/pgpass (mode 600, libpq's format): PostgreSQL asks for it
# on TCP (scram-sha-256), and only the cluster's owner gets in over its socket.
#   PG_BIN                PostgreSQL's programs (default: Debian's /usr/lib/postgresql/<v>/bin)
#
# PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres`
# user (Debian's package creates it) and is run through runuser; as anyone else, the
# cluster is that user's. In production, swap in a managed PostgreSQL (pass its URL
# as MLFLOW_BACKEND_STORE_URI) and an object store for artifacts
# (MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/path or gs://...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# A relative TRACKING_SERVER_DIR is the caller's, resolved before moving to the project.
dir=$(realpath -m "${TRACKING_SERVER_DIR:-$root/.tracking-server}")
cd "$root"
host=${MLFLOW_SERVER_HOST:-127.0.0.1}
port=${MLFLOW_SERVER_PORT:-5000}
workers=${MLFLOW_SERVER_WORKERS:-2}
pg_port=${PG_PORT:-5433}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$dir/artifacts}
auth=${MLFLOW_SERVER_AUTH:-on}
auth_dir=$dir/auth
pidfile=$dir/mlflow-server.pid
log=$dir/mlflow-server.log
pgpass=$dir/pgpass

# The cluster's folder must be reachable by its owner. As root that is the postgres
# user, who cannot enter a folder under /root or a private temp dir: then the
# cluster goes to postgres's home, in a folder named after this one.
pg_home=$dir
if [ "$(id -u)" = 0 ]; then
  probe=$dir
  while [ ! -e "$probe" ]; do probe=$(dirname "$probe"); done
  if ! runuser -u postgres -- test -x "$probe" 2>/dev/null; then
    pg_home=/var/lib/postgresql/tracking-server-$(printf %s "$dir" | sha1sum | cut -c1-12)
  fi
fi
pgdata=$pg_home/pgdata
socket_dir=$pg_home/socket
pglog=$pg_home/postgresql.log
mlflow=${MLFLOW_BIN:-$root/.venv/bin/mlflow}
python=$(dirname "$mlflow")/python

die() {
  echo "error: $*" >&2
  exit 2
}

pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    echo "$PG_BIN"
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] || die "PostgreSQL is not installed (Debian: apt-get install postgresql; or set PG_BIN)"
  echo "$found"
}

# Run a PostgreSQL program as the cluster's owner.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

backend_uri() {
  if [ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
    echo "$MLFLOW_BACKEND_STORE_URI"
  else
    # psycopg 3 over TCP on loopback; the password comes from PGPASSFILE, so it is in
    # no command line (ps) and no log.
    echo "postgresql+psycopg://$(pg_user)@127.0.0.1:$pg_port/mlflow"
  fi
}

pg_user() {
  if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

# The pid in the pidfile, if it is alive and still an mlflow server (not a reused pid).
server_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mlflow server" &&
    echo "$pid"
}

port_in_use() {
  "$python" - "$1" "$2" <<'PY'
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
PY
}

healthy() {
  "$python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=2).read()
PY
}

start_postgres() {
  local bin
  bin=$(pg_bin)
  mkdir -p "$dir" "$socket_dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (Debian's postgresql package creates it)"
    chown postgres "$socket_dir"
    touch "$pglog" && chown postgres "$pglog"
  fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    echo "==> creating a PostgreSQL cluster in $pgdata"
    mkdir -p "$pgdata"
    [ "$(id -u)" = 0 ] && chown postgres "$pgdata"
    local password pwfile
    password=$("$python" -c 'import secrets; print(secrets.token_urlsafe(24))')
    (umask 077 && echo "*:*:*:$(pg_user):$password" >"$pgpass")
    pwfile=$(mktemp)
    echo "$password" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    as_pg "$bin/initdb" -D "$pgdata" -U "$(pg_user)" --pwfile="$pwfile" --auth-local=peer \
      --auth-host=scram-sha-256 --encoding=UTF8 --no-instructions >/dev/null
    rm -f "$pwfile"
  fi
  [ -f "$pgpass" ] || die "$pgpass is missing: the cluster's password is lost; run '$0 purge' and start again"
  if ! as_pg "$bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    echo "==> starting PostgreSQL on 127.0.0.1:$pg_port"
    as_pg "$bin/pg_ctl" -D "$pgdata" -l "$pglog" -w -t 60 \
      -o "-p $pg_port -k $socket_dir -c listen_addresses=127.0.0.1 ${PG_OPTIONS:-}" start >/dev/null ||
      die "PostgreSQL did not start; see $pglog"
  fi
  if ! as_pg "$bin/psql" -h "$socket_dir" -p "$pg_port" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1; then
    echo "==> creating database mlflow"
    as_pg "$bin/createdb" -h "$socket_dir" -p "$pg_port" mlflow
  fi
}

stop_postgres() {
  local bin
  bin=$(pg_bin)
  if [ -f "$pgdata/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
    echo "PostgreSQL stopped"
  fi
}

is_loopback() {
  case "$1" in
    127.* | localhost | ::1) return 0 ;;
    *) return 1 ;;
  esac
}

# The basic-auth app's settings, the admin's credentials and the server's secret key,
# generated once; everything readable by this user only.
prepare_auth() {
  "$python" -c "import flask_wtf" 2>/dev/null ||
    die "MLflow's basic-auth app needs Flask-WTF: $python -m pip install 'Flask-WTF==1.3.0'"
  (umask 077 && mkdir -p "$auth_dir")
  chmod 700 "$auth_dir"
  if [ ! -f "$auth_dir/admin.env" ]; then
    local password
    password=$("$python" -c 'import secrets; print(secrets.token_urlsafe(24))')
    (umask 077 && printf 'MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=%s\n' \
      "$password" >"$auth_dir/admin.env")
  fi
  [ -f "$auth_dir/secret_key" ] ||
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_hex(32))' >"$auth_dir/secret_key")
  (umask 077 && cat >"$auth_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$auth_dir/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  )
  chmod 600 "$auth_dir"/*
}

start() {
  [ -x "$mlflow" ] || die "$mlflow not found: run scripts/bootstrap.sh first (or set MLFLOW_BIN)"
  case "$auth" in
    on) ;;
    off) is_loopback "$host" ||
      die "MLFLOW_SERVER_HOST=$host with MLFLOW_SERVER_AUTH=off would let anyone on the network read and change runs and move the champion alias; keep auth on, or listen on 127.0.0.1" ;;
    *) die "MLFLOW_SERVER_AUTH=$auth: use on or off" ;;
  esac
  "$python" -c "import psycopg" 2>/dev/null ||
    die "the PostgreSQL driver is missing: $python -m pip install 'psycopg[binary]==3.3.9'"
  local url="http://$host:$port"
  [ "$host" = 0.0.0.0 ] && url="http://127.0.0.1:$port"
  if pid=$(server_pid); then
    echo "already running (pid $pid): export MLFLOW_TRACKING_URI=$url"
    return 0
  fi
  if port_in_use 127.0.0.1 "$port"; then
    die "port $port is already in use (another mlflow server or 'mlflow ui'?); stop it or set MLFLOW_SERVER_PORT"
  fi
  [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ] && start_postgres
  local app=()
  if [ "$auth" = on ]; then
    prepare_auth
    app=(--app-name basic-auth)
  fi
  # A local folder; an object store (s3://, gs://) needs none.
  [[ $artifacts == *://* ]] || mkdir -p "$artifacts"
  echo "==> starting mlflow server on $host:$port"
  # setsid: the server outlives this script and the shell that ran it.
  # The admin's password reaches the auth app through the environment (read once, when
  # it creates the admin on an empty user store), never a command line or the ini file.
  local admin_password="" secret_key=""
  if [ "$auth" = on ]; then
    admin_password=$(sed -n 's/^MLFLOW_TRACKING_PASSWORD=//p' "$auth_dir/admin.env")
    secret_key=$(cat "$auth_dir/secret_key")
  fi
  PGPASSFILE=$pgpass MLFLOW_AUTH_CONFIG_PATH=$auth_dir/basic_auth.ini \
    MLFLOW_AUTH_ADMIN_PASSWORD=$admin_password MLFLOW_FLASK_SERVER_SECRET_KEY=$secret_key \
    setsid "$mlflow" server "${app[@]}" \
    --backend-store-uri "$(backend_uri)" \
    --artifacts-destination "$artifacts" \
    --serve-artifacts \
    --host "$host" --port "$port" --workers "$workers" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$(cat "$pidfile")" 2>/dev/null || die "mlflow server exited; see $log"
    if healthy "$url"; then
      echo "running: export MLFLOW_TRACKING_URI=$url"
      [ "$auth" = on ] &&
        echo "  credentials: set -a; . $auth_dir/admin.env; set +a   (basic auth is on)"
      echo "  backend $(backend_uri), artifacts $artifacts, log $log"
      return 0
    fi
    sleep 0.5
  done
  die "mlflow server did not answer $url/health within 120 s; see $log"
}

stop() {
  if pid=$(server_pid); then
    # The server's process group (setsid made it its own): uvicorn's workers go with it.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "mlflow server stopped"
  fi
  rm -f "$pidfile"
  [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ] && stop_postgres
  return 0
}

purge() {
  stop
  if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
    [ "$pg_home" != "$dir" ] && rm -rf "$pg_home"
    echo "removed the PostgreSQL cluster $pgdata"
  fi
  [[ $artifacts == *://* ]] || [[ $artifacts == "$dir"/* ]] || echo "kept the artifacts in $artifacts"
  rm -rf "$dir"
  echo "removed $dir"
}

# Exit 0 when the server runs, 3 when it does not (as an init script's status).
status() {
  local code=3
  if pid=$(server_pid); then
    echo "mlflow server: running (pid $pid) on $host:$port"
    code=0
  else
    echo "mlflow server: stopped"
  fi
  if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ] && [ -f "$pgdata/PG_VERSION" ]; then
    if as_pg "$(pg_bin)/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
      echo "PostgreSQL: running on 127.0.0.1:$pg_port"
    else
      echo "PostgreSQL: stopped"
    fi
  fi
  return "$code"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  purge) purge ;;
  *)
    echo "usage: $0 start|stop|status|purge   (settings: see the comments at the top of this script)" >&2
    exit 2
    ;;
esac
