"""Every command answers --help (and -h) with its usage, exit status 0, and starts nothing."""
import os
import subprocess
import tempfile

import pytest

from conftest import BIN

COMMANDS = [
    ["securechat"], ["securechat", "run"], ["securechat", "users"],
    ["securechat-gateway"], ["securechat-worker"], ["securechat-coordinator"], ["securechat-bench"],
]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help_prints_usage_and_starts_nothing(command, flag):
    state = tempfile.mkdtemp(prefix="sc-help-")
    out = subprocess.run([os.path.join(BIN, command[0])] + command[1:] + [flag, "--state-dir", state],
                         capture_output=True, text=True, timeout=30, cwd=state)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: " + command[0]), out.stdout[:200]
    # Nothing ran: no socket, no Redis data, no certificate, no log line.
    assert os.listdir(state) == []
    assert out.stderr == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_unknown_flags_are_refused_by_name(command):
    if command == ["securechat"]:
        command = ["securechat", "run"]
    state = tempfile.mkdtemp(prefix="sc-flag-")
    args = [os.path.join(BIN, command[0])] + command[1:] + (["list"] if command[1:] == ["users"] else []) \
        + ["--state-dir", state, "--wrokers", "3"]
    if command[0] == "securechat-bench":
        args.insert(1, "fanout")
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=state)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "unknown flag --wrokers" in out.stdout + out.stderr
    assert not os.path.exists(os.path.join(state, "redis.sock")) and not os.path.exists(os.path.join(state, "tls"))


@pytest.mark.parametrize("script", ["multihost", "sri"])
def test_scripts_answer_help_and_refuse_unknown_arguments(script):
    from conftest import ROOT
    path = os.path.join(ROOT, "scripts", script)
    for flag in ("--help", "-h"):
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert ("scripts/" + script) in out.stdout
    out = subprocess.run([path, "--wrokers"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown argument --wrokers" in out.stderr, (out.stdout, out.stderr)
