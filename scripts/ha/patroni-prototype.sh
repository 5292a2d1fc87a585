#!/usr/bin/env bash
# NOT run by the tests or CI (yet): the working prototype the Patroni tests of
# issue 22 ("Replicas and failover") are to be built from. Needs Debian's
# `patroni` (3.0.2) and `etcd-server` (3.4), which scripts/setup does not
# install yet. Measured here (2 CPUs): bootstrap to a sync standby 8-13 s,
# switchover 3 s (old primary back as sync standby 8-9 s), failover after
# kill -9 of the primary's postmaster 2-3 s (back as sync standby 7-9 s),
# whole-node crash 10 s (ttl). Pitfalls met and solved are in the comments
# and in the session note of 2026-12-07.
# Prototype: 2-node Patroni (3.0.2) + single-node etcd (3.4, v3 API) on loopback,
# PostgreSQL 15 from /usr/lib/postgresql/15/bin. Run as root; servers run as `postgres`.
#   apt-get install -y patroni etcd-server      (Debian 12; see report for service pitfalls)
# Scenarios: bootstrap -> switchover -> failover (SIGKILL primary's postmaster)
#            -> [optional, NODE_CRASH=1] whole-node crash (SIGKILL patroni+postmaster) -> cleanup.
# Env: BASE (work dir), KEEP=1 (keep dirs/processes for inspection), NODE_CRASH=0 to skip scenario (c).
set -euo pipefail

BASE=${BASE:-/tmp/patroni-proto/run}
PGBIN=/usr/lib/postgresql/15/bin
PGUSER_OS=postgres
SCOPE=pgtx-test
NODE_CRASH=${NODE_CRASH:-1}
LOGDIR=${LOGDIR:-$BASE.logs}
TTL=${TTL:-10} LOOP_WAIT=${LOOP_WAIT:-1} RETRY_TIMEOUT=${RETRY_TIMEOUT:-3}   # keep ttl >= loop_wait + 2*retry_timeout

T0=$(date +%s.%N)
ts()   { date +%s.%N; }
el()   { awk -v a="$1" -v b="$(ts)" 'BEGIN{printf "%.2f", b-a}'; }   # seconds since $1
log()  { echo "[$(el "$T0")s] $*"; }
die()  { log "FATAL: $*"; dump_logs; exit 1; }

# ---------------------------------------------------------------- ports
read -r ETCD_CLIENT ETCD_PEER PG1 PG2 API1 API2 < <(python3 - <<'EOF'
import socket
ss=[socket.socket() for _ in range(6)]
for s in ss: s.bind(('127.0.0.1',0))
print(*[s.getsockname()[1] for s in ss])
EOF
)
PGPORT=([1]=$PG1 [2]=$PG2)
APIPORT=([1]=$API1 [2]=$API2)

declare -A PID
# wait until pid is gone (or a zombie), at most $2 seconds
gone() {
  local i
  for ((i = 0; i < ${2:-10} * 20; i++)); do
    [[ -e /proc/$1 ]] || return 0
    [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]] && return 0
    sleep 0.05
  done
}
cleanup() {
  local rc=$? tcl; tcl=$(ts)
  if [[ "${KEEP:-0}" == 1 ]]; then log "KEEP=1: leaving $BASE and processes running"; return; fi
  log "cleanup"
  # fast: SIGKILL patroni, then SIGQUIT (= immediate shutdown) each postmaster; <0.5 s.
  # graceful (CLEANUP=graceful): SIGTERM patroni, which stops PG itself, but takes 4-6 s per node.
  local sig=KILL; [[ "${CLEANUP:-fast}" == graceful ]] && sig=TERM
  for n in 1 2; do [[ -n "${PID[p$n]:-}" ]] && kill -$sig "${PID[p$n]}" 2>/dev/null || true; done
  for n in 1 2; do [[ -n "${PID[p$n]:-}" ]] && gone "${PID[p$n]}" 30; done
  for n in 1 2; do                         # postmaster still there (fast mode, or patroni was SIGKILLed)?
    local pidf=$BASE/node$n/data/postmaster.pid pm
    if [[ -f $pidf ]]; then
      pm=$(head -1 "$pidf")
      kill -QUIT "$pm" 2>/dev/null && gone "$pm" 10
    fi
  done
  [[ -n "${PID[etcd]:-}" ]] && { kill -TERM "${PID[etcd]}" 2>/dev/null || true; gone "${PID[etcd]}" 10; }
  mkdir -p "$LOGDIR"; cp "$BASE"/etcd.log "$LOGDIR"/ 2>/dev/null || true
  for n in 1 2; do cp "$BASE/node$n/patroni.log" "$LOGDIR/node$n-patroni.log" 2>/dev/null || true; done
  rm -rf "$BASE"
  log "logs kept in $LOGDIR; cleanup took $(el "$tcl")s (rc=$rc)"
}
trap cleanup EXIT

