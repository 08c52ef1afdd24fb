"""The load-test payloads and users, the transformers baseline's set-up, and bench.run's arithmetic."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import PHOTO_SIZES, photo_jpeg
from bench.memory import TreeRss, read_tree, summarise_rss
from bench.run import (
    SERIES,
    Options,
    Sample,
    Window,
    _levels,
    compare_level,
    goals,
    options,
    parse_args,
    percentile,
    ratios,
    render,
    summarise,
    targets,
)
from bench.run import _series as _series_option
from tests.conftest import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_ROUTES = {"encode_image", "encode_images", "encode_text", "similarity", "analyze", "analyze_batch", "classify",
                 "v1_embeddings"}

# Importing locust monkey-patches the standard library with gevent, which must not happen inside
# the test process (asyncio and threads are used by other tests): inspect it in a child process.
LOCUSTFILE_PROBE = """
import io, json, sys
from pathlib import Path
from PIL import Image
import locustfile

def describe(photos):
    out = []
    for p in photos:
        with Image.open(io.BytesIO(p.data)) as im:
            im.load()
            out.append({"name": p.name, "format": im.format, "size": list(im.size), "bytes": len(p.data),
                        "pixels": p.pixels})
    return out

data = locustfile.payloads()
users = {u.__name__: {"tasks": len(u.tasks), "tags": sorted(set().union(*(getattr(t, "locust_tag_set", set())
                                                                          for t in u.tasks)))}
         for u in locustfile.USER_CLASSES}
folder, _ = locustfile._folder_photos(Path(sys.argv[1]))
print(json.dumps({"photos": describe(data.photos), "weights": data.weights,
                  "small": [p.name for p in data.small_photos], "users": users,
                  "folder": describe(folder), "auth": locustfile.auth_headers()}))
