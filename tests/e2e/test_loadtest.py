"""The load-test and benchmark commands against real `bentoml serve` processes (tiny model)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Server

pytestmark = pytest.mark.slow

ROUTES = {"/encode_image", "/encode_images", "/encode_text", "/similarity", "/analyze", "/analyze_batch", "/classify",
          "/v1/embeddings"}
USER_CLASSES = 8  # one per route: with equal weights, locust starts one user of each


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_locust_runs_every_route_headless_without_failures(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    cmd = [_bin("locust"), "-f", "locustfile.py", "--headless", "--host", server.url,
           "-u", str(USER_CLASSES), "-r", str(USER_CLASSES), "-t", "5s", "--stop-timeout", "30",
           "--csv", str(prefix), "--only-summary"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    with Path(f"{prefix}_stats.csv").open() as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert ROUTES <= set(rows), sorted(rows)
    total = rows["Aggregated"]
    assert int(total["Request Count"]) >= len(ROUTES)
    assert int(total["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()


def test_bench_quick_measures_every_section_and_draws_the_plots(tiny_tag: str, compiled_tiny: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """compiled_tiny: the bench finds the tiny model's compiles in the store instead of compiling it again."""
    out_file, plots = tmp_path / "bench.json", tmp_path / "plots"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--model-tag", tiny_tag,
           "--out", str(out_file), "--plots-dir", str(plots)]
    # The bench passes the shell's CLIP_* settings on to its servers: give it none, so (b) is the default.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500, env=env)
    assert out_file.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out_file.read_text())
    assert {"environment", "limit", "ours", "baseline", "unbatched", "ratios", "plots"} <= set(report)
    assert report["limit"]["best_images_per_s"] > 0 and report["limit"]["single_image_ms"] > 0
    assert report["limit"]["with_decode"]["images_per_s"] > 0  # (a'): decode + encode in process
    assert report["ratios"]["ours_vs_decode_limit"]["ratio"] is not None
    for key in ("ours", "baseline"):
        levels = report[key]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 16]
        assert all(lv["ok"] > 0 and lv["errors"] == 0 for lv in levels), levels
    # Memory: the supervisor and its one worker apart, idle and under load, and the tree's peak.
    rss = report["ours"]["rss"]
    assert rss["processes"] >= 2 and rss["samples"] > 10, rss
    assert all(rss["idle_mb"][part] > 0 and rss["load_peak_mb"][part] > 0 for part in ("supervisor", "workers"))
    assert rss["peak_tree_mb"] >= rss["load_peak_mb"]["tree"] >= rss["idle_mb"]["tree"] * 0.5
    assert "supervisor" in run.stdout and "tree peak" in run.stdout
    # Each answer's batch size is recorded (X-Batch-Size). Whether 16 clients share batches is not claimed here:
    # the tiny model encodes faster than JPEGs decode, so batches meet only by chance (tests/unit/test_batcher.py
    # and tests/e2e/test_overload.py show requests sharing batches).
    assert all(sum(lv["batch_sizes"].values()) == lv["ok"] for lv in report["ours"]["levels"]), report["ours"]
    assert report["ratios"]["ours_vs_baseline"]["concurrency"] == 16
    assert report["ratios"]["overhead_at_c1"]["overhead_ms"] is not None
    assert {Path(p).name for p in report["plots"]} == {"throughput.png", "latency.png", "batch_sizes.png"}
    assert all((plots / name).read_bytes().startswith(b"\x89PNG") for name in ("throughput.png", "latency.png"))
    assert "(b)/(a′) at saturation" in run.stdout
    # Every CPU goal is judged (the values of a tiny model mean nothing; that they are there does).
    from bench.run import GOALS

    assert len(report["goals"]) == sum("cpu" in goal.devices for goal in GOALS)
    # Every goal is judged, but 64 clients against 16 and SigLIP's: --quick runs only 1 and 16, and no SigLIP.
    assert all(goal["value"] is not None for goal in report["goals"]
               if "c=64" not in goal["goal"] and "SigLIP" not in goal["goal"]), report["goals"]
    assert "goals:" in run.stdout and report["decode"]["sizes"]["12MP"]["reference_range_ms"][0] > 0
    unbatched = report["unbatched"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(lv["ok"] > 0 and lv["batch_sizes"] == {"1": lv["ok"]} for lv in unbatched["levels"])
    assert report["ratios"]["ours_vs_unbatched"]["ratio"] is not None
    # The runtimes: torch and every compiled precision in process, and (b) serving a compiled entry.
    assert {"torch fp32", "openvino fp32", "openvino int8"} <= set(report["runtimes"]["rows"])
    assert report["ours"]["runtime"] == "openvino" and report["runtimes"]["demo"]["images"] > 0
    assert "siglip" not in report["runtimes"]  # a full run's part: --quick stays quick
    assert report["runtimes"]["ratios"]["fp32_ceiling_vs_torch_fp32"] > 0 and "fp32 ceiling:" in run.stdout
    # What ran is recorded: every series (e only where torch's default is not fp32, h only with
    # native bf16), the commit and the CPU.
    env = report["environment"]
    from clip_runner.hardware import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    served = f"openvino {report['ours']['precision']}"  # (a) measures what (b) serves
    assert report["limit"]["precision"] == report["environment"]["precision"] == served
    # The compiled series at (b)'s precision is (b)'s own server, not started twice.
    twins = [key for key, section in report.items() if isinstance(section, dict) and section.get("same_as") == "ours"]
    assert twins == [f"ours_openvino_{report['ours']['precision']}"]
    assert env["series"] == (["a", "b", "c", "d", "e", "f", "g", "h", "i"] if native_bf16 else
                             ["a", "b", "c", "d", "f", "g", "i"])
    for key in ("ours_torch", "ours_openvino_fp32", "ours_openvino_int8", *(("ours_fp32",) if native_bf16 else ())):
        assert all(lv["ok"] > 0 and lv["errors"] == 0 for lv in report[key]["levels"]), key
    assert report["ratios"]["ours_openvino_fp32_vs_baseline"]["ratio"] is not None
    assert env["levels"] == [1, 16] and env["git_commit"] and env["cpu_model"]


def test_bench_runs_a_subset_for_an_a_b_comparison(tiny_tag: str, compiled_tiny: dict[str, str],
                                                    tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--series", "b", "--levels", "2", "--model-tag", tiny_tag,
           "--out", str(out_file)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out_file.read_text())
    assert report["environment"]["series"] == ["b"] and report["environment"]["levels"] == [2]
    assert not {"limit", "decode", "baseline", "unbatched", "ours_fp32"} & set(report)
    assert [lv["concurrency"] for lv in report["ours"]["levels"]] == [2] and report["ours"]["rss"]["peak_tree_mb"] > 0
    compared = subprocess.run([sys.executable, "-m", "bench.report", "--compare", str(out_file), str(out_file)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert compared.returncode == 0 and "1.00" in compared.stdout, compared.stderr
