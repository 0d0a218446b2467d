"""Converted ImageNet weights load into a detector reporting only what is new: Detectron2's own
``DetectionCheckpointer`` (the "two lines in your project" path) and fishnet_d2's
``FishNetCheckpointer`` log one warning, the modules the ImageNet network does not have (the FPN
and the heads), and nothing of the file as unused; every backbone tensor gets the file's value, a
trainable BatchNorm's running statistics included. Files of the first format (every tensor under
"model", BatchNorm counters and the classifier among them) keep loading, and a cache entry in it is
rewritten in the current format on its first use, without network access.

Measured on the paper's Mask R-CNN (FishNet-150, FrozenBN), with Detectron2's checkpointer:
153 lines of "The checkpoint state_dict contains keys that are not used by the model" before
(150 BatchNorm counters, 2 groups of the classifier, and the header), none now.
"""

import contextlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from fvcore.common.checkpoint import get_missing_parameters_message, get_unexpected_parameters_message

from fishnet_d2 import FishNet, FishNetCheckpointer, model_zoo
from fishnet_d2.weights.convert import convert_state_dict, load_state_dict, save_d2_checkpoint
from fishnet_d2.weights.download import CACHE_ENV, MIRROR_ENV, fetch_weights
from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS, SCHEME

from .support import TINY_ARCH, random_official_state_dict, tiny_mask_rcnn_cfg

BOTTOM_UP = "backbone.bottom_up."
# The loggers the checkpointers report through: fvcore's Checkpointer (DetectionCheckpointer's
# base) and Detectron2's name matching (detectron2.checkpoint.c2_model_loading).
LOGGERS = ("fvcore.common.checkpoint", "detectron2.checkpoint")
CHECKPOINTERS = {"DetectionCheckpointer": DetectionCheckpointer, "FishNetCheckpointer": FishNetCheckpointer}


class Records(logging.Handler):
    """Keeps the records it handles."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> List[str]:
        """The messages of WARNING and above."""
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def captured_logs(names=LOGGERS) -> Iterator[Records]:
    """The records of the loggers ``names``, at every level, whether or not Detectron2's
    setup_logger made them stop propagating."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def imagenet_state_dict(seed: int = 3) -> Dict[str, torch.Tensor]:
    """A tiny FishNet's full ImageNet state_dict (10 classes), as the official code saves one:
    every BatchNorm's counter and the classifier included; random values, counters not 0."""
    generator = torch.Generator().manual_seed(seed)
    state = FishNet(TINY_ARCH, norm="BN", num_classes=10).state_dict()
    return {
        k: torch.randint(1, 100, v.shape, generator=generator) if k.endswith("num_batches_tracked")
        else torch.rand(v.shape, generator=generator) + 0.5
        for k, v in state.items()
    }  # fmt: skip