"""


@pytest.fixture(scope="module")
def locustfile_facts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("images")
    (folder / "a.jpg").write_bytes(photo_jpeg(1, (320, 240)))
    (folder / "notes.txt").write_text("not an image")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTEST_")}
    env.update(CLIP_API_KEY="k3y", LOADTEST_SEED="3")
    out = subprocess.run([sys.executable, "-c", LOCUSTFILE_PROBE, str(folder)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_generated_payloads_are_jpegs_of_the_promised_sizes(locustfile_facts: dict) -> None:
    photos = locustfile_facts["photos"]
    assert {tuple(p["size"]) for p in photos} == set(PHOTO_SIZES.values())
    for photo in photos:
        assert photo["format"] == "JPEG"
        assert photo["pixels"] == photo["size"][0] * photo["size"][1]
        # Photo-like: neither a flat image (tiny) nor noise (larger than the pixels).
        assert 0.05 < photo["bytes"] / photo["pixels"] < 1.0, photo
    assert sum(locustfile_facts["weights"]) == pytest.approx(1.0)
    assert all(not name.startswith("12MP") for name in locustfile_facts["small"])


def test_every_user_class_has_a_task_tagged_with_its_scenario_and_route(locustfile_facts: dict) -> None:
    users = locustfile_facts["users"]
    assert len(users) == len(PUBLIC_ROUTES)
    routes = set()
    for name, user in users.items():
        assert user["tasks"] >= 1, name
        scenario = set(user["tags"]) & {"image", "text", "mixed", "openai"}
        assert len(scenario) == 1, (name, user["tags"])
        routes |= set(user["tags"]) & PUBLIC_ROUTES
    assert routes == PUBLIC_ROUTES


def test_an_image_folder_replaces_the_generated_photos_and_the_api_key_is_sent(locustfile_facts: dict) -> None:
    assert [p["name"] for p in locustfile_facts["folder"]] == ["a.jpg"]
    assert locustfile_facts["auth"] == {"Authorization": "Bearer k3y"}


def test_photo_jpeg_is_seeded() -> None:
    assert photo_jpeg(5, (64, 48)) == photo_jpeg(5, (64, 48)) != photo_jpeg(6, (64, 48))


# ---- the transformers baseline ---------------------------------------------------------------

def test_baseline_config_is_vit_b_32_by_default() -> None:
    from bench.baseline_service import architecture, hf_clip_config

    model_cfg, size = architecture(None)
    cfg = hf_clip_config(model_cfg)
    vision, text = cfg.vision_config, cfg.text_config
    assert size == 224 and cfg.projection_dim == 512
    assert (vision.patch_size, vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        32, 768, 12, 12)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)


def test_baseline_model_has_exactly_the_open_clip_parameter_count() -> None:
    from transformers import CLIPModel

    from bench.baseline_service import hf_clip_config
    from clip_runner.store.weights import build_from_config

    model_cfg = json.loads(TINY_CONFIG.read_text())
    ours, _ = build_from_config(model_cfg, {"size": model_cfg["vision_cfg"]["image_size"]})
    theirs = CLIPModel(hf_clip_config(model_cfg))
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())


def test_baseline_processor_tokenizes_like_open_clip_and_crops_to_the_model_size() -> None:
    import numpy as np
    import open_clip
    from PIL import Image

    from bench.baseline_service import build_processor

    processor = build_processor(64)
    texts = ["a photo of a red leather handbag!", "Men's NAVY blue sneakers, size 42", "café"]
    hf = processor.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    reference = open_clip.tokenize(texts)
    mask = hf["attention_mask"].bool()
    assert (hf["input_ids"][mask] == reference[mask]).all()  # padding differs: eot vs 0
    image = Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8))
    assert tuple(processor(images=[image, image], return_tensors="pt")["pixel_values"].shape) == (2, 3, 64, 64)


# ---- bench.run arithmetic -----------------------------------------------------------------------

def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.95) == 95 and percentile(values, 0.99) == 99
    assert percentile([3.0], 0.99) == 3.0 and percentile([], 0.5) is None


def test_summarise_counts_only_successes_as_throughput_and_histograms_batch_sizes() -> None:
    samples = [Sample(1.0, 0.1, 200, 4), Sample(1.1, 0.2, 200, 4), Sample(1.2, 0.3, 200, 1),
               Sample(1.3, 0.0, 503, None)]
    level = summarise(samples, window_s=2.0, concurrency=8)
    assert level["images_per_s"] == 1.5 and level["ok"] == 3 and level["errors"] == 1
    assert level["by_status"] == {"200": 3, "503": 1}
    assert level["batch_sizes"] == {"1": 1, "4": 2} and level["mean_batch_size"] == 3.0
    assert level["p50_ms"] == 200.0


def test_a_request_budget_ends_the_window_at_its_last_request() -> None:
    window = Window(start=10.0, stop=100.0, budget=2)
    for end in (5.0, 11.0, 12.0, 13.0):  # the first finished during warm-up
        window.record(Sample(end, 0.1, 200, 1))
    assert window.stop == 12.0 and not window.contains(Sample(13.0, 0.1, 200, 1))


def test_levels_option_is_parsed_sorted_and_positive() -> None:
    assert _levels("16,1,4,4") == (1, 4, 16)
    with pytest.raises(argparse.ArgumentTypeError):
        _levels("0,4")


def _series(title: str, points: dict[int, float], p50: float = 40.0) -> dict:
    return {"title": title, "ready_s": 5.0,
            "rss": {"sample_every_s": 0.1, "samples": 50, "processes": 2,
                    "idle_mb": {"supervisor": 150.0, "workers": 700.0, "tree": 850.0},
                    "load_peak_mb": {"supervisor": 151.0, "workers": 900.0, "tree": 1051.0}, "peak_tree_mb": 1100.0},
            "levels": [{"concurrency": c, "images_per_s": v, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "ok": 10,
                        "errors": 0, "mean_batch_size": 1.0, "batch_sizes": {"1": 10}} for c, v in points.items()]}


def _options(**changes) -> Options:
    opts = Options(levels=(1, 16), duration_s=1, warmup_s=0, requests=None, limit_batch_sizes=(1,), limit_s=0.1,
                   device="cpu", series=tuple(SERIES), photos_per_size=1)
    return dataclasses.replace(opts, **changes)


def test_ratios_compare_at_saturation_at_16_and_against_the_model_latency() -> None:
    report = {
        "limit": {"best_images_per_s": 50.0, "best_batch_size": 32, "single_image_ms": 30.0},
        "ours": _series("ours", {1: 20.0, 16: 40.0, 64: 45.0}),
        "baseline": _series("baseline", {1: 20.0, 16: 20.0}),
        "unbatched": {"title": "unbatched", "error": "did not start"},
    }
    out = ratios(report)
    assert out["ours_vs_limit"]["ratio"] == 0.9 and out["ours_vs_limit"]["ours_concurrency"] == 64
    assert out["ours_vs_baseline"]["concurrency"] == 16 and out["ours_vs_baseline"]["ratio"] == 2.0
    assert out["ours_vs_baseline"]["per_concurrency"] == {"1": 1.0, "16": 2.0}
    assert out["ours_vs_unbatched"] is None
    assert out["overhead_at_c1"]["overhead_ms"] == 10.0
    assert out["ours_64_vs_16"] == round(45.0 / 40.0, 3)  # more clients must not mean fewer images/s
    report["ratios"] = out
    text = render(report)
    assert "(b)/(c) at c=16: 2.00" in text and "not measured: did not start" in text
    assert "(e)/(c)" not in text  # no fp32 series was run


def test_goals_are_judged_per_device_and_printed() -> None:
    report = {
        "environment": {"device": "cpu"},
        "limit": {"best_images_per_s": 50.0, "best_batch_size": 32, "single_image_ms": 30.0,
                  "with_decode": {"images_per_s": 48.0, "batch_size": 16, "decode_threads": 4}},
        "ours": _series("ours", {1: 20.0, 16: 40.0, 64: 44.0}, p50=38.0),
        "baseline": _series("baseline", {1: 20.0, 16: 20.0}),
        "decode": {"sizes": {"12MP": {"speedup": 4.5, "cosine": 0.995}}},
    }
    report["ratios"] = ratios(report)
    report["goals"] = goals(report)
    verdicts = {g["goal"]: (g["value"], g["met"]) for g in report["goals"]}
    measured = {goal: verdict for goal, verdict in verdicts.items() if verdict != (None, None)}
    assert measured == {"(b)/(a′) at saturation": (round(44.0 / 48.0, 3), True),
                        "(b) images/s at c=64 / at c=16": (1.1, True), "(b)/(c) at c=16": (2.0, True),
                        "p50 at c=1 minus model latency (ms)": (8.0, True),
                        "12 MP decode+preprocess speed-up": (4.5, False),
                        "12 MP embedding cosine vs reference": (0.995, True),
                        "(b) peak RSS of the process tree (GB)": (1.1, True)}
    assert "int8 / torch fp32, in process" in verdicts  # the runtime goals: not measured in this report
    assert report["ratios"]["ours_vs_decode_limit"]["ratio"] == round(44.0 / 48.0, 3)
    text = render(report)
    assert "(b)/(a′) at saturation" in text and "NOT met" in text and ">= 1.3" in text and "<= 1.5" in text
    assert "(b)/(a) at saturation: 0.88" in text  # still shown, no longer a goal
    assert "(a') decode + encode in process" in text and "(b)/(a') at saturation: 0.92" in text
    # the memory table: supervisor and workers idle, their peaks under load, the tree's peak
    assert re.search(r"\n  ours +150\.0 +700\.0 +151\.0 +900\.0 +1051\.0 +1100\.0  \(ready in 5\.0 s\)", text)
    # On a GPU the CPU ratios are not goals; end-to-end images/s is, and it is missing here.
    report["environment"]["device"] = "cuda"
    report["ours"] = {"title": "ours", "error": "did not start"}
    cuda = {g["goal"]: g["met"] for g in goals(report)}
    assert cuda == {"12 MP decode+preprocess speed-up": False, "12 MP embedding cosine vs reference": True,
                    "(b) JPEG images/s end to end": None, "(b) images/s at c=64 / at c=16": True}


def test_fp32_series_is_compared_with_the_baseline_like_for_like() -> None:
    report = {
        "limit": {"best_images_per_s": 50.0, "best_batch_size": 8, "single_image_ms": 30.0, "precision": "bf16"},
        "ours": _series("ours", {1: 20.0, 16: 40.0}),
        "baseline": _series("baseline", {1: 10.0, 16: 12.0}),
        "unbatched": _series("unbatched", {1: 20.0, 16: 22.0}),
        "ours_fp32": _series("ours fp32", {1: 10.0, 16: 15.0}),
    }
    report["ratios"] = ratios(report)
    assert report["ratios"]["ours_fp32_vs_baseline"]["ratio"] == 1.25
    text = render(report)
    assert "(e)/(c) at c=16: 1.25" in text and "(e) ours fp32" in text and "bf16)" in text


def _runtimes() -> dict:
    from bench.runtimes import ratios as runtime_ratios

    parity = {"image_mean": 0.9995, "image_min": 0.998, "text_mean": 0.9992, "text_min": 0.997}
    exact = {"image_mean": 1.0, "image_min": 0.99999, "text_mean": 1.0, "text_min": 0.99998}
    evaluation = {"zero_shot_top1": 0.98, "mismatch_f1": 0.98}
    runtimes = {"batch_size": 16, "threads": 2, "rounds": 3, "fp32_ceiling": {"image_gflop": 8.0, "gflop_per_s": 400.0},
                "rows": {
        "torch fp32": {"images_per_s": 20.0, "texts_per_s": 25.0},
        "torch bf16": {"images_per_s": 70.0, "texts_per_s": 16.0},
        "openvino fp32": {"images_per_s": 40.0, "texts_per_s": 60.0, "parity": exact},
        "openvino int8": {"images_per_s": 140.0, "texts_per_s": 160.0, "parity": parity}},
        "demo": {"images": 1000, "torch_fp32": evaluation, "openvino_int8": {"zero_shot_top1": 0.975,
                                                                             "mismatch_f1": 0.95},
                 "top1_drop_points": 0.5, "f1_drop_points": 3.0},
        "siglip": {"arch": "ViT-B-16-SigLIP", "tag": "s:1", "rows": {
            "torch fp32": {"images_per_s": 10.0, "texts_per_s": 12.0},
            "openvino int8": {"images_per_s": 30.0, "texts_per_s": 40.0, "parity": {
                "image_mean": 0.995, "image_min": 0.99, "text_mean": 0.985, "text_min": 0.98}}}}}
    runtimes["ratios"] = runtime_ratios(runtimes)
    return runtimes


def test_runtime_goals_are_judged_from_the_runtimes_and_compiled_servers() -> None:
    report = {"environment": {"device": "cpu", "arch": "ViT-B-32"}, "runtimes": _runtimes(),
              "ours": {**_series("ours", {1: 40.0, 16: 60.0}), "runtime": "openvino", "precision": "int8"},
              "baseline": _series("baseline", {1: 5.0, 16: 10.0}),
              "ours_openvino_fp32": _series("ours, openvino fp32", {1: 15.0, 16: 20.0})}
    report["ratios"] = ratios(report)
    report["goals"] = goals(report)
    verdicts = {g["goal"]: (g["value"], g["met"]) for g in report["goals"]}
    assert verdicts["compiled fp32 / torch fp32, in process"] == (2.0, True)
    assert verdicts["best compiled / torch best, in process"] == (2.0, True)
    assert verdicts["int8 / torch fp32, in process"] == (7.0, True)
    assert verdicts["(g)/(c) at c=16, both fp32"] == (2.0, True)
    assert verdicts["int8 cosine to fp32, worst tower (mean)"] == (0.9992, True)
    assert verdicts["demo int8 mismatch F1 drop (points)"] == (3.0, False)
    assert verdicts["compiled fp32 cosine to torch, worst row"] == (0.99998, True)
    assert verdicts["SigLIP int8 cosine to fp32, worst tower (mean)"] == (0.985, False)  # SigLIP's own bar
    assert verdicts["(b) peak RSS, compiled model (GB)"] == (1.1, True)
    text = render(report)
    assert "openvino int8       140.0 img/s" in text and "(g)/(c) at c=16: 2.00" in text
    # One table with a model column: the bench's model, then SigLIP, each row with both towers' cosines.
    assert "ViT-B-16-SigLIP   openvino int8        30.0 img/s     40.0 texts/s  cosine to torch fp32: images " \
           "0.99500, texts 0.98500 (worst row 0.98000)" in text
    from bench.report import runtimes_block

    block = runtimes_block(report)
    assert "| ViT-B-32 | openvino | int8 | 140.0 | 160.0 | 7.00× | 0.99950 / 0.99920 (0.99700) |" in block
    assert "| ViT-B-16-SigLIP | openvino | int8 | 30.0 | 40.0 | 3.00× | 0.99500 / 0.98500 (0.98000) |" in block
    assert block.index("| ViT-B-32 | openvino | int8") < block.index("| ViT-B-16-SigLIP | torch") and "97.50%" in block
    assert "the same pixels and texts for every row, the rows taking turns (3 windows each)." in block
    # The fp32 ceiling: torch fp32 uses 20 × 8 of 400 GFLOP/s, so compiling could gain 2.5× at most.
    assert report["runtimes"]["ratios"]["fp32_ceiling_vs_torch_fp32"] == 2.5
    ceiling = ("ViT-B-32: fp32 ceiling: 8.00 GFLOP an image; this CPU's fp32 matrix product peaks at 400 GFLOP/s, "
               "of which torch fp32 40% and openvino fp32 80% use; so compiling can make fp32 at most 2.50× torch "
               "fp32 here")
    assert block.endswith(f" {ceiling}.") and f"  {ceiling}\n" in text  # the docs and the console
    from bench.run import fp32_ceiling

    noisy = {"rows": {"torch fp32": {"images_per_s": 20.0}}, "fp32_ceiling": {"image_gflop": 8.0, "gflop_per_s": 100.0}}
    assert fp32_ceiling(noisy).endswith("torch fp32 160% use; so the peak was not reached: it says nothing of what "
                                        "compiling can gain here")  # no "at most 0.62×"


def test_the_runtime_rows_take_turns_so_drift_falls_on_all_alike(monkeypatch) -> None:
    from bench import runtimes
    from bench.runtimes import ROUNDS, _encoder_slots, _throughputs

    calls: list[str] = []

    class Timed:  # an encoder whose calls are recorded, in the order the timing makes them
        entry = dataclasses.make_dataclass("Entry", [("input_size", tuple)])((8, 8))

        def __init__(self, name: str) -> None:
            self.encode_pixels = lambda pixels: calls.append(f"{name} images")
            self.encode_texts = lambda texts: calls.append(f"{name} texts")

    def timed(call, seconds: float, min_calls: int) -> list[float]:  # every call takes 0.4, 0.5 and 0.6 s
        call()
        return [0.4, 0.5, 0.6]

    monkeypatch.setattr(runtimes, "time_calls", timed)
    peak = {("peak", "gflop_per_s"): (lambda: calls.append("peak"), 17.0)}  # not an encoder: 17 GFLOP a call
    rows = _throughputs({**_encoder_slots({"a": Timed("a"), "b": Timed("b")}, batch=4), **peak}, seconds=0.0)
    # Each rate is the slot's work over its median call: 4 items or 17 GFLOP in 0.5 s.
    assert rows == {"a": {"images_per_s": 8.0, "texts_per_s": 8.0}, "b": {"images_per_s": 8.0, "texts_per_s": 8.0},
                    "peak": {"gflop_per_s": 34.0}}
    turn = ["a images", "a texts", "b images", "b texts", "peak"]
    assert calls == turn * (1 + ROUNDS)  # a warm-up, then one window each per round, in turn


def test_the_fp32_ceiling_counts_the_image_towers_flops_and_times_an_openvino_matmul(tiny_tag: str) -> None:
    import numpy as np
    import torch

    from bench.runtimes import PEAK_N, image_gflop, matmul_peak
    from clip_runner.store.weights import load_entry

    # The tiny ViT from its config: 16 patches + 1 class token, width 64, MLP 256, 2 layers, 32-d projection.
    vision = json.loads(TINY_CONFIG.read_text())["vision_cfg"]
    tokens, width = (vision["image_size"] // vision["patch_size"]) ** 2 + 1, vision["width"]
    dense = 2 * tokens * (4 * width * width + 2 * width * 4 * width) * vision["layers"]
    patches = 2 * (tokens - 1) * 3 * vision["patch_size"] ** 2 * width
    loaded = load_entry(tiny_tag, torch.device("cpu"))
    # Attention's score products (QKᵀ, AV) are left out: torch's fused CPU attention kernel hides them from the counter.
    assert image_gflop(loaded.model, loaded.entry.input_size) * 1e9 == dense + patches + 2 * width * 32
    assert torch.backends.mha.get_fastpath_enabled()  # the fused attention is back on for serving
    call, gflop = matmul_peak(threads=1)
    assert gflop == 2 * PEAK_N**3 / 1e9 and np.asarray(call()[0]).shape == (PEAK_N, PEAK_N)


def test_a_subset_of_series_is_reported_without_the_others() -> None:
    report = {"environment": {"device": "cpu"}, "ours": _series("ours", {1: 20.0, 64: 40.0})}
    report["ratios"] = ratios(report)
    report["goals"] = goals(report)
    assert report["ratios"] == {}
    measured = {g["goal"]: g["value"] for g in report["goals"] if g["value"] is not None}
    assert measured == {"(b) peak RSS of the process tree (GB)": 1.1}
    text = render(report)
    assert "(b) ours" in text and "(a) in-process limit" not in text and "(no ratios:" in text


def test_series_option_picks_servers_by_letter() -> None:
    assert _series_option("b") == ("b",) and _series_option("D, b,a") == ("a", "b", "d")
    with pytest.raises(argparse.ArgumentTypeError):
        _series_option("b,z")
    args = parse_args(["--series", "b,c", "--levels", "64,1,16"])
    opts = options(args)
    assert opts.series == ("b", "c") and opts.levels == (1, 16, 64)
    assert [t.key for t in targets("m:1", opts)] == ["ours", "baseline"]
    assert [t.key for t in targets("m:1", _options())] == [
        "ours", "baseline", "unbatched", "ours_fp32", "ours_torch", "ours_openvino_fp32", "ours_openvino_bf16",
        "ours_openvino_int8"]
    fp32 = targets("m:1", _options(series=("e",)))[0]
    assert fp32.key == "ours_fp32" and (fp32.env["CLIP_RUNTIME"], fp32.env["CLIP_PRECISION"]) == ("torch", "fp32")
    int8 = targets("m:1", _options(series=("i",)))[0]
    assert (int8.env["CLIP_RUNTIME"], int8.env["CLIP_PRECISION"]) == ("openvino", "int8")


def test_servers_share_the_model_and_limits_and_set_no_removed_setting(monkeypatch) -> None:
    from clip_runner.settings import get_settings

    monkeypatch.setenv("CLIP_BATCH_SIZE", "12")
    get_settings.cache_clear()
    try:
        servers = targets("m:1", _options(levels=(1, 200)))
    finally:
        monkeypatch.delenv("CLIP_BATCH_SIZE")
        get_settings.cache_clear()
    for target in servers:
        assert target.env["CLIP_MODEL_TAG"] == "m:1" and target.env["CLIP_MAX_CONCURRENCY"] == "200"
        assert target.env["CLIP_BATCH_SIZE"] == ("1" if target.key == "unbatched" else "12")
        assert set(target.env) <= {"CLIP_MODEL_TAG", "CLIP_DEVICE", "CLIP_STRICT_MODEL", "CLIP_BATCH_SIZE",
                                   "CLIP_MAX_CONCURRENCY", "CLIP_PRECISION", "CLIP_WORKERS", "CLIP_RUNTIME"}


def test_compare_level_falls_back_to_the_closest_common_level() -> None:
    assert compare_level(_series("a", {1: 1, 4: 1, 32: 1}), _series("b", {1: 1, 32: 1}), 16) == 32
    assert compare_level(_series("a", {1: 1}), _series("b", {2: 1}), 16) is None


def test_plots_are_written_for_the_measured_sections(tmp_path: Path) -> None:
    from bench.plots import write_plots

    report = {
        "environment": {"arch": "ViT-B-32", "device": "cpu", "cpus": 2},
        "limit": {"best_images_per_s": 50.0, "best_batch_size": 32, "single_image_ms": 30.0},
        "ours": _series("ours", {1: 20.0, 16: 40.0}),
        "unbatched": _series("unbatched", {1: 20.0, 16: 22.0}),
    }
    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["throughput.png", "latency.png", "batch_sizes.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    del report["limit"]  # --series without a
    assert len(write_plots(report, tmp_path / "subset")) == 3


def test_on_cuda_our_service_runs_the_workers_a_gpu_machine_needs(monkeypatch) -> None:
    from bench import run
    from clip_runner import settings as device

    monkeypatch.delenv("CLIP_WORKERS", raising=False)
    monkeypatch.setattr(device, "available_cpus", lambda: 16)
    assert run.gpu_workers("cuda") == {"CLIP_WORKERS": "8"}
    assert run.gpu_workers("cpu") == {}  # on CPU, one worker holding every core measured best
    monkeypatch.setattr(device, "available_cpus", lambda: 1)
    assert run.gpu_workers("cuda") == {"CLIP_WORKERS": "1"}
    monkeypatch.setenv("CLIP_WORKERS", "3")  # the operator's choice wins
    assert run.gpu_workers("cuda") == {}


# ---- memory -------------------------------------------------------------------------------------

def test_rss_is_read_for_the_supervisor_and_its_children_apart() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(80_000_000); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        # the reading that counts the child's 80 MB: it has started and touched its buffer
        deadline = time.monotonic() + 60
        reading = read_tree(os.getpid())
        while reading.workers_mb < 80 and time.monotonic() < deadline:
            reading = read_tree(os.getpid())
        assert reading.workers_mb >= 80 and reading.processes >= 2
        assert reading.supervisor_mb > 0 and reading.tree_mb == reading.supervisor_mb + reading.workers_mb
    finally:
        child.communicate(b"", timeout=30)
    assert read_tree(child.pid) is None  # gone


def test_rss_summary_keeps_idle_load_and_whole_run_apart() -> None:
    def at(t: float, supervisor: float, workers: float) -> TreeRss:
        return TreeRss(t, supervisor, workers, 2)

    start, idle, load, stop = [at(0, 100, 1500)], [at(1, 100, 600), at(2, 100, 610), at(3, 100, 620)], \
        [at(4, 140, 800), at(5, 100, 900)], [at(6, 100, 500)]
    rss = summarise_rss(start + idle + load + stop, idle, load)
    assert rss["idle_mb"] == {"supervisor": 100, "workers": 610, "tree": 710}  # medians
    assert rss["load_peak_mb"] == {"supervisor": 140, "workers": 900, "tree": 1000}  # each part's own peak
    assert rss["peak_tree_mb"] == 1600 and rss["samples"] == 7 and rss["processes"] == 2
    assert summarise_rss([], [], [])["idle_mb"]["tree"] is None


# ---- the docs' figures --------------------------------------------------------------------------

def test_the_docs_figures_are_what_the_committed_report_gives() -> None:
    from bench.report import BLOCKS, DOCS, REPORT, rendered_docs

    report = json.loads(REPORT.read_text())
    used: set[str] = set()
    for doc, text in rendered_docs(report).items():
        assert doc.read_text() == text, f"{doc.name} is out of date: run python -m bench.report"
        used |= set(re.findall(r"<!-- bench:table:([a-z_]+) -->", text))
    assert used == set(BLOCKS), "every table the report makes is quoted somewhere"
    commit = report["environment"]["git_commit"]
    assert commit and all(commit in doc.read_text() for doc in DOCS)


def test_the_avx2_figures_are_what_its_committed_run_gives() -> None:
    report = json.loads((ROOT / "docs" / "bench" / "bench-avx2.json").read_text())
    rows, ratio = report["runtimes"]["rows"], report["runtimes"]["ratios"]
    text = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    assert (f"| {rows['torch fp32']['images_per_s']:.1f} | {rows['openvino fp32']['images_per_s']:.1f} "
            f"({ratio['openvino_fp32_vs_torch_fp32']:.2f}×) | {rows['openvino int8']['images_per_s']:.1f} "
            f"({ratio['int8_vs_torch_fp32']:.2f}×) | fp32 | [`docs/bench/bench-avx2.json`]") in text
    assert f"no fp32 compile could run more than {ratio['fp32_ceiling_vs_torch_fp32']:.2f}× torch fp32" in text


def test_the_deployment_figures_are_what_the_committed_container_report_gives() -> None:
    from bench.report import CONTAINER_BLOCKS, CONTAINER_DOCS, CONTAINER_REPORT, rendered_docs

    report = json.loads(CONTAINER_REPORT.read_text())
    for doc, text in rendered_docs(report, CONTAINER_DOCS, CONTAINER_REPORT).items():
        assert doc.read_text() == text, f"{doc.name} is out of date: run python -m bench.report"
        assert set(re.findall(r"<!-- bench:table:([a-z_]+) -->", text)) == set(CONTAINER_BLOCKS)
        assert report["environment"]["git_commit"] in text


def test_a_stale_table_is_regenerated_between_its_markers_only(tmp_path: Path) -> None:
    from bench.report import REPORT, render_doc

    report = json.loads(REPORT.read_text())
    doc = ("intro 1.23 img/s\n<!-- bench:table:goals -->\n| old | figures |\n<!-- /bench:table:goals -->\n"
           "outro\n")
    text = render_doc(doc, report, "bench.json")
    assert text.startswith("intro 1.23 img/s\n<!-- bench:table:goals -->\n| goal |") and text.endswith(
        "<!-- /bench:table:goals -->\noutro\n")
    assert "old" not in text and report["environment"]["git_commit"] in text
    assert render_doc(text, report, "bench.json") == text
    with pytest.raises(ValueError, match="unknown bench block"):
        render_doc("<!-- bench:table:nope -->\n<!-- /bench:table:nope -->", report, "bench.json")


def test_every_table_renders_for_partial_reports() -> None:
    from bench.report import BLOCKS

    subset = {"environment": {"device": "cpu", "series": ["b"], "levels": [1, 16], "warmup_s": 0, "duration_s": 1},
              "ours": _series("ours", {1: 20.0, 16: 40.0})}
    starved = {**subset, "baseline": _series("baseline", {1: 10.0, 16: 0.0}),
               "unbatched": {"title": "unbatched", "error": "did not start\n(log)"}}
    starved["baseline"]["levels"][1].update(ok=0, p50_ms=None)  # no request finished in the window
    for report in (subset, starved):
        report["ratios"], report["goals"] = ratios(report), goals(report)
        tables = {name: make(report) for name, make in BLOCKS.items()}
        assert "20.00 (40)" in tables["throughput"] and "1.10 GB" in tables["headline"]
    assert "the transformers baseline" not in tables["headline"]  # no ratio at 16 clients: no claim
    assert "not measured: did not start" in tables["results"] and "| — (2.00 at 1;" in tables["ratios"]


def test_two_runs_are_compared_side_by_side() -> None:
    from bench.report import compare

    before = {"environment": {"git_commit": "aaa", "device": "cpu"}, "ours": _series("ours", {1: 20.0, 16: 40.0})}
    after = {"environment": {"git_commit": "bbb", "device": "cpu"}, "ours": _series("ours", {16: 44.0, 64: 50.0})}
    text = compare(before, after)
    assert "before: commit aaa, after: commit bbb" in text and "tree peak before" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("(b) ours")]
    # only c=16 ran in both; then the memory row: supervisor, workers idle and the tree's peak, before and after
    assert rows == [["(b)", "ours", "16", "40.00", "44.00", "1.10", "40.0", "40.0"],
                    ["(b)", "ours", "150.0", "150.0", "700.0", "700.0", "1100.0", "1100.0"]]
