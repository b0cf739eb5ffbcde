#!/usr/bin/env python3
"""A real one-node SLURM cluster on loopback, with every file of it in one folder.

Debian's SLURM 22.05 (slurmctld, slurmd, the client commands) and MUNGE, run as root by the
test suite (tests/test_slurm_cluster.py) and by hand:

    python tests/slurm_cluster.py install              # apt-get install slurm-wlm munge (root)
    python tests/slurm_cluster.py run -- COMMAND ...   # start a cluster, run COMMAND in it, stop it

`run` starts munged, slurmctld and slurmd in a fresh folder (config, munge key and socket, state,
spool, pid and log files; nothing goes to /etc, /var or /run), bound to 127.0.0.1 on free ports,
with one partition `cpu` holding node `localhost` with this machine's CPUs and memory. COMMAND
gets SLURM_CONF pointing at the cluster. Every daemon it started, and every job process they
started, is stopped on the way out: normal exit, error, Ctrl-C or SIGTERM.

No accounting (slurmdbd): the SLURM plugin of Snakemake reads job states with squeue
(profiles/slurm sets `slurm-status-command: squeue`), and squeue keeps a finished job visible
for MinJobAge (an hour here), far longer than the plugin's status checks are apart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")  # slurm-wlm: slurmctld, slurmd and slurm-client
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol", "sinfo", "scancel", "munged")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]


def install() -> None:
    """Install Debian's SLURM and MUNGE packages where missing (as root). Their services are
    not started: a test cluster runs its own daemons, and a stray system munged or slurmd
    is exactly what this module promises not to leave behind."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"SLURM is not installed ({', '.join(missing_binaries())} missing): "
                           f"sudo apt-get install {' '.join(PACKAGES)}")
    ours = not POLICY_RC.exists()
    if ours:  # invoke-rc.d asks this script whether to start a service; 101 = no
        POLICY_RC.write_text("#!/bin/sh\n# written by llm-almanac tests/slurm_cluster.py during apt-get install\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if ours:
            POLICY_RC.unlink(missing_ok=True)
    if missing_binaries():
        raise RuntimeError(f"still missing after apt-get install: {', '.join(missing_binaries())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, int]:
    """This machine as slurmd sees it (`slurmd -C`): CPUs, topology and memory in MB."""
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {k: int(fields[k]) for k in keys if k in fields}


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


class SlurmCluster:
    """munged + slurmctld + slurmd in `root`; use as a context manager (stops on every exit)."""

    def __init__(self, root: Path, partition: str = "cpu") -> None:
        self.root = Path(root).resolve()
        self.partition = partition
        self.conf = self.root / "etc" / "slurm.conf"
        self.bin = self.root / "bin"
        self.procs: dict[str, subprocess.Popen] = {}
        self.hardware: dict[str, int] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands that talk to this cluster. snakemake-executor-plugin-slurm's
        job step removes SLURM_* variables (SLURM_CONF too) before it calls `srun` inside the
        job; a real cluster keeps its config in /etc/slurm and never notices, ours is in a temp
        folder, so `srun` on PATH is a two-line wrapper that sets SLURM_CONF again."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        for d in ("etc", "munge", "state", "spool", "run", "log", "bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = self.root / "munge" / "munge.socket"
        self._spawn("munged", [_sbin("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.socket}", f"--pid-file={self.root / 'run' / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self._wait(lambda: self.socket.exists(), timeout, "munged did not create its socket")
        self.hardware = node_hardware()
        self.conf.write_text(self.slurm_conf())
        (self.root / "etc" / "plugstack.conf").write_text("")
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nexport SLURM_CONF={self.conf}\nexec {shutil.which('srun')} \"$@\"\n")
        srun.chmod(0o755)
        env = self.env
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-f", str(self.conf)], env)
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld did not answer")
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)], env)
        self._wait(lambda: self._ok(["sinfo", "-h", "-N", "-o", "%T"], "idle"), timeout,
                   "node localhost did not become idle")

    def slurm_conf(self) -> str:
        hw = self.hardware
        topo = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                 "ThreadsPerCore") if k in hw)
        mem = int(hw.get("RealMemory", 1024) * 0.95)
        r = self.root
        return f"""# one-node test cluster, written by tests/slurm_cluster.py
ClusterName=almanac-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
PlugStackConfig={r / 'etc' / 'plugstack.conf'}
# a container: no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=10
InactiveLimit=0
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 {topo} RealMemory={mem} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as log:
            # its own session: stopping it (killpg) reaches it and its children, nothing else
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)

    def _ok(self, cmd: list[str], expect: str) -> bool:
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=30)
        return p.returncode == 0 and expect in p.stdout

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} (exited: {dead or 'none'})\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, lines: int = 30) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel the jobs, stop slurmd, slurmctld and munged (TERM, then KILL), then any job
        process of this cluster still alive (slurmstepd and what it ran, found by the
        SLURM_CONF of this cluster in their environment)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--partition", self.partition], env=self.env,
                           capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None:
                _stop_group(p)
        for pid in self.stray_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def alive(self) -> list[int]:
        """Pids of this cluster's daemons and job processes that are still running."""
        return [p.pid for p in self.procs.values() if p.poll() is None] + self.stray_pids()

    def job_pids(self, job_id: str) -> list[int]:
        """Pids of the processes SLURM runs for one job (by SLURM_JOB_ID in their environment)."""
        import psutil

        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("SLURM_JOB_ID") == str(job_id) and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def stray_pids(self) -> list[int]:
        import psutil

        mine = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and p.environ().get("SLURM_CONF") == str(self.conf) \
                        and p.pid not in {q.pid for q in self.procs.values()} and p.status() != psutil.STATUS_ZOMBIE \
                        and _is_job_process(p):
                    mine.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return mine


def _is_job_process(p) -> bool:
    """A process SLURM started for a job (it has SLURM_JOB_ID) or a slurmstepd."""
    env = p.environ()
    return "SLURM_JOB_ID" in env or "slurmstepd" in " ".join(p.cmdline())


def _stop_group(p: subprocess.Popen, wait: float = 15) -> None:
    if p.poll() is not None:
        return
    for sig, t in ((signal.SIGTERM, wait), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(t)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get install slurm-wlm munge where missing (root)")
    r = sub.add_parser("run", help="start a cluster, run a command in it, stop the cluster")
    r.add_argument("--dir", help="the cluster's folder (default: a new temp folder, removed afterwards)")
    r.add_argument("--partition", default="cpu")
    r.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        install()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    if a.cmd == "install":
        return 0
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("run: give a command after --")
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="almanac-slurm-"))

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with SlurmCluster(root, a.partition) as cluster:
            print(f"slurm cluster up in {root}: SLURM_CONF={cluster.conf}, partition {a.partition}", flush=True)
            return subprocess.call(command, env=cluster.env)
    except KeyboardInterrupt:
        return 130
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
