#!/usr/bin/env python3
"""Launch the seed (bwhelan212/securechat455 @ 7073345, SecureChat/server/server.py)
unmodified, from OUTSIDE the repo copy:

  * cwd = $SEED_DIR/seedrun  (the seed uses cwd-relative users.json,
    flask_session/, cert.pem, key.pem) -> the repo copy is never written to.
  * server.MESSAGE_RATE_LIMIT = 0  (monkeypatched module global; handle_message
    reads it at call time, `elapsed < 0` is never true => limit disabled).
  * async_mode is eventlet (auto-selected by Flask-SocketIO because eventlet is
    installed; the seed does not call eventlet.monkey_patch(), neither do we).
  * TLS: the seed calls socketio.run(..., ssl_context=('cert.pem','key.pem')).
    Under eventlet Flask-SocketIO 5.5.1 passes `ssl_context` through to
    eventlet.wsgi.server() which raises TypeError (see logs/seed_as_written.log),
    so we pass the same cert/key as certfile/keyfile (eventlet.wrap_ssl) instead.
  * use_reloader=False: app.debug=True would otherwise start werkzeug's stat
    reloader (a 2nd polling process). Everything else (debug, log_output, the
    per-message print()) is left as the seed has it.
"""
import os
import sys

BASE = os.environ.get("SEED_DIR", "/work/seedbench")
RUN_DIR = os.environ.get("SEED_RUN_DIR", os.path.join(BASE, "seedrun"))
SRC_DIR = os.environ.get("SEED_SRC_DIR", os.path.join(BASE, "seed", "SecureChat", "server"))
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
host = os.environ.get("SEED_HOST", "127.0.0.1")

os.chdir(RUN_DIR)
sys.path.insert(0, SRC_DIR)
import server  # noqa: E402  (the seed's module; runs its module-level setup)

server.MESSAGE_RATE_LIMIT = 0
print(f"seed_launch: async_mode={server.socketio.async_mode} "
      f"MESSAGE_RATE_LIMIT={server.MESSAGE_RATE_LIMIT} port={port} pid={os.getpid()}",
      flush=True)
server.socketio.run(server.app, host=host, port=port,
                    certfile=os.path.join(RUN_DIR, "cert.pem"),
                    keyfile=os.path.join(RUN_DIR, "key.pem"),
                    use_reloader=False)