def detector(norm: str) -> torch.nn.Module:
    """The tiny Mask R-CNN with ``norm`` in its FishNet: FrozenBN as the COCO configs (the paper's
    frozen first stem conv too), or a trainable BN."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.FISHNET.NORM = norm
    cfg.MODEL.FISHNET.FREEZE_STEM_CONV1 = norm == "FrozenBN"
    torch.manual_seed(0)
    return build_model(cfg)


def new_modules(model: torch.nn.Module) -> List[str]:
    """What ImageNet weights cannot give ``model``: every key outside its FishNet (pixel_mean and
    pixel_std aside, which Detectron2 takes from the config and does not report)."""
    return [k for k in model.state_dict() if not k.startswith(BOTTOM_UP) and k not in ("pixel_mean", "pixel_std")]


def assert_backbone_from(model: torch.nn.Module, imagenet: Dict[str, torch.Tensor]) -> None:
    """Every tensor of the model's FishNet holds ``imagenet``'s value; BatchNorm counters are 0."""
    bottom_up = {k[len(BOTTOM_UP) :]: v for k, v in model.state_dict().items() if k.startswith(BOTTOM_UP)}
    assert bottom_up, "no FishNet in the model"
    for key, value in bottom_up.items():
        expected = torch.zeros_like(value) if key.endswith("num_batches_tracked") else imagenet[key]
        assert torch.equal(value, expected.to(value.dtype)), key


def first_format(state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """``state_dict`` written as the converter wrote it before format 2: every tensor under "model"."""
    author = "fishnet_d2 converter, from fishnet_tiny_ckpt.tar (official layout)"
    torch.save({"model": state_dict, "__author__": author, "matching_heuristics": True}, path)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
@pytest.mark.parametrize("checkpointer", sorted(CHECKPOINTERS))
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_converted_weights_report_only_the_new_modules(tmp_path, norm, checkpointer, suffix):
    imagenet = imagenet_state_dict()
    weights = tmp_path / f"imagenet{suffix}"
    save_d2_checkpoint(imagenet, str(weights), author="test")
    model = detector(norm)
    if norm == "BN":  # the counters exist in the model, to be left at 0
        assert any(k.endswith("num_batches_tracked") for k in model.state_dict() if k.startswith(BOTTOM_UP))
    with captured_logs() as logs:
        CHECKPOINTERS[checkpointer](model).load(str(weights))
    assert logs.warnings() == [get_missing_parameters_message(new_modules(model))]
    assert_backbone_from(model, imagenet)


def test_the_check_sees_a_noisy_file(tmp_path):
    """The comparison above can fail: a file with the counters and the classifier under "model"
    reports each of them, in the message fvcore writes for them."""
    imagenet = imagenet_state_dict()
    torch.save({"model": imagenet, "__author__": "test", "matching_heuristics": True}, tmp_path / "noisy.pth")
    model = detector("FrozenBN")
    with captured_logs() as logs:
        DetectionCheckpointer(model).load(str(tmp_path / "noisy.pth"))
    unused = [k for k in imagenet if k.endswith("num_batches_tracked") or k.startswith("classifier.")]
    assert len(unused) > 20
    missing, unexpected = logs.warnings()
    assert missing == get_missing_parameters_message(new_modules(model))
    # The groups in the order torch found them.
    assert sorted(unexpected.splitlines()) == sorted(get_unexpected_parameters_message(unused).splitlines())


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_a_file_of_the_first_format_still_loads(tmp_path, norm):
    """FishNetCheckpointer takes of it what it takes of the current format, quietly; Detectron2's
    checkpointer loads every backbone tensor, reporting the counters and the classifier as unused."""
    imagenet = imagenet_state_dict()
    first_format(imagenet, tmp_path / "old.pth")
    model = detector(norm)
    with captured_logs() as logs:
        FishNetCheckpointer(model).load(str(tmp_path / "old.pth"))
    assert logs.warnings() == [get_missing_parameters_message(new_modules(model))]
    assert_backbone_from(model, imagenet)

    model = detector(norm)
    with captured_logs() as logs:
        DetectionCheckpointer(model).load(str(tmp_path / "old.pth"))
    bottom_up = {k[len(BOTTOM_UP) :]: v for k, v in model.state_dict().items() if k.startswith(BOTTOM_UP)}
    for key, value in bottom_up.items():
        assert torch.equal(value, imagenet[key].to(value.dtype)), key
    assert len(logs.warnings()) == 2 and "not used by the model" in logs.warnings()[1]


def test_a_fishnet_with_a_classifier_gets_the_classifier(tmp_path):
    """FishNetCheckpointer gives the classifier, kept apart in the file, to a FishNet that has one;
    Detectron2's checkpointer reports it missing, as it is not among the network's weights."""
    imagenet = imagenet_state_dict()
    save_d2_checkpoint(imagenet, str(tmp_path / "imagenet.pth"), author="test")
    classifier = [k for k in imagenet if k.startswith("classifier.") and not k.endswith("num_batches_tracked")]
    model = FishNet(TINY_ARCH, norm="BN", num_classes=10, out_features=["linear"])
    with captured_logs() as logs:
        FishNetCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    assert logs.warnings() == []
    for key, value in model.state_dict().items():
        expected = torch.zeros_like(value) if key.endswith("num_batches_tracked") else imagenet[key]
        assert torch.equal(value, expected), key

    model = FishNet(TINY_ARCH, norm="BN", num_classes=10, out_features=["linear"])
    with captured_logs() as logs:
        DetectionCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    assert logs.warnings() == [get_missing_parameters_message(classifier)]


def test_the_converter_reads_its_own_files_of_either_format(tmp_path):
    """A converted file (counters left out, the classifier apart), or one of the first format, is
    read back whole, in this project's layout."""
    imagenet = imagenet_state_dict()
    save_d2_checkpoint(imagenet, str(tmp_path / "new.pkl"), author="test")
    first_format(imagenet, tmp_path / "old.pth")
    for name in ("new.pkl", "old.pth"):
        converted = convert_state_dict(load_state_dict(str(tmp_path / name)))
        assert converted.layout == "fishnet_d2" and converted.num_classes == 10, name
        assert converted.arch == TINY_ARCH, name
        expected = {k: v for k, v in imagenet.items() if name == "old.pth" or not k.endswith("num_batches_tracked")}
        assert converted.state_dict.keys() == expected.keys(), name
        assert all(torch.equal(converted.state_dict[k], v) for k, v in expected.items()), name


