"""``fishnet://ImageNet/<name>``: the published ImageNet weights fetched, checked, converted and
cached on first use, against a mirror on 127.0.0.1 (no internet at test time) that serves the
published files, generated (conftest.py's ``published_mirror``, tests/weights_mirror.py). The
published pytorchcv file is checked by the SHA-1 its name carries, so the generated one, with
other bytes, is served under its own hash through an entry the test makes
(``dataclasses.replace`` of the published one); under the published name it must be refused.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.utils.file_io import PathManager

from fishnet_d2 import model_zoo
from fishnet_d2.weights.download import (
    CACHE_ENV,
    MIRROR_ENV,
    UnpublishedWeightsError,
    WeightsUnavailableError,
    fetch_weights,
)
from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS, SCHEME, UNPUBLISHED_WEIGHTS

from .support import REPO, run_converter
from .weights_mirror import pytorchcv_state_dict

PAPER_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml"
STANDARD_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_1x.yaml"
OFFICIAL_150 = PUBLISHED_WEIGHTS["fishnet150_official"]
PYTORCHCV_150 = PUBLISHED_WEIGHTS["fishnet150_pytorchcv"]
# A child process that resolves a name as Detectron2's checkpointer does.
RESOLVE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); import fishnet_d2; "
    "from detectron2.utils.file_io import PathManager; print(PathManager.get_local_path(sys.argv[1]))"
)


def cache_files(cache: Path) -> List[str]:
    """What a cache holds, lock files aside."""
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def child_env(**extra: str) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- first use, later uses ----


@pytest.mark.slow
def test_first_use_fetches_converts_and_caches_then_uses_the_cache(published_mirror, published, tmp_path, monkeypatch):
    path = PathManager.get_local_path(SCHEME + "fishnet150_official")
    assert published_mirror.requests == ["fishnet150_ckpt.tar"]
    assert Path(path) == tmp_path / "cache" / "ImageNet" / "fishnet150_official.pth"
    assert cache_files(tmp_path / "cache") == ["fishnet150_official.pth"]

    cached = torch.load(path, weights_only=True)
    served = torch.load(published["fishnet150_ckpt.tar"], weights_only=True)["state_dict"]
    assert cached["matching_heuristics"] is True and cached["fishnet_d2_format"] == 2
    sha256 = hashlib.sha256(published["fishnet150_ckpt.tar"].read_bytes()).hexdigest()
    assert sha256 in cached["__author__"]
    # The served 905 tensors: the network's 744 under "model", the classifier's 11 apart, and
    # the 150 BatchNorm counters in neither.
    model, classifier = cached["model"], cached["imagenet_classifier"]
    assert (len(model), len(classifier), len(served)) == (744, 11, 905)
    for ours, official in [("stem.conv1.conv.weight", "conv1.0.weight"), ("bridge.attention.excite.bias", "fish.fish.3.3.0.5.bias")]:
        assert torch.equal(model[ours], served[f"module.{official}"])
    assert torch.equal(classifier["classifier.fc.weight"], served["module.fish.fish.9.4.1.weight"])
    counters = [t.numel() for k, t in served.items() if k.endswith("num_batches_tracked")]
    assert len(counters) == 150
    kept = sorted(t.numel() for t in [*model.values(), *classifier.values()])
    assert kept == sorted(t.numel() for k, t in served.items() if not k.endswith("num_batches_tracked"))

    # Later uses: the cached file, without a request, even with no server at all.
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{closed_port()}")
    assert PathManager.get_local_path(SCHEME + "fishnet150_official") == path
    with PathManager.open(SCHEME + "fishnet150_official", "rb") as f:
        assert f.read(2) == Path(path).read_bytes()[:2]
    assert published_mirror.requests == ["fishnet150_ckpt.tar"]
    # force=True: fetched again, over the entry.
    monkeypatch.setenv(MIRROR_ENV, published_mirror.url)
    assert PathManager.get_local_path(SCHEME + "fishnet150_official", force=True) == path
    assert published_mirror.requests == ["fishnet150_ckpt.tar"] * 2
    assert cache_files(tmp_path / "cache") == ["fishnet150_official.pth"]


@pytest.mark.slow
def test_a_killed_fetch_leaves_files_the_next_one_removes(published_mirror, tmp_path):
    entries = tmp_path / "cache" / "ImageNet"
    entries.mkdir(parents=True)
    for leftover in (".fishnet99_official.abc123.download", ".fishnet99_official.pth.xyz.tmp"):
        (entries / leftover).write_bytes(b"partial")
    (entries / ".fishnet99_official_other.1.download").write_bytes(b"another name's")
    PathManager.get_local_path(SCHEME + "fishnet99_official")
    assert cache_files(tmp_path / "cache") == [".fishnet99_official_other.1.download", "fishnet99_official.pth"]


@pytest.mark.slow
def test_pytorchcv_zip_is_unpacked_and_checked_by_its_sha1(published_mirror, published, tmp_path):
    archive = published["own_pytorchcv"]
    sha1 = archive.name.split("-")[2][:8]
    entry = dataclasses.replace(PYTORCHCV_150, url=f"https://github.com/osmr/imgclsmob/releases/download/v0.0.502/{archive.name}", sha1_prefix=sha1)
    published_mirror.files[archive.name] = archive
    path = fetch_weights(entry)
    assert published_mirror.requests == [archive.name]
    cached = torch.load(path, weights_only=True)
    model, classifier = cached["model"], cached["imagenet_classifier"]
    served = pytorchcv_state_dict(150)
    assert torch.equal(model["stem.conv1.conv.weight"], served["features.init_block.conv1.conv.weight"])
    assert torch.equal(classifier["classifier.fc.bias"], served["output.final_conv.bias"])
    assert len(model) + len(classifier) == len([k for k in served if not k.endswith("num_batches_tracked")])
    assert cache_files(tmp_path / "cache") == ["fishnet150_pytorchcv.pth"]


@pytest.mark.slow
def test_mirror_may_be_a_directory(published, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, published["fishnet99_ckpt.tar"].parent.as_uri())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = PathManager.get_local_path(SCHEME + "fishnet99_official")
    assert len(torch.load(path, weights_only=True)["model"]) == 489  # FishNet-99's 599 less counters, classifier


@pytest.mark.slow
def test_the_converter_takes_a_weight_name(published_mirror, tmp_path):
    output = tmp_path / "fishnet99.pkl"
    result = run_converter(SCHEME + "fishnet99_official", output)
    assert result.returncode == 0, result.stderr
    assert published_mirror.requests == ["fishnet99_ckpt.tar"] and "FishNet-99" in result.stdout
    with open(output, "rb") as f:
        assert len(pickle.load(f)["model"]) == 489
    result = run_converter(SCHEME + "fishnext150", tmp_path / "fishnext150.pkl")
    assert result.returncode == 1 and "Two ways on" in result.stderr
    assert not (tmp_path / "fishnext150.pkl").exists()


# ---- faults: a one-paragraph error, and nothing in the cache ----

FAULTS = {
    # name -> (weights, fault, words of the message)
    "no network": ("fishnet150_official", None, ["no connection", "Connection refused", MIRROR_ENV, "tools/convert_fishnet_to_d2.py"]),
    "HTTP 404": ("fishnet150_official", ("status", 404), ["HTTP 404", MIRROR_ENV]),
    "HTTP 403": ("fishnet150_official", ("status", 403), ["HTTP 403", "https://www.dropbox.com/s/hjadcef18ln3o2v/fishnet150_ckpt.tar?dl=1"]),
    "connection dropped": ("fishnet150_official", ("drop", 3 << 20), ["dropped after 3,145,728 of 6,291,456 bytes", "Run again"]),
    "a web page": ("fishnet150_official", ("page", "<!DOCTYPE html><html>Link expired</html>"), ["sent a web page"]),
    "not a checkpoint": ("fishnet150_official", ("page", "garbage " * 100), ["not a readable torch checkpoint"]),
    "a web page for a zip": ("fishnet150_pytorchcv", ("page", "<html><body>Not found</body></html>"), ["sent a web page"]),
}  # fmt: skip
# Published files in the wrong place. name -> (weights, the file served, words of the message)
WRONG_FILES = {
    "another variant": ("fishnet150_official", "fishnet99_ckpt.tar", ["it holds FishNet-99", "not FishNet-150"]),
    "bad hash": ("fishnet150_pytorchcv", PYTORCHCV_150.file_name, ["SHA-1", "does not begin with the published 93e26daa"]),
    "another archive": ("fishnet150_pytorchcv", "own_pytorchcv", ["the zip archive holds fishnet150-0475-"]),
}  # fmt: skip


def assert_refused(name: str, words: List[str], cache: Path) -> None:
    """Resolving ``name`` raises one paragraph holding ``words``, and caches nothing."""
    with pytest.raises(WeightsUnavailableError) as raised:
        PathManager.get_local_path(SCHEME + name)
    message = str(raised.value)
    assert message.startswith(f"{SCHEME}{name}: "), message
    assert "\n\n" not in message and "Nothing was written to the cache" in message, message
    for word in words:
        assert word in message, message
    assert cache_files(cache) == []


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_one_paragraph_and_leaves_no_cache_entry(mirror, tmp_path, monkeypatch, fault):
    name, how, words = FAULTS[fault]
    if how is None:
        monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{closed_port()}")
    else:
        mirror.faults[PUBLISHED_WEIGHTS[name].file_name] = how
    assert_refused(name, words, tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(WRONG_FILES))
def test_a_wrong_file_is_refused_and_leaves_no_cache_entry(published_mirror, tmp_path, fault):
    name, served, words = WRONG_FILES[fault]
    published_mirror.files[PUBLISHED_WEIGHTS[name].file_name] = published_mirror.files[served]
    assert_refused(name, words, tmp_path / "cache")


def test_unknown_and_unpublished_names():
    with pytest.raises(ValueError, match="published: fishnet99_official, fishnet150_official"):
        PathManager.get_local_path(SCHEME + "fishnet151_official")
    for name, network in UNPUBLISHED_WEIGHTS.items():
        with pytest.raises(UnpublishedWeightsError) as raised:
            PathManager.get_local_path(SCHEME + name)
        for words in (network, "Two ways on", "MODEL.WEIGHTS", "MODEL.FISHNET.NORM BN, SyncBN or GN"):
            assert words in str(raised.value)


# RESOLVE with Python's Ctrl-C handler (KeyboardInterrupt) installed whatever SIGINT's disposition
# the child inherits. A process started from a background job of a non-interactive shell (`make
# test &` in a script, some CI runners) inherits SIGINT *ignored*, and Python then installs no
# handler: the SIGINT below would do nothing and the child would finish the download (exit 0).
# A Ctrl-C typed in a terminal reaches a process with the default disposition; this one too.
RESOLVE_WITH_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + RESOLVE


def downloading(cache: Path) -> bool:
    """Whether a download into ``cache`` has written bytes (its temporary file may vanish meanwhile)."""
    for partial in cache.rglob("*.download"):
        with contextlib.suppress(FileNotFoundError):
            if partial.stat().st_size:
                return True
    return False


@pytest.mark.slow
def test_ctrl_c_during_the_download_leaves_nothing(published_mirror, tmp_path):
    published_mirror.faults[OFFICIAL_150.file_name] = ("slow", 0.5)  # ~100 MB at 2 MB/s: ~50 s
    cache = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", RESOLVE_WITH_CTRL_C, SCHEME + "fishnet150_official"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not downloading(cache):
            assert child.poll() is None, f"the child ended before its download began:\n{child.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the download did not begin within 120 s"
            time.sleep(0.1)
        assert child.poll() is None  # mid-download: the rest of the file is seconds away
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode != 0, stderr
    assert "KeyboardInterrupt: fishnet://ImageNet/fishnet150_official: interrupted while fetching" in stderr, stderr
    assert cache_files(cache) == []


@pytest.mark.slow
def test_a_full_disk_gives_an_error_and_leaves_nothing(published_mirror, tmp_path):
    def limited_file_size():  # writes past 2 MiB fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    child = subprocess.run(
        [sys.executable, "-c", RESOLVE, SCHEME + "fishnet150_official"],
        env=child_env(), capture_output=True, text=True, preexec_fn=limited_file_size, timeout=300,
    )  # fmt: skip
    assert child.returncode != 0
    message = re.search(r"WeightsUnavailableError: (.*)", child.stderr).group(1)
    assert "could not write the download in" in message and "File too large" in message, message
    assert f"set {CACHE_ENV} to a writable directory" in message
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.slow
def test_processes_starting_together_download_once(published_mirror, tmp_path):
    published_mirror.faults[OFFICIAL_150.file_name] = ("slow", 0.08)  # ~8 s: the processes overlap
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE, SCHEME + "fishnet150_official"],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], results
    expected = str(tmp_path / "cache" / "ImageNet" / "fishnet150_official.pth")
    assert [out.strip() for out, _ in results] == [expected, expected]
    assert published_mirror.requests == [OFFICIAL_150.file_name]
    assert sum("Waiting for another process" in err for _, err in results) == 1
    assert len(torch.load(expected, weights_only=True)["model"]) == 744


# ---- the configs name the weights ----


def expected_weights(cfg) -> str:
    """The weights a YAML config's network starts from."""
    fish = cfg.MODEL.FISHNET
    if fish.DEPTH == 0:
        return ""  # a custom network (the demo), trained from scratch
    if fish.GROUP_WIDTH:
        return SCHEME + "fishnext150"
    if fish.DOWNSAMPLE == "conv":
        return SCHEME + "fishnet150_downsample_conv"
    return SCHEME + {99: "fishnet99_official", 150: "fishnet150_official", 201: "fishnet201_official_welltrained"}[fish.DEPTH]


