#!/usr/bin/env python
"""Measure the first use of a weight name: download, check, conversion and caching of a full-size
FishNet-150 official checkpoint, served on 127.0.0.1 (a file generated here, with the published
file's layout: a DataParallel state_dict, best_prec1 and SGD momentum for every parameter, in
torch's legacy format).

    python tools/measure_weight_fetch.py [--depth 150]

Prints a Markdown table: time and peak memory of a fresh process that resolves
``fishnet://ImageNet/fishnet<depth>_official`` through Detectron2's PathManager (download +
conversion), of one that only converts the same file already on disk, of one that creates the
timm model with ``pretrained=True`` from an empty cache (where timm is installed), and the sizes
on disk.
"""

import argparse
import functools
import http.server
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from importlib.util import find_spec
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh process: prints {"seconds", "baseline_rss_mb", "peak_rss_mb"} as JSON.
CHILD = r"""
import json, sys, time
import fishnet_d2
from detectron2.utils.file_io import PathManager
if sys.argv[1] == "timm":
    import timm
    import fishnet_d2.timm_models  # registers FishNet in timm
from fishnet_d2.weights.convert import convert_state_dict, load_state_dict, save_d2_checkpoint

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

baseline = status("VmRSS")
start = time.perf_counter()
if sys.argv[1] == "fetch":
    PathManager.get_local_path(sys.argv[2])
elif sys.argv[1] == "timm":
    timm.create_model(sys.argv[2], pretrained=True)
else:
    converted = convert_state_dict(load_state_dict(sys.argv[2]), layout="official")
    save_d2_checkpoint(converted.state_dict, sys.argv[3], "measure")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "baseline_rss_mb": baseline, "peak_rss_mb": status("VmHWM")}))
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def published_checkpoint(depth: int) -> dict:
    """Random weights in the official FishNet-<depth> layout, as the official code saved them."""
    from fishnet_d2.modeling import FISHNET_VARIANTS
    from fishnet_d2.weights.official_layout import official_layout

    state_dict, momentum = {}, {}
    for index, (key, (_, shape)) in enumerate(official_layout(FISHNET_VARIANTS[depth], 1000).items()):
        if key.endswith("num_batches_tracked"):
            state_dict[f"module.{key}"] = torch.zeros(shape, dtype=torch.long)
            continue
        state_dict[f"module.{key}"] = torch.randn(shape)
        if not key.endswith(("running_mean", "running_var")):
            momentum[index] = {"momentum_buffer": torch.randn(shape)}
    optimizer = {"state": momentum, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(momentum)}]}
    return {"state_dict": state_dict, "best_prec1": 78.14, "optimizer": optimizer}


def run_child(env: dict, *args: str) -> dict:
    command = [sys.executable, "-c", CHILD, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=150, choices=[99, 150])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        served = root / "mirror"
        served.mkdir()
        from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS

        weights = PUBLISHED_WEIGHTS[f"fishnet{args.depth}_official"]
        source = served / weights.file_name
        torch.save(published_checkpoint(args.depth), source, _use_new_zipfile_serialization=False)

        handler = functools.partial(QuietHandler, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "FISHNET_D2_MIRROR": f"http://127.0.0.1:{server.server_address[1]}",
            "FISHNET_D2_CACHE": str(root / "cache"),
        }
        fetched = run_child(env, "fetch", f"fishnet://ImageNet/{weights.name}")
        converted = run_child(env, "convert", str(source), str(root / "converted.pth"))
        # timm.create_model(..., pretrained=True) from another empty cache: the same first use, then
        # the model built and the weights loaded (fishnet_d2.timm_models).
        timm_env = {**env, "FISHNET_D2_CACHE": str(root / "timm_cache")}
        created = run_child(timm_env, "timm", f"fishnet{args.depth}") if find_spec("timm") else None
        created_again = run_child(timm_env, "timm", f"fishnet{args.depth}") if find_spec("timm") else None
        server.shutdown()
        entry = root / "cache" / "ImageNet" / f"{weights.name}.pth"
        mb = 2**20
        cpus = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        print(f"Machine: {cpus[0] if cpus else platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
              f"command: python tools/measure_weight_fetch.py --depth {args.depth}\n")
        print("| step | time | peak memory (process) | of which the step |")
        print("| --- | --- | --- | --- |")
        rows = [("first use: download from 127.0.0.1, check, convert, cache", fetched),
                ("conversion alone (file on disk)", converted)]
        if created is not None:
            rows.append((f"timm.create_model(\"fishnet{args.depth}\", pretrained=True), empty cache", created))
            rows.append(("the same, later (the cache entry)", created_again))
        for name, run in rows:
            print(f"| {name} | {run['seconds']:.1f} s | {run['peak_rss_mb']:.0f} MB | "
                  f"{run['peak_rss_mb'] - run['baseline_rss_mb']:.0f} MB |")
        print(f"\nPublished-layout file: {source.stat().st_size / mb:.1f} MB; ", end="")
        print(f"cache entry: {entry.stat().st_size / mb:.1f} MB.")


if __name__ == "__main__":
    main()