dump_logs() {
  for f in "$BASE"/etcd.log "$BASE"/node1/patroni.log "$BASE"/node2/patroni.log; do
    [[ -f $f ]] && { echo "----- tail $f"; tail -n 25 "$f"; }
  done
}

# wait_for DESCRIPTION TIMEOUT_S COMMAND...   (polls every 0.2 s)
wait_for() {
  local desc=$1 to=$2; shift 2
  local start; start=$(ts)
  until "$@" >/dev/null 2>&1; do
    if awk -v a="$start" -v b="$(ts)" -v t="$to" 'BEGIN{exit !(b-a>t)}'; then die "timeout ($to s) waiting for: $desc"; fi
    sleep 0.2
  done
}

api()      { curl -s --max-time 2 "http://127.0.0.1:${APIPORT[$1]}$2"; }
api_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${APIPORT[$1]}$2"; }
is_primary() { [[ $(api_code "$1" /primary) == 200 ]]; }     # 200 only on the leader with running PG
is_replica() { [[ $(api_code "$1" /replica) == 200 ]]; }     # 200 on a running replica
is_sync()    { [[ $(api_code "$1" /sync) == 200 ]]; }        # 200 on the replica named in the DCS /sync key
# leader $1 sees node $2 streaming from it (pg_stat_replication via GET /patroni); $3=sync: also sync_state=sync
streams_to() {
  api "$1" /patroni | jq -e --arg n "node$2" --arg s "${3:-}" \
    '.replication[]? | select(.application_name==$n and .state=="streaming" and ($s=="" or .sync_state==$s))' >/dev/null
}
streaming_pair() { is_primary "$1" && is_replica "$2" && streams_to "$1" "$2"; }
# fully healthy: + the DCS /sync key names $2 (GET /sync 200), i.e. `patronictl list` shows "Sync Standby"
healthy_pair() { is_primary "$1" && is_replica "$2" && is_sync "$2" && streams_to "$1" "$2" sync; }
other() { echo $((3 - $1)); }
current_leader() {
  for n in 1 2; do is_primary "$n" && { echo "$n"; return 0; }; done; return 1
}
# write through a multi-host libpq URL with target_session_attrs=read-write
rw_write() {
  runuser -u "$PGUSER_OS" -- "$PGBIN/psql" -XAtq \
    "postgresql://postgres@127.0.0.1:$PG1,127.0.0.1:$PG2/postgres?target_session_attrs=read-write&connect_timeout=2" \
    -c "CREATE TABLE IF NOT EXISTS t(i int); INSERT INTO t VALUES (1); SELECT inet_server_port();"
}

# ---------------------------------------------------------------- dirs
rm -rf "$BASE"; mkdir -p "$BASE"/etcd "$BASE"/node1 "$BASE"/node2
chmod 755 "$BASE"
chown -R "$PGUSER_OS:$PGUSER_OS" "$BASE"/node1 "$BASE"/node2
log "ports: etcd=$ETCD_CLIENT(peer $ETCD_PEER) pg=$PG1,$PG2 rest=$API1,$API2 base=$BASE"

# ---------------------------------------------------------------- etcd (v3 API, no --enable-v2 needed with etcd3:)
etcd --name etcd0 --data-dir "$BASE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "etcd0=http://127.0.0.1:$ETCD_PEER" --initial-cluster-state new \
  --heartbeat-interval 50 --election-timeout 250 \
  >"$BASE/etcd.log" 2>&1 &
PID[etcd]=$!
wait_for "etcd health" 20 sh -c "curl -sf http://127.0.0.1:$ETCD_CLIENT/health | grep -q '\"health\":\"true\"'"
log "etcd up (pid ${PID[etcd]})"

# ---------------------------------------------------------------- patroni configs
for n in 1 2; do
  d=$BASE/node$n
  cat >"$d/patroni.yml" <<EOF
scope: $SCOPE
name: node$n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${APIPORT[$n]}
  connect_address: 127.0.0.1:${APIPORT[$n]}
etcd3:
  hosts: 127.0.0.1:$ETCD_CLIENT
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    primary_start_timeout: 0        # crashed primary => immediate failover instead of local restart
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true           # Patroni forces wal_log_hints=on itself
      use_slots: true
      parameters:
        max_connections: 50
        shared_buffers: 16MB
        wal_keep_size: 64MB
        fsync: 'off'                # test cluster only
        full_page_writes: 'on'
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums
    - auth: trust
postgresql:
  listen: 127.0.0.1:${PGPORT[$n]}
  connect_address: 127.0.0.1:${PGPORT[$n]}
  data_dir: $d/data
  bin_dir: $PGBIN
  pgpass: $d/pgpass
  parameters:
    unix_socket_directories: '$d'
  pg_hba:
    - local all all trust
    - local replication all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
    rewind:
      username: postgres
      password: postgres
watchdog:
  mode: off
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
  chown "$PGUSER_OS:$PGUSER_OS" "$d/patroni.yml"
done

