"""Server lifecycle: health wait, startup failures with the log tail, nothing left running."""

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from llm_almanac.cell import server_environment
from llm_almanac.server import Server, ServerStartupError, free_port, stop_stale

# A "server" that forks a grandchild (as vLLM forks its engine core) and serves /health.
FAKE = textwrap.dedent("""
    import http.server, os, sys, time
    port = int(sys.argv[1]); delay = float(sys.argv[2])
    if os.fork() == 0:
        time.sleep(3600)
    time.sleep(delay)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def _server(tmp_path, delay=0.2, code=FAKE):
    port = free_port()
    cmd = [sys.executable, "-c", code, str(port), str(delay)]
    return Server(cmd, dict(os.environ), tmp_path / "server.log", f"http://127.0.0.1:{port}",
                  "/health", pid_file=tmp_path / "server.pid")


def test_ready_then_whole_tree_stopped(tmp_path):
    srv = _server(tmp_path)
    with srv:
        assert srv.wait_ready(20) > 0.1
        root = psutil.Process(srv.proc.pid)
        tree = [root, *root.children(recursive=True)]
        assert len(tree) == 2
        assert os.getpgid(root.pid) == root.pid != os.getpgid(0)  # own process group
        assert json.loads((tmp_path / "server.pid").read_text())["pid"] == root.pid
    time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not (tmp_path / "server.pid").exists()


def test_crash_at_startup_reports_log_tail(tmp_path):
    code = "import sys; print('error: unrecognized arguments: --no-such-flag'); sys.exit(2)"
    srv = _server(tmp_path, code=code)
    with srv, pytest.raises(ServerStartupError, match="(?s)exited with code 2.*--no-such-flag"):
        srv.wait_ready(20)


def test_startup_timeout(tmp_path):
    srv = _server(tmp_path, delay=30)
    with srv, pytest.raises(ServerStartupError, match="not healthy .* after 1 s"):
        srv.wait_ready(1)


def test_stale_server_from_killed_run_is_stopped(tmp_path):
    # A run killed with -9 leaves its server and pid file behind; the next start stops it.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    (tmp_path / "server.pid").write_text(json.dumps(
        {"pid": orphan.pid, "create_time": psutil.Process(orphan.pid).create_time()}))
    assert stop_stale(tmp_path / "server.pid")
    orphan.wait(10)
    assert not psutil.pid_exists(orphan.pid)
    assert not (tmp_path / "server.pid").exists()


def test_stale_pid_reused_by_other_process_is_left_alone(tmp_path):
    (tmp_path / "server.pid").write_text(json.dumps({"pid": os.getpid(), "create_time": 1.0}))
    assert not stop_stale(tmp_path / "server.pid")


def test_server_environment_drops_snakemake_thread_caps_but_keeps_user_env():
    base = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PATH": "/bin", "HF_HOME": "/h",
            "PYTHONDONTWRITEBYTECODE": "1"}  # the engine's venv keeps its bytecode cache
    env = server_environment(base, {"VLLM_CPU_KVCACHE_SPACE": "1"}, {"OMP_NUM_THREADS": "4"})
    assert env == {"PATH": "/bin", "HF_HOME": "/h", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "4"}


def test_port_taken_before_bind_is_retried_on_another_port(tmp_path, monkeypatch):
    """Two cells can be handed the same free port; the loser's server fails to bind and is
    restarted on another port instead of failing the cell."""
    import socket

    from llm_almanac import cell as cellmod
    from llm_almanac.engines.base import Engine, ServerSpec

    class Fake(Engine):
        name = "fake"

        def server_command(self, spec):
            return [sys.executable, "-c", FAKE, str(spec.port), "0"]

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1], free_port()])
    monkeypatch.setattr(cellmod, "free_port", lambda: next(ports))
    info = {}
    spec = ServerSpec(python=sys.executable, model_path="m", served_name="m", quantization="bf16", port=0)
    try:
        with cellmod.started_server(Fake(), spec, dict(os.environ), tmp_path / "server.log", tmp_path, 20,
                                    info) as (server, url):
            assert url.endswith(str(server.cmd[-2])) and str(taken.getsockname()[1]) not in url
            assert "Address already in use" in (tmp_path / "server.log").read_text()
            assert info["startup_s"] > 0
            proc = server.proc
        assert proc.poll() is not None  # stopped when the block ends
    finally:
        taken.close()
