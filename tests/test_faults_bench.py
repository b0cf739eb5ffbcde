"""The fault matrix, `almanac bench` rows (finding 1 of issue 12): the simulator in a thread or
its own process, no Snakemake.

Asserted for each: what the user sees (one line, never a traceback), that nothing measured is
lost (every argument is checked before the first request; each phase is kept as soon as it is
measured; an interrupt keeps it; a rerun measures only what is missing), and that nothing is
left running.
"""

import asyncio
import signal
import socket
import subprocess
import sys
import time

import polars as pl
import pytest

from llm_almanac.loadgen import LoadGenerator
from llm_almanac.sim import SimConfig

from conftest import SimThread, almanac, make_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    make_tokenizer().save(str(path))
    return path


@pytest.fixture
def server(tok):
    s = SimThread(SimConfig(tpot_ms=1, tokenizer=str(tok)))
    yield s
    s.close()


def bench(url, tok, out, *extra):
    return ["bench", "--base-url", url, "--model", "sim", "--tokenizer", tok, "--isl", "16", "--osl", "8",
            "--warmup-requests", "1", "--sequential-requests", "3", "--burst-requests", "6", "--sweep-rates", "1",
            "--sweep-duration", "0.5", "--out", out, *extra]


BAD = {
    # case: (extra args, what the user sees)
    "out-is-a-file": (["--out", "{file}"], "almanac bench: --out {file} is a file, not a folder"),
    "out-unwritable": (["--out", "{file}/sub"], "almanac bench: --out {file}/sub: cannot write there"),
    "isl-0": (["--isl", "0"], "almanac bench: --isl 0: must be at least 4"),
    "isl-negative": (["--isl", "-8"], "almanac bench: --isl -8: must be at least 4"),
    "osl-0": (["--osl", "0"], "almanac bench: --osl 0: must be at least 1"),
    "osl-negative": (["--osl", "-1"], "almanac bench: --osl -1: must be at least 1"),
    "sweep-duration-0": (["--sweep-duration", "0"], "almanac bench: --sweep-duration 0.0: must be greater than 0"),
    "max-concurrency-negative": (["--max-concurrency", "-1"], "almanac bench: --max-concurrency -1: must be at least 0"),
    "sequential-0": (["--sequential-requests", "0"], "almanac bench: --sequential-requests 0: must be at least 1"),
    "burst-negative": (["--burst-requests", "-2"], "almanac bench: --burst-requests -2: must be at least 1"),
    "sweep-rates-negative": (["--sweep-rates", "-1"], "almanac bench: --sweep-rates -1: must be at least 0"),
    "warmup-negative": (["--warmup-requests", "-1"], "almanac bench: --warmup-requests -1: must be at least 0"),
    "timeout-0": (["--request-timeout", "0"], "almanac bench: --request-timeout 0.0: must be greater than 0"),
    "cap-0": (["--max-response-bytes", "0"], "almanac bench: --max-response-bytes 0: must be at least 1"),
    "pacing-negative": (["--read-pacing-ms", "-1"], "almanac bench: --read-pacing-ms -1.0: must be at least 0"),
    "pacing-nan": (["--read-pacing-ms", "nan"], "almanac bench: --read-pacing-ms nan: must be a finite number"),
    "pacing-too-long": (["--read-pacing-ms", "500"], "almanac bench: --read-pacing-ms 500.0: must be at most 100"),
    "sweep-without-anchors": (["--phases", "burst,sweep"], "the sweep needs both anchors"),
    "unknown-phase": (["--phases", "sequentail"], "unknown phases ['sequentail']"),
    "bad-url": (["--base-url", "localhost:8000"], "almanac bench: --base-url localhost:8000: not an http(s) URL"),
    "https-on-fast": (["--base-url", "https://127.0.0.1:1"], "add --transport httpx for https"),
    "no-tokenizer": (["--tokenizer", "{nowhere}"], "almanac bench: --tokenizer {nowhere}: no tokenizer.json there"),
    "bad-tokenizer": (["--tokenizer", "{file}"], "almanac bench: --tokenizer {file}:"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_argument_is_one_line_before_the_first_request(server, tok, tmp_path, case):
    """Finding 1: --out (and every other argument) used to be checked after all phases ran."""
    extra, message = BAD[case]
    f = tmp_path / "a-file"
    f.write_text("not a tokenizer, not a folder")
    subst = {"file": f, "nowhere": tmp_path / "nowhere"}
    extra = [e.format(**subst) for e in extra]
    rc, _, err = almanac(*bench(server.url, tok, tmp_path / "out"), *extra)
    assert rc != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(message.format(**subst)) or message.format(**subst) in err, err
    assert server.srv.records == [] and server.srv.connections == 0  # nothing was sent
    assert f.read_text() == "not a tokenizer, not a folder"


def test_an_unreachable_server_is_one_line_and_nothing_is_lost(tok, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here
    rc, _, err = almanac(*bench(f"http://127.0.0.1:{port}", tok, tmp_path / "out"))
    assert rc == 1 and "Traceback" not in err
    assert f"stopped (failed: warm-up failed: HTTPError: cannot connect to 127.0.0.1:{port}" in err


def test_a_rerun_resumes_and_other_settings_are_refused_unless_force(server, tok, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = almanac(*bench(server.url, tok, out))
    assert rc == 0, err
    first = pl.read_parquet(out / "requests.parquet")
    sent = len(server.srv.records)
    assert sorted(p.stem for p in (out / "partial").glob("*.parquet")) == ["0-burst-0", "0-sequential-0", "0-sweep-0"]
    # the same command again: everything was kept, nothing is measured again
    rc, _, err = almanac(*bench(server.url, tok, out))
    assert rc == 0 and len(server.srv.records) == sent
    assert "kept from an earlier run: 0-burst-0, 0-sequential-0, 0-sweep-0" in err
    assert pl.read_parquet(out / "requests.parquet").equals(first)
    # other settings: refused (the measured phases stay), naming what differs
    rc, _, err = almanac(*bench(server.url, tok, out, "--burst-requests", "7"))
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"almanac bench: {out} holds phases measured with other settings (bench.burst_requests: 6 -> 7)" in err
    assert len(server.srv.records) == sent and pl.read_parquet(out / "requests.parquet").equals(first)
    # --force: measured again from scratch
    rc, _, err = almanac(*bench(server.url, tok, out, "--burst-requests", "7", "--force"))
    assert rc == 0, err
    again = pl.read_parquet(out / "requests.parquet")
    assert again.filter(pl.col("phase") == "burst").height == 7 and len(server.srv.records) > sent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_ctrl_c_and_sigterm_keep_what_was_measured_and_a_rerun_measures_only_the_rest(tok, tmp_path):
    """Finding 1: Ctrl-C gave a KeyboardInterrupt traceback and no output folder. Now: SIGINT
    after the burst keeps sequential and burst; SIGTERM during the sweep keeps its first step;
    the third run measures only the second step, and no request id (so prompt) repeats."""
    port, simlog = _free_port(), tmp_path / "sim.jsonl"
    sim = subprocess.Popen([sys.executable, "-m", "llm_almanac.sim", "--port", str(port), "--tpot-ms", "2",
                            "--tokenizer", str(tok), "--log", str(simlog)], stdout=subprocess.DEVNULL)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llm_almanac.cli", *map(str, bench(f"http://127.0.0.1:{port}", tok, out)[:-2]),
           "--sweep-rates", "2", "--sweep-duration", "2", "--out", str(out)]
    runs = []

    def start():
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append(p)
        return p

    try:
        _wait(lambda: _health(port), "the simulator")
        # run 1: SIGINT once the burst is over (its 6 requests reached the server)
        p = start()
        _wait(lambda: len(_lines(simlog)) >= 1 + 3 + 6 + 1, "the sweep to start")
        p.send_signal(signal.SIGINT)
        stdout, err = p.communicate(timeout=60)
        assert p.returncode == 130 and "Traceback" not in err, err
        assert ("almanac bench: stopped (received SIGINT); kept what was measured: 0-burst-0, 0-sequential-0, "
                f"in {out}") in err
        kept = pl.read_parquet(out / "requests.parquet")
        assert sorted(set(kept["phase"])) == ["burst", "sequential"] and kept.height == 3 + 6
        # run 2: resumes (no sequential, no burst sent), SIGTERM after the first sweep step is kept
        n1 = len(_lines(simlog))
        p = start()
        _wait(lambda: (out / "partial" / "0-sweep-0.parquet").exists(), "the first sweep step")
        p.send_signal(signal.SIGTERM)
        stdout, err = p.communicate(timeout=60)
        assert p.returncode == 143 and "Traceback" not in err, err
        assert "stopped (received SIGTERM); kept what was measured: 0-burst-0, 0-sequential-0, 0-sweep-0" in err
        step0 = pl.read_parquet(out / "partial" / "0-sweep-0.parquet")
        # run 3: only the second step is measured (one warm-up request, then step 1)
        n2 = len(_lines(simlog))
        p = start()
        stdout, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        final = pl.read_parquet(out / "requests.parquet")
        step1 = final.filter((pl.col("phase") == "sweep") & (pl.col("step") == 1))
        assert len(_lines(simlog)) - n2 == 1 + step1.height
        assert final.filter(pl.col("phase") == "sweep").height == step0.height + step1.height
        assert n2 - n1 >= 1 + step0.height  # run 2 sent no sequential or burst request
        assert final["request_id"].n_unique() == final.height  # prompts unique across the resumes
        phases = pl.read_parquet(out / "phases.parquet")
        assert phases.select("phase", "step").rows() == [("sequential", 0), ("burst", 0), ("sweep", 0), ("sweep", 1)]
        assert phases["fail_rate"].to_list() == [0.0] * 4
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sim.terminate()
        sim.wait(timeout=10)
    assert all(p.returncode is not None for p in runs)  # nothing left running


def _health(port):
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_a_response_over_the_cap_is_cut_and_failed_with_its_reason(tok, transport):
    """A response that never ends (one SSE line that never closes) used to grow memory without
    bound until the request timeout; it is cut at the cap, its bytes dropped, and recorded."""
    srv = SimThread(SimConfig(fault="endless", fault_after=1))
    try:
        gen = LoadGenerator(srv.url, "sim", isl=5, osl=4, make_prompt=lambda i: f"p{i} a b c d", transport=transport,
                            request_timeout_s=60, max_response_bytes=256 * 1024)
        t0 = time.monotonic()
        measured = asyncio.run(gen.sequential(3))
        took = time.monotonic() - t0
    finally:
        srv.close()
    rows = gen.rows(measured.reqs)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert rows[1]["error"] == rows[2]["error"] == "response too large: over max_response_bytes=262144; cut"
    assert all(r.raw == [] for r in measured.reqs[1:])  # nothing of it kept in memory
    assert took < 30  # cut at the cap, not held until the 60 s timeout


def test_bench_shows_the_failure_rate_beside_rps(tok, tmp_path):
    srv = SimThread(SimConfig(tpot_ms=1, tokenizer=str(tok), fault="http500", fault_after=3))
    try:
        rc, stdout, err = almanac(*bench(srv.url, tok, tmp_path / "out", "--phases", "sequential,burst",
                                         "--sweep-rates", "0"))
    finally:
        srv.close()
    assert rc == 0, err
    ph = pl.read_parquet(tmp_path / "out" / "phases.parquet")
    # warm-up 1 + 2 sequential ok, then every request fails
    assert ph.select("phase", "n_ok", "n_failed", "fail_rate").rows() == [
        ("sequential", 2, 1, pytest.approx(1 / 3)), ("burst", 0, 6, 1.0)]
    assert "rps (ok only)" in stdout and "failed %" in stdout and "33%" in stdout and "100%" in stdout


def test_read_pacing_reaches_the_client_and_is_recorded(server, tok, tmp_path, monkeypatch):
    """--read-pacing-ms goes to every fast client of the run, and into the settings a rerun is
    checked against (another pacing is another measurement)."""
    from llm_almanac import loadgen

    seen = []

    class Recording(loadgen.StreamingClient):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.pace_ms)

    monkeypatch.setattr(loadgen, "StreamingClient", Recording)
    out = tmp_path / "out"
    rc, _, err = almanac(*bench(server.url, tok, out, "--read-pacing-ms", "3"))
    assert rc == 0, err
    assert seen and set(seen) == {3.0}
    rc, _, err = almanac(*bench(server.url, tok, out, "--read-pacing-ms", "0"))
    assert rc != 0 and "read_pacing_ms" in err, err