# The configs that train a model (not the _BASE_ files they inherit, nor LazyConfig building blocks).
CONFIGS = [n for n in model_zoo.list_configs() if not n.startswith("common/") and not Path(n).name.startswith("Base-")]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_names_the_weights_of_its_network(name):
    if name.endswith(".py"):
        lazy = LazyConfig.load(model_zoo.get_config_file(name))
        assert lazy.train.init_checkpoint == model_zoo.get_config(name.replace(".py", ".yaml")).MODEL.WEIGHTS
        return
    cfg = model_zoo.get_config(name)
    assert cfg.MODEL.WEIGHTS == expected_weights(cfg)
    if "_paper" in name and not cfg.MODEL.FISHNET.GROUP_WIDTH and cfg.MODEL.FISHNET.DOWNSAMPLE != "conv":
        assert cfg.MODEL.WEIGHTS == SCHEME + "fishnet150_official"  # the paper's: no tricks


# ---- from the config to a trained first iteration ----

TINY_TRAINING = [
    "DATASETS.TRAIN", "('fishnet_demo_train',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MASK_FORMAT", "bitmask",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.REFERENCE_WORLD_SIZE", "0",
    "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "MODEL.DEVICE", "cpu",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    # Learning rate 0: the trained iteration leaves every weight as loaded, to be compared.
    "SOLVER.BASE_LR", "0.0", "OUTPUT_DIR", "output",
]  # fmt: skip

