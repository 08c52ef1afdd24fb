"""The docs' benchmark figures, generated from one committed report.

    python -m bench.report                                   # rewrite the docs' tables and plots
    python -m bench.report --adopt bench_results/bench.json  # first make a new run the quoted one
    python -m bench.report --adopt bench_results/container.json  # the same for `make bench-container`
    python -m bench.report --check                           # exit 1 where the docs differ
    python -m bench.report --compare before.json after.json  # an A/B of two runs, side by side

Every figure the README and docs/performance.md quote comes from ``docs/bench/bench.json``
(written by ``python -m bench.run``, which records the commit and the machine); docs/deployment.md's
come from ``docs/bench/container.json`` (``python -m bench.container``). Each table sits
between ``<!-- bench:table:NAME -->`` and ``<!-- /bench:table:NAME -->`` and ends by naming the
file and its commit; this module rewrites what lies between the markers and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import SERIES, dig, fp32_ceiling, runtime_models
from bench.server import ROOT
from clip_runner.store.entries import Parity

REPORT = ROOT / "docs" / "bench" / "bench.json"
DOCS = (ROOT / "README.md", ROOT / "docs" / "performance.md")
BLOCK = re.compile(r"(<!-- bench:table:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /bench:table:(?P=name) -->)",
                   re.DOTALL)
#: How each server series is named in the docs (the letter is added in the full tables).
TITLES = {"ours": "service", "baseline": "transformers baseline", "unbatched": "service, `CLIP_BATCH_SIZE=1`",
          "ours_fp32": "service, torch fp32", "ours_torch": "service, `CLIP_RUNTIME=torch`",
          **{f"ours_openvino_{p}": f"service, OpenVINO {p}" for p in ("fp32", "bf16", "int8")}}
SHORT_TITLES = {"ours": "this service", "baseline": "transformers baseline",
                "unbatched": "this service, batching off", "ours_fp32": "this service, torch fp32",
                "ours_torch": "this service, torch", **{f"ours_openvino_{p}": f"this service, OpenVINO {p}"
                                                       for p in ("fp32", "bf16", "int8")}}
SERVERS = tuple(key for key in SERIES.values() if key in TITLES)
LETTER = {key: letter for letter, key in SERIES.items()}


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "—" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _servers(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(key, report[key]) for key in SERVERS if isinstance(report.get(key), dict)]


def _title(report: dict[str, Any], key: str) -> str:
    fp32 = key == "baseline" and report["environment"].get("device") == "cpu"
    return f"({LETTER[key]}) {TITLES[key]}" + (" (fp32)" if fp32 else "")


def source_line(report: dict[str, Any], link: str) -> str:
    """Where a table's figures come from: the file, its commit, the machine."""
    env = report["environment"]
    commit = env.get("git_commit") or "unknown commit"
    dirty = " with uncommitted changes" if env.get("git_dirty") else ""
    return (f"<sub>From [`docs/bench/bench.json`]({link}): commit {commit}{dirty}, {env.get('cpu_model') or 'CPU'}"
            f", {env.get('cpus')} CPUs{', ' + env['gpu'] if env.get('gpu') else ''}, {env.get('arch')} on "
            f"{env.get('device')}.</sub>")


# ---- the blocks -----------------------------------------------------------------------------------

def environment_block(report: dict[str, Any]) -> str:
    """The run's conditions in a sentence or two."""
    env, limit = report["environment"], report.get("limit") or {}
    threads = f", {limit['torch_threads']} torch threads" if limit.get("torch_threads") else ""
    batch = dig(report, "ours", "env", "CLIP_BATCH_SIZE")
    levels = ", ".join(str(c) for c in env.get("levels") or [])
    return (f"Machine: {env.get('cpus')} CPUs, {env.get('cpu_model') or 'unknown model'}, "
            f"{env.get('gpu') or 'no GPU'}; {env.get('arch')} ({env.get('source')}), torch {env.get('torch')}, "
            f"Python {env.get('python')}{threads}"
            f"{f', `CLIP_BATCH_SIZE` {batch}' if batch else ''}. The service computes in "
            f"{limit.get('precision') or env.get('precision') or '?'}. Series {', '.join(env.get('series') or [])} at "
            f"{levels} clients, {env.get('warmup_s'):g} s warm-up + {env.get('duration_s'):g} s per level. "
            f"One run at commit {env.get('git_commit')}{' (with uncommitted changes)' if env.get('git_dirty') else ''}"
            f": every figure in the tables below comes from it.")