# ---- cache entries of the first format ----

TINY_ENTRY = PUBLISHED_WEIGHTS["fishnet99_official"]  # any name: the rewrite does not look at the network


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache in FISHNET_D2_CACHE; a mirror on a port where nothing listens."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # discard: refused, were anything fetched
    (tmp_path / "cache" / "ImageNet").mkdir(parents=True)
    return tmp_path / "cache"


def test_a_cache_entry_of_the_first_format_is_rewritten_on_first_use(offline_cache):
    imagenet = imagenet_state_dict()
    entry = offline_cache / "ImageNet" / f"{TINY_ENTRY.name}.pth"
    first_format(imagenet, entry)
    assert fetch_weights(TINY_ENTRY) == str(entry)
    content = torch.load(entry, weights_only=True)
    assert content["fishnet_d2_format"] == 2
    assert content["__author__"] == "fishnet_d2 converter, from fishnet_tiny_ckpt.tar (official layout)"
    kept = {**content["model"], **content["imagenet_classifier"]}
    assert kept.keys() == {k for k in imagenet if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(kept[k], imagenet[k]) for k in kept)
    assert not any(k.startswith("classifier.") for k in content["model"])
    assert sorted(os.listdir(entry.parent)) == [f".{entry.name}.lock", entry.name]  # no temporary file left

    written = entry.stat().st_mtime_ns
    assert fetch_weights(TINY_ENTRY) == str(entry)
    assert entry.stat().st_mtime_ns == written  # the current format: read, not written again


def test_a_cache_entry_that_cannot_be_rewritten_loads_as_it_is(offline_cache):
    """Where the entry cannot be rewritten (here its lock cannot be opened: a directory stands at
    its name), it stays as it is, with a warning, and still loads."""
    imagenet = imagenet_state_dict()
    entry = offline_cache / "ImageNet" / f"{TINY_ENTRY.name}.pth"
    first_format(imagenet, entry)
    before = entry.read_bytes()
    (entry.parent / f".{entry.name}.lock").mkdir()
    with captured_logs(["fishnet_d2.weights.download"]) as logs:
        assert fetch_weights(TINY_ENTRY) == str(entry)
    assert entry.read_bytes() == before
    [warning] = logs.warnings()
    assert "could not be rewritten in the current one" in warning and "Delete it to fetch it again" in warning
    model = detector("FrozenBN")
    FishNetCheckpointer(model).load(str(entry))
    assert_backbone_from(model, imagenet)


# ---- a config's own weights, by name, full size ----


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_a_config_loads_its_named_weights_reporting_only_the_new_modules(offline_cache, monkeypatch, norm):
    """The FishNet-99 Mask R-CNN config (FrozenBN, or NORM BN as a from-scratch user sets it) and
    its fishnet://ImageNet/fishnet99_official, converted from an official-layout file into the
    cache, loaded with Detectron2's checkpointer."""
    official = random_official_state_dict(99)
    converted = convert_state_dict(official, layout="official").state_dict
    save_d2_checkpoint(converted, str(offline_cache / "ImageNet" / "fishnet99_official.pth"), author="fishnet_d2, test")
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_fishnet99_FPN_1x.yaml")
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FISHNET.NORM = norm
    assert cfg.MODEL.WEIGHTS == SCHEME + "fishnet99_official"
    model = build_model(cfg)
    with captured_logs() as logs:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    # detectron2 main's FrozenBatchNorm2d.convert_frozen_batchnorm keeps the BatchNorm's batch
    # counter (v0.6's drops it): with NORM BN, the frozen stem conv1's norm has one, which no
    # ImageNet file holds (it counts nothing once frozen).
    frozen_counters = [
        k for k, _ in model.named_buffers()
        if k.startswith(BOTTOM_UP) and k.endswith(".num_batches_tracked") and isinstance(
            model.get_submodule(k.rsplit(".", 1)[0]), FrozenBatchNorm2d
        )
    ]
    assert logs.warnings() == [get_missing_parameters_message(frozen_counters + new_modules(model))]
    assert_backbone_from(model, converted)
    assert any(k.startswith("backbone.fpn_") for k in new_modules(model))
    assert all(k.startswith(("backbone.fpn_", "proposal_generator.", "roi_heads.")) for k in new_modules(model))
