"""The fast paths chosen by device (fishnet_d2/modeling/optimize/device_defaults.py): with
MODEL.FISHNET.FOLD_FROZEN_BN and CHANNELS_LAST unset (None, their default) the builder takes the
choices of MODEL.DEVICE's kind from one table, and True or False overrides them. Devices are
passed as strings: the model is built on the CPU whatever device it is meant for, so no GPU is
needed to see what a CUDA model would be."""

import dataclasses

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from fishnet_d2 import build_fishnet
from fishnet_d2.modeling import InvalidValue
from fishnet_d2.modeling.optimize.device_defaults import DEVICE_DEFAULTS, PATHS_BY_DEVICE, DeviceDefaults, device_defaults
from fishnet_d2.modeling.optimize.folding import FoldedPreActBottleneck

from .support import TINY_ARCH, fishnet_cfg, use_tiny_arch


def paths_taken(fishnet) -> dict:
    """What a built FishNet does, seen from its modules and weights."""
    return {
        "fold_frozen_bn": any(isinstance(m, FoldedPreActBottleneck) for m in fishnet.modules()),
        "channels_last": fishnet.tail[0].blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last),
    }


@pytest.fixture
def cuda_differs(monkeypatch):
    """A table whose CUDA record takes neither path, as a measurement on a GPU might decide."""
    monkeypatch.setitem(DEVICE_DEFAULTS, "cuda", DeviceDefaults(False, False, measured_on="a GPU"))


def test_each_device_string_reads_its_kinds_record():
    assert device_defaults("cpu") is DEVICE_DEFAULTS["cpu"]
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        assert device_defaults(device) is DEVICE_DEFAULTS["cuda"]
    other = device_defaults("mps")  # no record: the CPU's choices, marked as not measured there
    assert other.measured_on is None
    assert [getattr(other, p) for p in PATHS_BY_DEVICE] == [getattr(DEVICE_DEFAULTS["cpu"], p) for p in PATHS_BY_DEVICE]
    assert DEVICE_DEFAULTS["cpu"].measured_on  # the measured ones say where
    with pytest.raises(InvalidValue, match=r"device='gpu0': allowed a torch device"):
        device_defaults("gpu0")


def test_unset_paths_follow_the_device_and_explicit_choices_override_it(cuda_differs):
    unset = dict(fold_frozen_bn=None, channels_last=None)
    assert paths_taken(build_fishnet(TINY_ARCH, norm="FrozenBN", device="cpu", **unset)) == {
        "fold_frozen_bn": True, "channels_last": True,
    }  # fmt: skip
    assert paths_taken(build_fishnet(TINY_ARCH, norm="FrozenBN", device="cuda:0", **unset)) == {
        "fold_frozen_bn": False, "channels_last": False,
    }  # fmt: skip
    chosen = build_fishnet(TINY_ARCH, norm="FrozenBN", device="cuda", fold_frozen_bn=True, channels_last=None)
    assert paths_taken(chosen) == {"fold_frozen_bn": True, "channels_last": False}
    # build_fishnet's own defaults are explicit (LazyConfig files): the device changes nothing.
    assert paths_taken(build_fishnet(TINY_ARCH, norm="FrozenBN", device="cuda")) == {
        "fold_frozen_bn": True, "channels_last": True,
    }  # fmt: skip


def test_the_config_leaves_both_paths_to_model_device(cuda_differs):
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.NORM = "FrozenBN"
    assert cfg.MODEL.FISHNET.FOLD_FROZEN_BN is None and cfg.MODEL.FISHNET.CHANNELS_LAST is None
    built = {}
    for device in ("cpu", "cuda"):
        cfg.MODEL.DEVICE = device  # build_backbone builds on the CPU (build_model moves the model)
        built[device] = paths_taken(build_backbone(cfg, ShapeSpec(channels=3)))
    assert built == {
        "cpu": {"fold_frozen_bn": True, "channels_last": True},
        "cuda": {"fold_frozen_bn": False, "channels_last": False},
    }
    cfg.merge_from_list(["MODEL.FISHNET.CHANNELS_LAST", "True", "MODEL.FISHNET.FOLD_FROZEN_BN", "True"])
    assert paths_taken(build_backbone(cfg, ShapeSpec(channels=3))) == {"fold_frozen_bn": True, "channels_last": True}
    cfg.merge_from_list(["MODEL.FISHNET.CHANNELS_LAST", "None"])  # back to the device's choice
    assert paths_taken(build_backbone(cfg, ShapeSpec(channels=3)))["channels_last"] is False


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.FISHNET.CHANNELS_LAST", "yes", r"MODEL\.FISHNET\.CHANNELS_LAST='yes': allowed True or False"),
        ("MODEL.DEVICE", "gpu0", r"MODEL\.DEVICE='gpu0': allowed a torch device"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_the_records_hold_every_path_left_to_the_device():
    fields = [f.name for f in dataclasses.fields(DeviceDefaults)]
    assert fields == [*PATHS_BY_DEVICE, "measured_on"]
    assert set(DEVICE_DEFAULTS) == {"cpu", "cuda"}