def throughput_block(report: dict[str, Any]) -> str:
    """Images/s (p50 ms) per server and concurrency: the README's table."""
    levels = report["environment"].get("levels") or []
    header = [""] + [f"{c} client{'s' if c > 1 else ''}" for c in levels]
    rows = []
    for key, series in _servers(report):
        by_level = {lv["concurrency"]: lv for lv in series.get("levels") or []}
        missing = "not measured" if series.get("error") else "—"
        cells = [f"{by_level[c]['images_per_s']:.2f} ({_num(by_level[c]['p50_ms'], '.0f')})" if c in by_level
                 else missing for c in levels]
        rows.append([SHORT_TITLES[key] + (", images/s (p50 ms)" if key == "ours" else "")] + cells)
    return _table(header, rows)


def results_block(report: dict[str, Any]) -> str:
    """Every measured level, with the in-process limit on top."""
    rows = []
    limit = report.get("limit")
    if limit:
        per_batch = "; ".join(f"{v['images_per_s']:.2f} (batch {b})" for b, v in
                              sorted(limit["per_batch_size"].items(), key=lambda kv: -int(kv[0])))
        rows.append([f"(a) in-process limit, {limit.get('precision', 'fp32')}", "—", per_batch,
                     f"{limit['single_image_ms']:.1f} (batch of 1)", "", "", "", ""])
        if limit.get("with_decode"):
            wd = limit["with_decode"]
            rows.append([f"(a′) in-process decode + encode, {limit.get('precision', 'fp32')}", "—",
                         f"{wd['images_per_s']:.2f} (batch {wd['batch_size']}, {wd['decode_threads']} decode threads)",
                         "", "", "", "", ""])
    for key, series in _servers(report):
        if series.get("error"):
            rows.append([_title(report, key), "—", "not measured: " + series["error"].splitlines()[0], "", "", "",
                         "", ""])
        for lv in series.get("levels") or []:
            rows.append([_title(report, key), str(lv["concurrency"]), f"{lv['images_per_s']:.2f}", _num(lv["p50_ms"]),
                         _num(lv["p95_ms"]), _num(lv["p99_ms"]), _num(lv["mean_batch_size"]), str(lv["errors"])])
    return _table(["setup", "clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors"], rows)


def _comparison(cmp: dict[str, Any] | None) -> str:
    if not cmp:
        return "not measured"
    per = ", ".join(f"{_num(r, '.2f')} at {c}" for c, r in cmp["per_concurrency"].items()
                    if int(c) != cmp["concurrency"])
    return f"{_num(cmp['ratio'], '.2f')} ({per + '; ' if per else ''}best vs best {_num(cmp['best_vs_best'], '.2f')})"


def ratios_block(report: dict[str, Any]) -> str:
    """The headline ratios with what they are made of."""
    ratio, rows = report.get("ratios") or {}, []
    if "ours_vs_limit" in ratio:
        sat, dec, over = ratio["ours_vs_limit"], ratio["ours_vs_decode_limit"], ratio["overhead_at_c1"]
        rows += [["(b)/(a) at saturation", f"{_num(sat['ratio'], '.2f')} ({_num(sat['ours_images_per_s'], '.2f')} "
                  f"img/s at {sat['ours_concurrency']} clients vs {sat['limit_images_per_s']:.2f} at batch "
                  f"{sat['limit_batch_size']})"],
                 ["(b)/(a′) at saturation", f"{_num(dec['ratio'], '.2f')} (vs "
                  f"{_num(dec['decode_limit_images_per_s'], '.2f')} img/s: what HTTP and queueing alone cost)"],
                 ["p50 at 1 client − model latency", f"{_num(over['overhead_ms'])} ms ({_num(over['p50_ms'])} − "
                  f"{_num(over['model_ms'])})"]]
    for key, label in (("ours_vs_baseline", "(b)/(c)"), ("ours_vs_unbatched", "(b)/(d)"),
                       ("ours_fp32_vs_baseline", "(e)/(c), both fp32"),
                       ("ours_openvino_fp32_vs_baseline", "(g)/(c), both fp32")):
        if key in ratio:
            at = (ratio[key] or {}).get("concurrency")
            rows.append([f"{label} at {at} clients" if at else label, _comparison(ratio[key])])
    return _table(["ratio", "value"], rows)


