"""The backbone reproduces the official model: tiny_golden.pt (made with the official code)
converted with tools/convert_fishnet_to_d2.py gives the official logits and stage outputs."""

import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from fishnet_d2.modeling import FishNet
from fishnet_d2.official import infer_arch, official_layout

from .common import REFERENCE, REPO

# The golden file's 11 stage outputs, in order, and our feature names for them.
STAGE_NAMES = [
    "stem", "tail3", "tail4", "tail5", "bridge",
    "body4", "body3", "body2", "head3", "head4", "head5",
]  # fmt: skip


@pytest.fixture(scope="module")
def golden():
    return torch.load(REFERENCE / "tiny_golden.pt", map_location="cpu", weights_only=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="module", params=[".pth", ".pkl"])
def converted(request, golden, tmp_path_factory):
    """The golden checkpoint, saved as published (DataParallel prefix, extra entries), converted
    by the command-line tool."""
    tmp = tmp_path_factory.mktemp("golden")
    official = tmp / "fishnet_tiny_ckpt.tar"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in golden["state_dict"].items()},
            "best_prec1": 70.0,
            "epoch": 100,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]},
        },
        official,
    )
    output = tmp / f"fishnet_tiny_d2{request.param}"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_fishnet_to_d2.py"), str(official), str(output)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "a custom FishNet (10 classes)" in result.stdout
    return output


def test_golden_outputs_match_official(golden, converted):
    arch, num_classes = infer_arch(golden["state_dict"])
    assert arch.official_constructor_args() == {
        key: golden["config"][key] for key in ("network_planes", "num_res_blks", "num_trans_blks")
    }
    model = FishNet(arch, norm="BN", num_classes=num_classes, out_features=STAGE_NAMES + ["linear"])
    model.eval()
    # Load as Detectron2 does for MODEL.WEIGHTS; strict: every key must be used.
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(converted)))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes

    with torch.no_grad():
        outputs = model(golden["input"])
    assert len(golden["stage_outputs"]) == len(STAGE_NAMES)
    for name, expected in zip(STAGE_NAMES, golden["stage_outputs"]):
        assert outputs[name].shape == expected.shape, name
        assert relative_error(outputs[name], expected) < 1e-4, name
    assert relative_error(outputs["linear"], golden["logits"]) < 1e-4
    assert outputs["linear"].argmax(1).tolist() == golden["logits"].argmax(1).tolist()


def test_golden_outputs_change_with_wrong_weights(golden):
    """The comparison above can fail: a model with one tensor perturbed misses the logits."""
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    state_dict = {layout[k][0]: v.clone() for k, v in golden["state_dict"].items()}
    state_dict["head.2.transfer.0.conv2.weight"] += 0.05
    model = FishNet(arch, norm="BN", num_classes=num_classes).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        logits = model(golden["input"])["linear"]
    assert relative_error(logits, golden["logits"]) > 1e-4
