#!/usr/bin/env bash
# Prepares the seed (bwhelan212/securechat455, Flask-SocketIO on eventlet) OUTSIDE this
# repository, for the side-by-side benchmark in docs/benchmarks.md. None of the seed's code
# is part of SecureChat; this only checks it out and makes its runtime folder.
#
#   Benchmarks/seed/setup.sh GIT_DIR [SEED_DIR]
#
# GIT_DIR: a bare clone of the seed (the session tool `fetch github:bwhelan212/securechat455`
# gives one, e.g. /work/.mirror/bwhelan212+securechat455/repo); SEED_DIR (default /work/seedbench): where the checkout, a venv and seedrun/ go.
set -euo pipefail
git_dir=$1
dir=${2:-/work/seedbench}
commit=70733451288d2298f19c5daf9e53390f4da47fa9   # 2025-02-14, the newest of February 2025
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/seed" "$dir/seedrun/flask_session" "$dir/logs"
git --git-dir="$git_dir" --work-tree="$dir/seed" checkout "$commit" -- .
[[ -x "$dir/venv/bin/python" ]] || python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install -q -r "$here/requirements.lock"
# The seed compares plain-text passwords from users.json: its two accounts plus bench0..99.
python3 - "$dir" <<'PY'
import json, sys, os
d = sys.argv[1]
path = os.path.join(d, "seed", "SecureChat", "users.json")
users = json.load(open(path)) if os.path.exists(path) else {}
users.update({"bench%d" % i: "benchpw" for i in range(100)})
json.dump(users, open(os.path.join(d, "seedrun", "users.json"), "w"), indent=1)
PY
[[ -f "$dir/seedrun/cert.pem" ]] || openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/seedrun/key.pem" -out "$dir/seedrun/cert.pem" 2>/dev/null
cp "$here/harness.py" "$here/seed_launch.py" "$dir/"
echo "seed ready in $dir"
