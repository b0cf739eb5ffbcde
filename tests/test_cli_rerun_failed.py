"""`almanac rerun-failed`: the Snakemake command it runs (the real runs: test_faults, the e2e tests)."""

import json
import subprocess

from llm_almanac import cli


def test_rerun_failed_passes_args_after_double_dash_to_snakemake(tmp_path, monkeypatch):
    for cid, status in (("a", "ok"), ("b", "failed")):
        (tmp_path / "results" / "cells" / cid).mkdir(parents=True)
        (tmp_path / "results" / "cells" / cid / "cell.json").write_text(json.dumps({"status": status}))
    (tmp_path / "c.yaml").write_text("bench: {seed: 1}\n")  # checked before Snakemake runs
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["rerun-failed", "--directory", str(tmp_path), "--configfile", "c.yaml",
                     "--", "--workflow-profile", "profiles/slurm"]) == 0
    cmd = calls[0]
    assert "--" not in cmd
    assert cmd[-4:] == ["--forcerun", "results/cells/b/cell.json", "--workflow-profile", "profiles/slurm"]
    assert cmd[cmd.index("--configfile") + 1] == "c.yaml"
