# lsn_bench_lib.sh: sourced by bench_listener.sh and commit_counts.sh (issue
# 21): impetus-sink and an engine with one ESMTP_Listener Listen relaying
# to it, in the caller's temporary directory.
lsn_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# lsn_start TMP BUILD ENGINE [GLOBAL_CONF_LINES]: sets SINK_PORT, LSN_PORT,
# SINK_PID (its summary on SIGUSR1 into TMP/sink.json) and ENG_PID (the
# environment's ENGINE_ENV, e.g. MALLOC_CONF=..., is the engine's).
lsn_start() {
  local tmp=$1 b=$2 eng=$3 extra=${4:-}
  SINK_PORT=$(lsn_free_port) LSN_PORT=$(lsn_free_port)
  "$b/tools/sink/impetus-sink" --listen 127.0.0.1:"$SINK_PORT" --ready-file "$tmp/sink.ready" \
    >"$tmp/sink.json" 2>/dev/null &
  SINK_PID=$!
  for _ in $(seq 500); do [ -s "$tmp/sink.ready" ] && break; sleep 0.02; done
  mkdir -p "$tmp/spool"
  cat >"$tmp/impetus.conf" <<CF
Spoolbase = "$tmp/spool"
User = "root"
Group = "root"
TLS = "no"
Gateway = "127.0.0.1:$SINK_PORT"
$extra
ec_logger { mainlog = "$tmp/mainlog" paniclog = "$tmp/paniclog" }
ESMTP_Listener {
  Listen "127.0.0.1:$LSN_PORT" { }
  Relay_Hosts = ( "127.0.0.1/32" )
  Max_Errors_Per_Connection = 0
  Listen_Backlog = 4096
}
CF
  env ${ENGINE_ENV:-} "$eng" -c "$tmp/impetus.conf" >"$tmp/engine.err" 2>&1 &
  ENG_PID=$!
}

# Wait (10 s at most) until port $1 accepts connections.
lsn_wait_port() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

# Messages the engine has delivered (mainlog D records in TMP $1).
lsn_delivered() { local n; n=$(grep -c '@D@' "$1/mainlog" 2>/dev/null) || true; echo "${n:-0}"; }