def runtimes_block(report: dict[str, Any]) -> str:
    """Torch and each compiled precision in process, per model, and the demo model's accuracy at int8."""
    runtimes = report.get("runtimes")
    if not runtimes:
        return "Not measured in this run (series (a) on a CPU with OpenVINO installed)."
    rows, ceilings = [], []
    for model, section in runtime_models(report):
        base = dig(section, "rows", "torch fp32", "images_per_s")
        if ceiling := fp32_ceiling(section):
            ceilings.append(f" {model}: {ceiling}.")
        for name, row in section["rows"].items():
            parity = row.get("parity")
            cosine = (f"{parity['image_mean']:.5f} / {parity['text_mean']:.5f} "
                      f"({Parity(**parity).worst_min:.5f})" if parity
                      else "reference" if name == "torch fp32" else "—")
            rows.append([model, *name.split(), f"{row['images_per_s']:.1f}", f"{row['texts_per_s']:.1f}",
                         f"{row['images_per_s'] / base:.2f}×" if base else "—", cosine])
    table = _table(["model", "runtime", "precision", "images/s", "texts/s", "images/s vs torch fp32",
                    "cosine to torch fp32, mean: images / texts (worst row)"], rows)
    demo = runtimes["demo"]
    fp32, int8 = demo["torch_fp32"], demo["openvino_int8"]
    turns = f", the rows taking turns ({runtimes['rounds']} windows each)" if runtimes.get("rounds") else ""
    return (f"{table}\n\nIn process at batch {runtimes['batch_size']}, {runtimes['threads']} threads, the same pixels "
            f"and texts for every row{turns}. The demo model on {demo['images']} generated images: zero-shot top-1 "
            f"{int8['zero_shot_top1']:.2%} at int8 against {fp32['zero_shot_top1']:.2%} at torch fp32, mismatch F1 "
            f"{int8['mismatch_f1']:.4f} against {fp32['mismatch_f1']:.4f}." + "".join(ceilings))


def goals_block(report: dict[str, Any]) -> str:
    """Each goal of the run's device with its measured value and verdict."""
    verdicts = {True: "met", False: "**not met**", None: "not measured"}
    rows = [[goal["goal"], goal["target"].replace(">=", "≥").replace("<=", "≤"), _num(goal["value"], "g"),
             verdicts[goal["met"]]] for goal in report.get("goals") or []]
    return _table(["goal", "target", "measured", "verdict"], rows)


def memory_block(report: dict[str, Any]) -> str:
    """RSS of each server's supervisor and workers, idle and under load, and the tree's peak."""
    rows = []
    for key, series in _servers(report):
        rss = series.get("rss")
        if not rss:
            continue
        idle, load = rss["idle_mb"], rss["load_peak_mb"]
        rows.append([_title(report, key), str(rss["processes"]), *(_num(v, ".0f") for v in (
            idle["supervisor"], idle["workers"], load["supervisor"], load["workers"], load["tree"],
            rss["peak_tree_mb"])), f"{series['ready_s']:g} s"])
    every = next((series["rss"]["sample_every_s"] for _, series in _servers(report) if series.get("rss")), None)
    return _table(["server", "processes", "supervisor idle", "workers idle", "supervisor peak under load",
                   "workers peak under load", "tree peak under load", "tree peak, start to stop", "ready in"],
                  rows) + (f"\n\nRSS read every {every:g} s; the workers are the supervisor's children (for the "
                           "service, one process holding the model)." if every else "")


