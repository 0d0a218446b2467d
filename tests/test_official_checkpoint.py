"""The official checkpoint layout, the converter's checks and outputs, and loading the converted
weights into Detectron2 models."""

import pickle
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fishnet_d2 import FISHNET_VARIANTS, FishNet
from fishnet_d2.weights.convert import (
    CheckpointLoadError,
    convert_official_state_dict,
    load_official_state_dict,
    save_d2_checkpoint,
)
from fishnet_d2.weights.official_layout import infer_arch, official_layout

from .support import REPO, fishnet_cfg, random_official_state_dict, reference_layout, run_converter

PARAMETERS = {99: 16_628_904, 150: 24_959_400, 201: 44_584_552}


@pytest.mark.parametrize("depth", sorted(PARAMETERS))
def test_parameter_counts_of_official_variants(depth):
    model = FishNet(FISHNET_VARIANTS[depth], norm="BN", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[depth]


@pytest.mark.parametrize("depth", sorted(PARAMETERS))
def test_official_layout_matches_reference(depth):
    layout = official_layout(FISHNET_VARIANTS[depth], num_classes=1000)
    assert {key: tuple(shape) for key, (_, shape) in layout.items()} == reference_layout(depth)


@pytest.mark.parametrize("depth", sorted(PARAMETERS))
def test_convert_official_variant(depth):
    official = random_official_state_dict(depth)
    converted = convert_official_state_dict(official)
    assert converted.arch == FISHNET_VARIANTS[depth] and converted.num_classes == 1000
    assert f"FishNet-{depth}" in converted.describe()
    assert f"DEPTH: {depth}" in converted.describe()
    model = FishNet(FISHNET_VARIANTS[depth], norm="BN", num_classes=1000)
    model.load_state_dict(converted.state_dict, strict=True)
    # Spot check the renaming on a few tensors of each part.
    layout = official_layout(FISHNET_VARIANTS[depth], 1000)
    state = model.state_dict()
    for key in ("conv1.0.weight", "fish.fish.3.3.0.3.bias", "fish.fish.9.4.1.weight", "fish.fish.5.1.0.bn2.running_var"):
        assert torch.equal(state[layout[key][0]], official[key])


def test_infer_arch_reads_widths_and_depths():
    for depth, arch in FISHNET_VARIANTS.items():
        assert infer_arch(random_official_state_dict(depth)) == (arch, 1000)


def test_converter_cli_bare_state_dict_and_pkl(tmp_path):
    official = random_official_state_dict(99)
    torch.save(official, tmp_path / "fishnet99.pth")
    result = run_converter(tmp_path / "fishnet99.pth", tmp_path / "out" / "fishnet99_d2.pkl")
    assert result.returncode == 0, result.stderr
    assert "FishNet-99 (1000 classes)" in result.stdout and "DEPTH: 99" in result.stdout
    with open(tmp_path / "out" / "fishnet99_d2.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is True and "__author__" in data and data["fishnet_d2_format"] == 2
    layout = official_layout(FISHNET_VARIANTS[99], 1000)
    # The network under "model", the classifier apart, BatchNorm's counters in neither.
    ours = {ours for ours, _ in layout.values() if not ours.endswith("num_batches_tracked")}
    assert set(data["model"]) == {k for k in ours if not k.startswith("classifier.")}
    assert set(data["imagenet_classifier"]) == {k for k in ours if k.startswith("classifier.")}
    for official_key, part in (("fish.fish.9.1.3.conv3.weight", "model"), ("fish.fish.9.4.1.weight", "imagenet_classifier")):
        assert (data[part][layout[official_key][0]] == official[official_key].numpy()).all()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda sd: sd.pop("fish.fish.4.0.0.conv2.weight"), ["missing (1)", "fish.fish.4.0.0.conv2.weight"]),
        (lambda sd: sd.__setitem__("fc.weight", torch.zeros(3)), ["unexpected (1)", "fc.weight"]),
        (
            lambda sd: sd.__setitem__("fish.fish.7.1.0.bn1.weight", torch.zeros(7)),
            ["mis-shaped (1)", "fish.fish.7.1.0.bn1.weight: (7,), expected (512,)"],
        ),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_converter_lists_mismatches_and_writes_nothing(tmp_path, damage, expected):
    official = random_official_state_dict(150)
    damage(official)
    torch.save({"state_dict": official, "best_prec1": 78.1}, tmp_path / "damaged.tar")
    output = tmp_path / "damaged_d2.pth"
    result = run_converter(tmp_path / "damaged.tar", output)
    assert result.returncode == 1
    assert "FishNet-150" in result.stderr
    for text in expected:
        assert text in result.stderr
    assert not output.exists() and list(tmp_path.iterdir()) == [tmp_path / "damaged.tar"]


def test_converter_rejects_other_models_and_truncated_files(tmp_path):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointLoadError, match="not an official FishNet state_dict"):
        convert_official_state_dict(load_official_state_dict(str(tmp_path / "linear.pth")))

    torch.save(random_official_state_dict(99), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    result = run_converter(tmp_path / "truncated.pth", tmp_path / "truncated_d2.pth")
    assert result.returncode == 1 and "not a readable torch checkpoint" in result.stderr
    assert not (tmp_path / "truncated_d2.pth").exists()


def test_converter_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    result = run_converter(tmp_path / "evil.pth", tmp_path / "evil_d2.pth")
    assert result.returncode == 1 and "refused to load" in result.stderr
    assert not marker.exists() and not (tmp_path / "evil_d2.pth").exists()


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_converted_weights_load_into_mask_rcnn_fpn(golden, tmp_path, suffix):
    """MODEL.WEIGHTS = a converted checkpoint: every backbone parameter and buffer is loaded."""
    converted = convert_official_state_dict(golden["state_dict"])
    weights = tmp_path / f"fishnet_tiny{suffix}"
    save_d2_checkpoint(converted.state_dict, str(weights), author="test")

    cfg = fishnet_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.merge_from_file(str(REPO / "tests" / "configs" / "mask_rcnn_fishnet_golden_FPN.yaml"))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    # Every backbone tensor (parameters and FrozenBN's buffers) holds the converted value.
    state = model.state_dict()
    backbone_keys = [k for k in state if k.startswith("backbone.bottom_up.")]
    # FrozenBN has no num_batches_tracked; every other converted tensor has a home.
    expected = {k for k in converted.state_dict if not k.endswith("num_batches_tracked")}
    expected -= {k for k in expected if k.startswith("classifier.")}
    assert {k[len("backbone.bottom_up.") :] for k in backbone_keys} == expected
    for key in backbone_keys:
        ours = key[len("backbone.bottom_up.") :]
        assert torch.equal(state[key], converted.state_dict[ours].to(state[key].dtype)), key
