"""What a token costs: a device's price per hour, and dollars per million tokens at a run's throughput.

PRICES are typical on-demand prices of one GPU, in US dollars per hour, for the DATASHEET devices. They are the
figures of public price pages as of 2025 (source beside each row), written down by hand: prices move, differ by
provider and region, and are not fetched at run time. A run's `price_per_hour` knob (EngineConfig) overrides the
table; 0 takes it. A CPU is priced per core at CPU_PER_CORE_HOUR (a compute-optimized cloud VM's on-demand
price per vCPU) times the cores of this machine.
"""

from __future__ import annotations

import os

PRICES_AS_OF = "2025"
# datasheet key -> ($ per GPU-hour, where that figure is from)
PRICES: dict[str, tuple[float, str]] = {
    "H100 SXM": (2.99, "Lambda on-demand, 8x H100 SXM per GPU"),
    "H100 PCIe": (2.49, "Lambda on-demand, 1x H100 PCIe"),
    "H200": (3.79, "typical neocloud on-demand per GPU (RunPod, Nebius list prices)"),
    "A100 80GB": (1.79, "Lambda on-demand, 8x A100 80GB SXM per GPU"),
    "A100 40GB": (1.29, "Lambda on-demand, 1x A100 40GB"),
    "L4": (0.80, "Google Cloud g2-standard-4 on-demand (1x L4), us-central1"),
    "L40S": (1.86, "AWS g6e.xlarge on-demand (1x L40S), us-east-1"),
    "A10G": (1.01, "AWS g5.xlarge on-demand (1x A10G), us-east-1"),
    "RTX 4090": (0.69, "RunPod secure cloud on-demand"),
}
CPU_PER_CORE_HOUR = (0.0446, "AWS c7i.large on-demand ($0.0893/h for 2 vCPUs), us-east-1")


def device_price(hardware: dict, override: float = 0.0) -> dict:
    """{price_per_hour, price_source} for a run's hardware record: the override, else the table's figure for its
    datasheet device, else the CPU figure for this machine's cores; price_per_hour None for a GPU not in the
    table."""
    if override:
        return {"price_per_hour": float(override), "price_source": "price_per_hour (given)"}
    sheet = hardware.get("datasheet") or {}
    if sheet.get("model") in PRICES:
        price, source = PRICES[sheet["model"]]
        return {"price_per_hour": price, "price_source": f"{source} ({PRICES_AS_OF})"}
    if hardware.get("device", "cpu") == "cpu":
        cores = hardware.get("cores") or os.cpu_count() or 1
        per, source = CPU_PER_CORE_HOUR
        return {"price_per_hour": round(per * cores, 4), "price_source": f"{cores} cores x ${per}/core-hour: {source} "
                                                                         f"({PRICES_AS_OF})"}
    return {"price_per_hour": None, "price_source": "no price for this device: set price_per_hour"}


def per_million(price_per_hour: float | None, tokens_per_s: float | None) -> float | None:
    """Dollars per million tokens at `tokens_per_s` on a device of `price_per_hour`."""
    if not price_per_hour or not tokens_per_s:
        return None
    return price_per_hour / (tokens_per_s * 3600.0) * 1e6


def cost_metrics(metrics: dict, price_per_hour: float | None) -> dict:
    """$ per 1M output tokens and per 1M total (prompt + output) tokens at a run's throughput."""
    return {"usd_per_1m_output_tokens": per_million(price_per_hour, metrics.get("output_tok_s")),
            "usd_per_1m_tokens": per_million(price_per_hour, metrics.get("total_tok_s"))}
