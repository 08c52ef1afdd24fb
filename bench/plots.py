"""PNG plots of a ``bench.run`` report: throughput, latency percentiles, batch sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

SERIES = (("ours", "tab:blue", "o"), ("baseline", "tab:orange", "s"), ("unbatched", "tab:green", "^"),
          ("ours_fp32", "tab:purple", "D"))
PLAIN = FuncFormatter(lambda value, _pos: f"{value:g}")  # 200 rather than 2×10²
PERCENTILES = (("p50_ms", "p50", "-"), ("p95_ms", "p95", "--"), ("p99_ms", "p99", ":"))


def _measured(report: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(key, colour, marker, series) for each server section that ran."""
    return [(key, colour, marker, report[key]) for key, colour, marker in SERIES
            if isinstance(report.get(key), dict) and report[key].get("levels")]


def _concurrency_axis(ax: Axes, levels: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent clients")
    ax.grid(True, alpha=0.3)


def _title(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    return f"{env.get('arch', '?')} on {env.get('gpu') or env.get('device', '?')} ({env.get('cpus', '?')} CPUs)"


def throughput_plot(report: dict[str, Any]) -> Figure:
    """Images/s against concurrency for each server, with the in-process limit as a line."""
    fig, ax = plt.subplots(figsize=(7, 5.2))
    levels: set[int] = set()
    for _key, colour, marker, series in _measured(report):
        xs = [lv["concurrency"] for lv in series["levels"]]
        ax.plot(xs, [lv["images_per_s"] for lv in series["levels"]], marker=marker, color=colour,
                label=series["title"])
        levels.update(xs)
    limit = report.get("limit") or {}
    if limit:
        ax.axhline(limit["best_images_per_s"], color="black", linestyle="--",
                   label=f"in-process limit (batch {limit['best_batch_size']})")
    if limit.get("with_decode"):
        ax.axhline(limit["with_decode"]["images_per_s"], color="grey", linestyle=":",
                   label=f"in-process decode + encode (batch {limit['with_decode']['batch_size']})")
    _concurrency_axis(ax, sorted(levels))
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput — {_title(report)}")
    # Below the axes: inside, it would cover the limit lines at the top.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def latency_plot(report: dict[str, Any]) -> Figure:
    """p50/p95/p99 latency against concurrency, one panel per server."""
    measured = _measured(report)
    fig, axes = plt.subplots(1, len(measured), figsize=(4.5 * len(measured), 4.2), sharey=True, squeeze=False)
    for ax, (_key, colour, _marker, series) in zip(axes[0], measured, strict=True):
        xs = [lv["concurrency"] for lv in series["levels"]]
        for field, label, style in PERCENTILES:
            ys = [lv[field] for lv in series["levels"]]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], linestyle=style, marker="o",
                    color=colour, label=label)
        if report.get("limit"):
            ax.axhline(report["limit"]["single_image_ms"], color="black", linestyle="--", linewidth=1,
                       label="model, 1 image")
        _concurrency_axis(ax, xs)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(series["title"], fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("latency (ms)")
    fig.suptitle(f"Latency — {_title(report)}")
    fig.tight_layout()
    return fig


def batch_size_plot(report: dict[str, Any]) -> Figure:
    """How many requests ran in batches of each size (X-Batch-Size), per concurrency."""
    levels = report["ours"]["levels"]
    sizes = sorted({int(size) for lv in levels for size in lv["batch_sizes"]}) or [1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(levels)
    for i, lv in enumerate(levels):
        total = sum(lv["batch_sizes"].values()) or 1
        shares = [100 * lv["batch_sizes"].get(str(size), 0) / total for size in sizes]
        ax.bar([j + i * width for j in range(len(sizes))], shares, width, label=f"c={lv['concurrency']}")
    ax.set_xticks([j + width * (len(levels) - 1) / 2 for j in range(len(sizes))], [str(s) for s in sizes])
    ax.set_xlabel("batch size the request ran in (X-Batch-Size)")
    ax.set_ylabel("% of requests")
    ax.set_title(f"Adaptive batch sizes, {report['ours']['title']} — {_title(report)}", fontsize=10)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write the PNGs into ``folder`` (none for sections that were not measured); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = [("throughput.png", throughput_plot), ("latency.png", latency_plot)] if _measured(report) else []
    if (report.get("ours") or {}).get("levels"):
        plots.append(("batch_sizes.png", batch_size_plot))
    paths = []
    for name, make in plots:
        fig = make(report)
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