start_patroni() {  # setpriv execs directly, so $! is patroni's own pid
  local n=$1 d=$BASE/node$1
  HOME=$d PYTHONWARNINGS=ignore setpriv --reuid="$PGUSER_OS" --regid="$PGUSER_OS" --init-groups -- \
    /usr/bin/patroni "$d/patroni.yml" >>"$d/patroni.log" 2>&1 &
  PID[p$n]=$!
  disown "${PID[p$n]}"    # no "Killed" job notices from bash
}

# ---------------------------------------------------------------- (0) bootstrap
tb=$(ts)
start_patroni 1
wait_for "node1 leader" 60 is_primary 1          # start node1 first so node1 deterministically bootstraps
t_leader=$(el "$tb")
start_patroni 2
wait_for "node2 streaming" 90 streaming_pair 1 2
t_str=$(el "$tb")
wait_for "node2 sync standby" 90 healthy_pair 1 2
T_BOOT=$(el "$tb")
log "BOOTSTRAP: node1 primary after ${t_leader}s, node2 streaming ${t_str}s, sync standby ${T_BOOT}s"
PATRONICTL=(env PYTHONWARNINGS=ignore patronictl -c "$BASE/node1/patroni.yml")
"${PATRONICTL[@]}" list
log "rw write went to port $(rw_write)"

# ---------------------------------------------------------------- (a) switchover
L=$(current_leader); R=$(other "$L")
ta=$(ts)
out=$("${PATRONICTL[@]}" switchover --leader "node$L" --candidate "node$R" --force "$SCOPE" 2>&1) || true
echo "$out"
grep -q "Successfully switched over" <<<"$out" || die "switchover failed (patronictl exits 0 even on failure!)"
t_promoted=$(el "$ta")       # patronictl returns once the candidate holds the leader lock
wait_for "node$R primary" 60 is_primary "$R"
t_new_primary=$(el "$ta")
wait_for "node$L streaming" 90 streaming_pair "$R" "$L"
t_str=$(el "$ta")
wait_for "node$L rejoined as streaming sync replica" 90 healthy_pair "$R" "$L"
T_SW=$(el "$ta")
log "SWITCHOVER node$L->node$R: patronictl returned ${t_promoted}s, new primary ${t_new_primary}s, old primary streaming ${t_str}s, sync standby ${T_SW}s"
log "rw write went to port $(rw_write) (expected ${PGPORT[$R]})"
"${PATRONICTL[@]}" list

# ---------------------------------------------------------------- (b) failover: SIGKILL postmaster of primary
L=$(current_leader); R=$(other "$L")
pm=$(head -1 "$BASE/node$L/data/postmaster.pid")
tf=$(ts)
kill -KILL "$pm"
log "SIGKILLed postmaster $pm of primary node$L"
wait_for "node$R primary" 90 is_primary "$R"
T_FO=$(el "$tf")
wait_for "node$L streaming" 120 streaming_pair "$R" "$L"
t_str=$(el "$tf")
wait_for "node$L rejoined as streaming sync replica" 120 healthy_pair "$R" "$L"
T_FO_REJOIN=$(el "$tf")
log "FAILOVER(kill -9 postmaster) node$L->node$R: new primary ${T_FO}s, old primary streaming ${t_str}s, sync standby ${T_FO_REJOIN}s"
log "rw write went to port $(rw_write) (expected ${PGPORT[$R]})"
"${PATRONICTL[@]}" list
grep -hE "pg_rewind|rewind|Failing over|crash" "$BASE/node$L/patroni.log" | tail -n 5 || true

# ---------------------------------------------------------------- (c) node crash: SIGKILL patroni + postmaster of primary
if [[ "$NODE_CRASH" == 1 ]]; then
  L=$(current_leader); R=$(other "$L")
  pm=$(head -1 "$BASE/node$L/data/postmaster.pid")
  tc=$(ts)
  kill -KILL "${PID[p$L]}" "$pm"; PID[p$L]=""
  log "SIGKILLed patroni and postmaster of primary node$L (leader key must expire: ttl)"
  wait_for "node$R primary" 90 is_primary "$R"
  T_NC=$(el "$tc")
  tr=$(ts)
  start_patroni "$L"
  wait_for "node$L streaming" 120 streaming_pair "$R" "$L"
  t_str=$(el "$tr")
  wait_for "node$L rejoined as streaming sync replica" 120 healthy_pair "$R" "$L"
  T_NC_REJOIN=$(el "$tr")
  log "NODE CRASH node$L->node$R: new primary after ${T_NC}s; after restarting its patroni, node$L streaming ${t_str}s, sync standby ${T_NC_REJOIN}s (pg_rewind)"
  log "rw write went to port $(rw_write) (expected ${PGPORT[$R]})"
  "${PATRONICTL[@]}" list
fi

log "SUMMARY boot=${T_BOOT}s switchover=${t_new_primary}s(rejoin ${T_SW}s) failover=${T_FO}s(rejoin ${T_FO_REJOIN}s)${T_NC:+ nodecrash=${T_NC}s(rejoin ${T_NC_REJOIN}s)} total=$(el "$T0")s"