# Detectron2's tools/train_net.py (training part), with the plugin's two lines.
DETECTRON2_TRAIN_NET = """
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
import fishnet_d2  # the plugin's two lines: this one ...
import fishnet_d2.apps.data  # the demo's dataset, which this test trains on

def setup(args):
    cfg = get_cfg()
    fishnet_d2.add_fishnet_config(cfg)  # ... and this one
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg

def main(args):
    trainer = DefaultTrainer(setup(args))
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, args=(args,))
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", ["fishnet_d2", "detectron2"])
def test_training_from_an_empty_directory_starts_from_the_named_weights(published_mirror, demo_datasets, tmp_path, script):
    """tools/train_net.py on the packaged paper config (or Detectron2's train_net.py, with the
    plugin's two lines, on the packaged 1x config), run where nothing else is: the official
    FishNet-150 weights are fetched from the mirror, converted, loaded into every backbone tensor,
    and the first iteration is trained."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    if script == "fishnet_d2":
        command = [str(REPO / "tools" / "train_net.py"), "--config-file", PAPER_CONFIG]
    else:
        (tmp_path / "d2_train_net.py").write_text(DETECTRON2_TRAIN_NET)
        # The 1x config: the paper's clips the gradient norm of the whole model, which only
        # fishnet_d2's trainer does (Detectron2's clips per parameter).
        command = [str(tmp_path / "d2_train_net.py"), "--config-file", model_zoo.get_config_file(STANDARD_CONFIG)]
    run = subprocess.run(
        [sys.executable, *command, *TINY_TRAINING], cwd=workdir, capture_output=True, text=True, timeout=600,
        env=child_env(DETECTRON2_DATASETS=str(demo_datasets), OMP_NUM_THREADS="2"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert published_mirror.requests == [OFFICIAL_150.file_name]
    trained = torch.load(workdir / "output" / "model_final.pth", weights_only=True)
    assert trained["iteration"] == 0  # the first iteration (0-based), trained
    metrics = [json.loads(line) for line in (workdir / "output" / "metrics.json").read_text().splitlines()]
    assert any(m["iteration"] == 0 and math.isfinite(m["total_loss"]) for m in metrics), metrics
    converted = torch.load(tmp_path / "cache" / "ImageNet" / "fishnet150_official.pth", weights_only=True)["model"]
    backbone = {k[len("backbone.bottom_up.") :]: v for k, v in trained["model"].items() if k.startswith("backbone.bottom_up.")}
    compared = [k for k in backbone if k in converted]
    # Every tensor of the backbone: the file's 744 (the published 905 less 150 BatchNorm counters
    # and the classifier's 11, kept apart).
    assert len(compared) == len(backbone) == len(converted) == 744
    for key in compared:
        assert torch.equal(backbone[key], converted[key]), key
    assert sorted(os.listdir(workdir)) == ["output"]  # nothing else written where it ran


@pytest.mark.slow
def test_config_without_published_weights_stops_when_training_starts(mirror, demo_datasets, tmp_path):
    config = "COCO-InstanceSegmentation/mask_rcnn_fishnext150_FPN_paper.yaml"
    command = [str(REPO / "tools" / "train_net.py"), "--config-file", config]
    run = subprocess.run(
        [sys.executable, *command, *TINY_TRAINING], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=child_env(DETECTRON2_DATASETS=str(demo_datasets)),
    )  # fmt: skip
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    error = "fishnet_d2.weights.download.UnpublishedWeightsError: fishnet://ImageNet/fishnext150: "
    assert last.startswith(error + "no ImageNet weights of FishNeXt-150"), last
    assert "Two ways on" in last and "not found" not in run.stderr
    assert mirror.requests == [] and not (tmp_path / "output" / "model_final.pth").exists()
