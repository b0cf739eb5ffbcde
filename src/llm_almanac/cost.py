"""What an answer costs: prices per price key, cost at the operating point, replicas for a load.

Definitions (DESIGN.md, "From measurements to answers"), with price_h the replica's $/hour:
  $ per 1 M output tokens = price_h / (output_tok_s * 3600) * 1e6
  $ per 1 M total tokens  = price_h / ((input_tok_s + output_tok_s) * 3600) * 1e6
  $ per 1,000 requests    = price_h / (rps * 3600) * 1000
  GPU-seconds per request = n_gpus / rps            (None for CPU cells: they hold no GPU)
  replicas for a load     = ceil(target_qps / max_rps)
  $ per month             = $ per hour * 730        (365 * 24 / 12 hours)
An above-range answer is a lower bound on max_rps, so its costs and replica counts are upper
bounds; callers say so (answers.lower_bound).

Prices are $/hour per *price key*: the GPU's model (`h100`, `a100`, `rtx4090`) or `cpu`
(`price_key`). Not the measurement's `hardware_kind` (identity.py: `h100-80gb-hbm3-x1`, GPU count
included), which says exactly what ran; a price key says what to pay for one GPU of it. Per GPU
for GPU keys (a replica on N GPUs costs N times that), per machine for `cpu`. Where they come
from, the later winning: the example figures below, the config's `prices:` section, the command
line (`--price h100=2.5`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

MONTH_HOURS = 730.0

_GPU_SOURCE = ("https://www.mercatus-ai.com/blog/cloud-gpu-pricing (its table 'Cloud GPU pricing in "
               "May 2026', on-demand, specialty-cloud tier, low end of the range)")


@dataclass(frozen=True)
class Price:
    key: str  # the price key (price_key)
    usd_per_hour: float  # per GPU for GPU keys, per machine for cpu
    read_on: str | None
    source: str | None
    origin: str  # example | config | command line

    @property
    def unit(self) -> str:
        return "per machine" if self.key == "cpu" else "per GPU"


# Example figures, so that a first run shows costs. They are someone else's list prices on the
# day they were read; put your own under `prices:` in the config or pass --price.
EXAMPLE_PRICES: dict[str, Price] = {
    "h100": Price("h100", 2.50, "2026-11-30", _GPU_SOURCE, "example"),
    "h200": Price("h200", 3.50, "2026-11-30", _GPU_SOURCE, "example"),
    "a100": Price("a100", 1.10, "2026-11-30", _GPU_SOURCE, "example"),
    "cpu": Price("cpu", 0.0416, "2026-11-30",
                 "AWS EC2 t3.medium (2 vCPU, 4 GiB), us-east-1, on-demand Linux, as quoted by "
                 "https://hacecuentas.com/en/costo-servidor-cloud-aws-ec2-mensual", "example"),
}

_VENDOR_WORDS = {"nvidia", "amd", "intel", "tesla", "geforce", "instinct", "radeon", "data", "center"}


def price_key(hardware: str | None, n_gpus: int | None = None) -> str:
    """The price key of a cell's `hardware` text: `cpu` for CPU cells, else the GPU's model in
    lower case ("1x NVIDIA H100 80GB HBM3 (driver 550.54)" -> h100, "NVIDIA A100-SXM4-80GB" ->
    a100, "NVIDIA GeForce RTX 4090" -> rtx4090, "AMD Instinct MI300X" -> mi300x): the first word
    with a digit, after dropping vendor words and anything in parentheses. The answers table's
    `price_key` and the report's hardware picker use it; `hardware_kind` is the cells table's."""
    text = (hardware or "").strip()
    if not text:
        return "unknown"
    if text.lower().startswith("cpu"):
        return "cpu"
    name = re.sub(r"\([^)]*\)", " ", re.sub(r"^\s*\d+\s*x\s+", "", text))
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in _VENDOR_WORDS]
    for i, w in enumerate(words):
        if any(ch.isdigit() for ch in w):
            return words[i - 1] + w if w.isdigit() and i > 0 and words[i - 1].isalpha() else w
    return "-".join(words) or "unknown"


def _from_config(key: str, value: Any) -> Price:
    if isinstance(value, dict):
        return Price(key, float(value["usd_per_hour"]), value.get("read_on"), value.get("source"), "config")
    return Price(key, float(value), None, None, "config")


def resolve(config_prices: dict[str, Any] | None = None, overrides: dict[str, float] | None = None,
            examples: bool = True) -> dict[str, Price]:
    """Every known price key's price: example figures, then the config's, then the command line's."""
    book = dict(EXAMPLE_PRICES) if examples else {}
    for key, value in (config_prices or {}).items():
        book[key] = _from_config(key, value)
    for key, usd in (overrides or {}).items():
        book[key] = Price(key, float(usd), None, "command line", "command line")
    return book


def parse_overrides(items: list[str] | None) -> dict[str, float]:
    """['h100=2.5', 'cpu=0.04'] -> {'h100': 2.5, 'cpu': 0.04}; ValueError with the bad item."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, usd = item.partition("=")
        try:
            value = float(usd)
        except ValueError:
            value = -1.0
        if not sep or not key.strip() or not value >= 0:
            raise ValueError(f"--price {item!r}: expected PRICE_KEY=DOLLARS_PER_HOUR, e.g. h100=2.5")
        out[key.strip().lower()] = value
    return out


def replica_usd_per_hour(price: Price | None, n_gpus: int | None) -> float | None:
    """$/hour of one replica: the GPU price times its GPUs, or the machine price for cpu."""
    if price is None:
        return None
    if price.key == "cpu":
        return price.usd_per_hour
    return price.usd_per_hour * max(1, int(n_gpus or 0))


def costs(usd_per_hour: float | None, rps: float | None, output_tok_s: float | None,
          total_tok_s: float | None, n_gpus: int | None) -> dict[str, float | None]:
    """Cost at an operating point (module docstring); None where a factor is missing or zero."""
    def per(amount: float | None, scale: float) -> float | None:
        if usd_per_hour is None or not amount:
            return None
        return usd_per_hour / (amount * 3600) * scale

    return {
        "usd_per_1m_output_tokens": per(output_tok_s, 1e6),
        "usd_per_1m_total_tokens": per(total_tok_s, 1e6),
        "usd_per_1k_requests": per(rps, 1000),
        "gpu_s_per_request": (n_gpus / rps) if n_gpus and rps else None,
    }


def replicas(qps: float, max_rps: float | None) -> int | None:
    """Replicas that hold `qps` when each holds `max_rps`; None when it holds none."""
    if not max_rps or max_rps <= 0:
        return None
    return max(1, math.ceil(qps / max_rps))
