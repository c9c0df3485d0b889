# Shared by scripts/*: paths, messages, and throwaway services on random
# loopback ports. Source it; it defines functions and sets no traps.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Persistent caches (moto's virtualenv); CI points this outside the clone.
CACHE_DIR=${DRCTL_CACHE_DIR:-$ROOT/.cache}
MOTO_VERSION=5.2.5
# Tools setup fetches where the distribution has none (kubectl). Always on
# PATH: scripts source this before setup may create the directory.
PATH=$PATH:$CACHE_DIR/bin
export PATH

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for SECONDS DESCRIPTION LOGFILE PID COMMAND...: polls COMMAND until it
# succeeds; fails at once when process PID has exited, or after SECONDS.
wait_for() {
  local secs=$1 what=$2 log=$3 pid=$4; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "error: $what exited during start-up; its log ($log):"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "error: $what did not start within ${secs}s; its log ($log):"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# "pid:signal" of each service. Background jobs of a non-interactive shell
# ignore SIGINT and SIGQUIT, so moto and etcd are stopped with SIGTERM;
# postgres installs its own handlers and takes SIGQUIT as an immediate stop.
SERVICE_PIDS=()
SERVICE_DIR=

# start_services DIR: starts PostgreSQL, etcd and moto under DIR on random
# loopback ports, concurrently, and exports:
#   DRCTL_TEST_PG_URL          admin URL of the PostgreSQL server (superuser)
#   DRCTL_TEST_ETCD_ENDPOINTS  http://127.0.0.1:PORT
#   DRCTL_TEST_S3_ENDPOINT     http://127.0.0.1:PORT (moto, Object Lock enforced)
start_services() {
  SERVICE_DIR=$1
  mkdir -p "$SERVICE_DIR"
  # The PostgreSQL cluster belongs to user postgres, who must reach it.
  chmod 755 "$SERVICE_DIR"
  local bindir pg_port etcd_port peer_port
  bindir=$(pg_bindir) || die "PostgreSQL server binaries not found; run ./scripts/setup (Debian package postgresql)"
  command -v etcd >/dev/null || die "etcd not found; run ./scripts/setup (Debian package etcd-server)"
  [ -x "$CACHE_DIR/venv/bin/moto_server" ] || die "moto_server not found in $CACHE_DIR/venv; run ./scripts/setup"

  # PostgreSQL: initdb refuses root, so the cluster belongs to user postgres.
  pg_port=$(free_port)
  mkdir -p "$SERVICE_DIR/pg"
  local runas=()
  if [ "$(id -u)" = 0 ]; then
    # setpriv execs (runuser forks), so the pid we keep is postgres itself.
    chown postgres: "$SERVICE_DIR/pg"
    runas=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  (
    "${runas[@]}" "$bindir/initdb" -D "$SERVICE_DIR/pg/data" -U postgres -A trust -E UTF8 \
      --locale=C.UTF-8 --no-sync >"$SERVICE_DIR/pg/pg.log" 2>&1 &&
    exec "${runas[@]}" "$bindir/postgres" -D "$SERVICE_DIR/pg/data" -h 127.0.0.1 -p "$pg_port" \
      -k "$SERVICE_DIR/pg" -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
      -c max_connections=300 >>"$SERVICE_DIR/pg/pg.log" 2>&1
  ) &
  SERVICE_PIDS+=("$!:QUIT")

  # etcd: 3.4 cannot pick its own ports, so pick two free ones.
  etcd_port=$(free_port); peer_port=$(free_port)
  mkdir -p "$SERVICE_DIR/etcd"
  etcd --name drctl-test --data-dir "$SERVICE_DIR/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "drctl-test=http://127.0.0.1:$peer_port" --initial-cluster-state new \
    --initial-cluster-token drctl-test --logger zap --log-level warn --log-outputs stderr \
    >"$SERVICE_DIR/etcd/etcd.log" 2>&1 &
  SERVICE_PIDS+=("$!:TERM")

  # moto picks its own port (-p 0) and prints it.
  mkdir -p "$SERVICE_DIR/moto"
  "$CACHE_DIR/venv/bin/moto_server" -H 127.0.0.1 -p 0 >"$SERVICE_DIR/moto/moto.log" 2>&1 &
  SERVICE_PIDS+=("$!:TERM")

  export DRCTL_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  export DRCTL_TEST_ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port"
  wait_for 60 PostgreSQL "$SERVICE_DIR/pg/pg.log" "${SERVICE_PIDS[0]%%:*}" \
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
  wait_for 30 etcd "$SERVICE_DIR/etcd/etcd.log" "${SERVICE_PIDS[1]%%:*}" \
    env ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" endpoint health
  wait_for 30 moto "$SERVICE_DIR/moto/moto.log" "${SERVICE_PIDS[2]%%:*}" \
    grep -q 'Running on http://127.0.0.1:[0-9]*' "$SERVICE_DIR/moto/moto.log"
  DRCTL_TEST_S3_ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$SERVICE_DIR/moto/moto.log" | head -n 1)
  export DRCTL_TEST_S3_ENDPOINT
}

stop_services() {
  local entry
  for entry in "${SERVICE_PIDS[@]}"; do
    kill "-${entry#*:}" "${entry%%:*}" 2>/dev/null || true
  done
  for entry in "${SERVICE_PIDS[@]}"; do
    wait "${entry%%:*}" 2>/dev/null || true
  done
  SERVICE_PIDS=()
}