def decode_block(report: dict[str, Any]) -> str:
    """Fast decode against the reference, per photo size."""
    decode = report.get("decode") or {}
    rows = []
    for name, row in (decode.get("sizes") or {}).items():
        ref_lo, ref_hi = row["reference_range_ms"]
        lo, hi = row["ours_range_ms"]
        rows.append([f"{name}, {row['bytes'] / 1024:.0f} KB",
                     f"{row['reference_ms']:.1f} ms ({ref_lo:.1f}–{ref_hi:.1f})",
                     f"{row['ours_ms']:.1f} ms ({lo:.1f}–{hi:.1f})", f"{row['speedup']:.1f}×",
                     f"{row['cosine']:.4f}", f"{row['cosine_other_photo']:.2f}"])
    return _table(["photo", "reference (PIL full decode + open_clip transform)", "ours", "speed-up", "cosine",
                   "cosine, another photo"], rows)


def headline_block(report: dict[str, Any]) -> str:
    """The README's summary sentences, each from the report."""
    ratio, limit, lines = report.get("ratios") or {}, report.get("limit") or {}, []
    base = ratio.get("ours_vs_baseline")
    if base and base["ratio"] is not None:
        spread = [r for r in base["per_concurrency"].values() if r is not None]
        across = f" ({min(spread):.2f}–{max(spread):.2f}× across levels)" if len(spread) > 1 else ""
        lines.append(f"**{base['ratio']:.2f}× the transformers baseline at {base['concurrency']} "
                     f"clients**{across}.")
    if dig(ratio, "ours_vs_unbatched", "ratio") is not None:
        cmp = ratio["ours_vs_unbatched"]
        lines.append(f"Batching buys {cmp['ratio']:.2f}× at {cmp['concurrency']} clients.")
    if dig(ratio, "ours_fp32_vs_baseline", "ratio") is not None:
        cmp = ratio["ours_fp32_vs_baseline"]
        lines.append(f"At the baseline's fp32 the service is {cmp['ratio']:.2f}× the baseline at "
                     f"{cmp['concurrency']} clients.")
    if dig(ratio, "ours_openvino_fp32_vs_baseline", "ratio") is not None:
        cmp = ratio["ours_openvino_fp32_vs_baseline"]
        lines.append(f"Compiled with OpenVINO at fp32, the service is {cmp['ratio']:.2f}× the baseline at "
                     f"{cmp['concurrency']} clients, same arithmetic.")
    if report.get("runtimes") and dig(report, "ours", "runtime"):
        ours = report["ours"]
        lines.append(f"By default it serves {ours['runtime']} {ours['precision']} here, the fastest that meets "
                     "parity on this CPU (docs/performance.md, \"Runtimes\").")
    if "ours_vs_limit" in ratio:
        over, sat = ratio["overhead_at_c1"], ratio["ours_vs_limit"]
        lines.append(f"In-process limit {limit['best_images_per_s']:.1f} images/s ({limit.get('precision')}, batch "
                     f"{limit['best_batch_size']}), single-image model latency {limit['single_image_ms']:.1f} ms: at "
                     f"one client a request takes {_num(over['overhead_ms'])} ms more than the model alone, and at "
                     f"saturation the service reaches {_num(sat['ratio'], '.2f')} of the limit "
                     f"({_num(ratio['ours_vs_decode_limit']['ratio'], '.2f')} of the limit with decoding).")
    rss = dig(report, "ours", "rss")
    if rss and rss["peak_tree_mb"] is not None:
        lines.append(f"Memory: the service's process tree peaks at {rss['peak_tree_mb'] / 1000:.2f} GB; idle, the "
                     f"supervisor holds {_num(rss['idle_mb']['supervisor'], '.0f')} MB and the process holding the "
                     f"model {_num(rss['idle_mb']['workers'], '.0f')} MB.")
    big = dig(report, "decode", "sizes", "12MP")
    if big:
        lines.append(f"A 12 MP photo decodes and preprocesses in {big['ours_ms']:.1f} ms instead of "
                     f"{big['reference_ms']:.1f} ms ({big['speedup']:.1f}×) with the same embedding (cosine "
                     f"{big['cosine']:.4f}).")
    return "\n".join(f"* {line}" for line in lines)


BLOCKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "environment": environment_block, "throughput": throughput_block, "headline": headline_block,
    "results": results_block, "ratios": ratios_block, "goals": goals_block, "memory": memory_block,
    "decode": decode_block, "runtimes": runtimes_block,
}


# ---- the container figures (docs/deployment.md, from docs/bench/container.json) ----------------------

CONTAINER_REPORT = ROOT / "docs" / "bench" / "container.json"
CONTAINER_DOCS = (ROOT / "docs" / "deployment.md",)


def _mean(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = [v for row in rows if (v := dig(row, *path)) is not None]
    return sum(values) / len(values) if values else None


def container_images_block(report: dict[str, Any]) -> str:
    """Each image's size."""
    rows = [[f"`{image['image'].split(':')[0]}` ({variant})", f"{image['size_gb']:.2f} GB"]
            for variant, image in report["images"].items()]
    return _table(["image", "size (`image inspect`)"], rows)


def container_serving_block(report: dict[str, Any]) -> str:
    """The container beside the host: start, memory, images/s (means of the interleaved rounds)."""
    rounds, clients = report["rounds"], report["environment"]["clients"]
    rows = []
    for where, title in (("container", "slim image (container)"), ("host", "same entry on the host")):
        rows.append([title, _num(_mean(rounds, where, "ready_s")),
                     _num(_mean(rounds, where, "rss", "idle_mb", "tree"), ".0f"),
                     _num(_mean(rounds, where, "rss", "load_peak_mb", "tree"), ".0f"),
                     _num(_mean(rounds, where, "level", "images_per_s"), ".2f"),
                     _num(_mean(rounds, where, "level", "p50_ms"), ".0f")])
    ratio = next(g for g in report["goals"] if g["goal"].startswith("container / host"))["value"]
    header = ["", "run → ready (s)", "RSS idle (MB)", f"RSS peak, {clients} clients (MB)",
              f"images/s, {clients} clients", "p50 (ms)"]
    return _table(header, rows) + f"\n\nContainer / host images/s: **{ratio:.3f}** ({len(rounds)} interleaved rounds)."


def container_first_start_block(report: dict[str, Any]) -> str:
    """A host server's first start that compiles, and every goal of the run."""
    first = report.get("first_start")
    lines = []
    if first:
        lines.append(f"First start compiling `{first['model']}` (`CLIP_RUNTIME=auto`, empty store beside it): "
                     f"ready in {first['ready_s']:.0f} s, serving {first['precision']}; peak memory of the process "
                     f"tree **{first['peak_tree_mb'] / 1000:.2f} GB** (PSS; the sum of the processes' RSS, "
                     f"{first['peak_tree_rss_sum_mb'] / 1000:.2f} GB, counts the pages a forked child shares "
                     "with its parent twice).\n")
    rows = [[g["goal"], g["target"], _num(g["value"], "g") if g["value"] is not None else "—",
             {True: "met", False: "**not met**", None: "not measured"}[g["met"]]] for g in report["goals"]]
    return "\n".join(lines) + _table(["goal", "target", "value", "status"], rows)


def container_source_line(report: dict[str, Any], link: str) -> str:
    env = report["environment"]
    dirty = " with uncommitted changes" if env.get("git_dirty") else ""
    return (f"<sub>From [`docs/bench/container.json`]({link}): commit {env.get('git_commit')}{dirty}, "
            f"{env.get('cpu_model')}, {env.get('cpus')} CPUs, {env.get('engine')}, {env.get('pinned')}.</sub>")


CONTAINER_BLOCKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "container_images": container_images_block, "container_serving": container_serving_block,
    "container_first_start": container_first_start_block,
}


# ---- the docs ----------------------------------------------------------------------------------------

