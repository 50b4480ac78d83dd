#!/usr/bin/env bash
# Starts the seed (prepared by setup.sh) on a free local port (or $PORT), in the background.
# Prints: PID=<pid> PORT=<port> URL=https://127.0.0.1:<port> CA=<cert>; stop it with kill <pid>.
set -euo pipefail
B=${SEED_DIR:-/work/seedbench}
PY=$B/venv/bin/python
PORT=${PORT:-$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}
LOG=$B/logs/seed_$PORT.log
SEED_DIR=$B nohup $PY -u "$(dirname "$0")/seed_launch.py" "$PORT" >"$LOG" 2>&1 </dev/null &
PID=$!
for _ in $(seq 100); do   # wait up to 10 s for the listener
  kill -0 "$PID" 2>/dev/null || { echo "seed died, see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
  $PY -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$PORT" 2>/dev/null && break
  sleep 0.1
done
echo "PID=$PID PORT=$PORT URL=https://127.0.0.1:$PORT CA=$B/seedrun/cert.pem LOG=$LOG"