def render_doc(text: str, report: dict[str, Any], link: str, container: bool = False) -> str:
    """``text`` with every marked block regenerated from ``report`` (``link``: the report, relative
    to the document; ``container``: the report is ``make bench-container``'s)."""
    blocks, source = (CONTAINER_BLOCKS, container_source_line) if container else (BLOCKS, source_line)

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise ValueError(f"unknown bench block {name!r}; known: {', '.join(blocks)}")
        body = blocks[name](report)
        if name != "environment":
            body += "\n\n" + source(report, link)
        return f"{match[1]}{body}\n{match[4]}"

    return BLOCK.sub(fill, text)


def rendered_docs(report: dict[str, Any], docs: tuple[Path, ...] = DOCS, source: Path = REPORT) -> dict[Path, str]:
    """Each document as the report makes it (the container report when ``source`` is it)."""
    container = source == CONTAINER_REPORT
    return {doc: render_doc(doc.read_text(), report, os.path.relpath(source, doc.parent), container) for doc in docs}


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Two runs side by side: images/s and p50 per series and level, then each server's RSS."""
    lines = [f"before: commit {before['environment'].get('git_commit')}, "
             f"after: commit {after['environment'].get('git_commit')}",
             f"{'series':<14}{'clients':>8}{'img/s before':>14}{'after':>9}{'ratio':>7}{'p50 before':>12}{'after':>9}"]
    memory = [f"{'RSS, MB':<14}{'sup. idle before':>18}{'after':>9}{'workers idle before':>21}{'after':>9}"
              f"{'tree peak before':>18}{'after':>9}"]
    for key in SERVERS:
        old, new = before.get(key) or {}, after.get(key) or {}
        name = f"({LETTER[key]}) {key}"
        old_levels = {lv["concurrency"]: lv for lv in old.get("levels") or []}
        for lv in new.get("levels") or []:
            was = old_levels.get(lv["concurrency"])
            if was is not None:
                ratio = lv["images_per_s"] / was["images_per_s"] if was["images_per_s"] else None
                lines.append(f"{name:<14}{lv['concurrency']:>8}{was['images_per_s']:>14.2f}{lv['images_per_s']:>9.2f}"
                             f"{_num(ratio, '.2f'):>7}{_num(was['p50_ms']):>12}{_num(lv['p50_ms']):>9}")
        if old.get("rss") and new.get("rss"):
            pairs = [(dig(old["rss"], *path), dig(new["rss"], *path)) for path in (
                ("idle_mb", "supervisor"), ("idle_mb", "workers"), ("peak_tree_mb",))]
            memory.append(f"{name:<14}{_num(pairs[0][0]):>18}{_num(pairs[0][1]):>9}{_num(pairs[1][0]):>21}"
                          f"{_num(pairs[1][1]):>9}{_num(pairs[2][0]):>18}{_num(pairs[2][1]):>9}")
    return "\n".join(lines + [""] + memory)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.report``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adopt", type=Path, help="copy this bench.run report to docs/bench/bench.json first")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is out of date")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="print an A/B and exit")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*(json.loads(path.read_text()) for path in args.compare)))
        return 0
    if args.adopt:
        adopted = json.loads(args.adopt.read_text())  # `make bench-container`'s report names its engine
        shutil.copyfile(args.adopt, CONTAINER_REPORT if "engine" in adopted["environment"] else REPORT)
    report = json.loads(REPORT.read_text())
    rendered = rendered_docs(report)
    if CONTAINER_REPORT.is_file():
        rendered |= rendered_docs(json.loads(CONTAINER_REPORT.read_text()), CONTAINER_DOCS, CONTAINER_REPORT)
    stale = [doc for doc, text in rendered.items() if doc.read_text() != text]
    if args.check:
        for doc in stale:
            print(f"{doc.relative_to(ROOT)} differs from what docs/bench/ gives: python -m bench.report")
        return 1 if stale else 0
    for doc, text in rendered.items():
        doc.write_text(text)
    from bench.plots import write_plots

    plots = write_plots(report, REPORT.parent)
    print(f"from {REPORT.relative_to(ROOT)} (commit {report['environment'].get('git_commit')}): rewrote "
          f"{', '.join(str(d.relative_to(ROOT)) for d in stale) or 'nothing (docs up to date)'}; plots "
          f"{', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
