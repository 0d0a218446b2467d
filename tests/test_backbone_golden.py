"""The backbone reproduces the official model: tiny_golden.pt (made with the official code)
converted with tools/convert_fishnet_to_d2.py gives the official logits and stage outputs.

Tolerance: our model runs in float64, so the only error left is the golden file's own float32
rounding (its outputs were computed in float32 by the official code): relative error 8.4e-7 as
measured, on any CPU, whatever convolution algorithm it picks. 1e-4 leaves two orders of margin;
the tests at the end show that a real bug (a wrong dilation, a perturbed weight) misses it by
more than three orders."""

import dataclasses


import pytest
import torch

from fishnet_d2.modeling import FishNet
from fishnet_d2.weights.checkpointer import FishNetCheckpointer
from fishnet_d2.weights.official_layout import infer_arch, official_layout

from .support import GOLDEN_STAGES, GOLDEN_TOLERANCE, relative_error, run_converter


def float64_outputs(model: FishNet, golden) -> dict:
    model.double().eval()
    with torch.no_grad():
        return model(golden["input"].double())


@pytest.fixture(scope="module", params=[pytest.param(".pth", marks=pytest.mark.slow), ".pkl"])
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
    # The script itself, in a new interpreter, for one of the two formats; its main otherwise.
    result = run_converter(official, output, script=request.param == ".pth")
    assert result.returncode == 0, result.stderr
    assert "a custom FishNet (10 classes)" in result.stdout
    return output


def test_golden_outputs_match_official(golden, converted):
    arch, num_classes = infer_arch(golden["state_dict"])
    assert arch.official_constructor_args() == {
        key: golden["config"][key] for key in ("network_planes", "num_res_blks", "num_trans_blks")
    }
    model = FishNet(arch, norm="BN", num_classes=num_classes, out_features=GOLDEN_STAGES + ["linear"])
    # Loaded as fishnet_d2's trainer loads MODEL.WEIGHTS: every tensor of the model gets the
    # official value (the classifier's too), but BatchNorm's counters, which the file leaves out.
    FishNetCheckpointer(model).load(str(converted))
    layout = official_layout(arch, num_classes)
    official = {layout[key][0]: value for key, value in golden["state_dict"].items()}
    state = model.state_dict()
    assert set(state) == set(official)
    for key, value in state.items():
        expected = torch.zeros_like(value) if key.endswith("num_batches_tracked") else official[key]
        assert torch.equal(value, expected), key
    outputs = float64_outputs(model, golden)
    assert len(golden["stage_outputs"]) == len(GOLDEN_STAGES)
    for name, expected in zip(GOLDEN_STAGES, golden["stage_outputs"]):
        assert outputs[name].shape == expected.shape, name
        assert relative_error(outputs[name], expected) < GOLDEN_TOLERANCE, name
    assert relative_error(outputs["linear"], golden["logits"]) < GOLDEN_TOLERANCE
    assert outputs["linear"].argmax(1).tolist() == golden["logits"].argmax(1).tolist()


def test_golden_outputs_change_with_wrong_weights(golden):
    """The comparison above can fail: a model with one tensor perturbed misses the logits."""
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    state_dict = {layout[k][0]: v.clone() for k, v in golden["state_dict"].items()}
    state_dict["head.2.transfer.0.conv2.weight"] += 0.05
    model = FishNet(arch, norm="BN", num_classes=num_classes)
    model.load_state_dict(state_dict)
    logits = float64_outputs(model, golden)["linear"]
    assert relative_error(logits, golden["logits"]) > 10 * GOLDEN_TOLERANCE


def test_golden_outputs_change_with_wrong_dilation(golden):
    """A body without its dilations (1, 1, 1 instead of the official 1, 2, 4) misses the stage
    outputs from body3 on (body4's dilation is 1 either way): measured 0.23 to 0.67."""
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    wrong = dataclasses.replace(arch, body_dilations=(1, 1, 1))
    model = FishNet(wrong, norm="BN", num_classes=num_classes, out_features=GOLDEN_STAGES + ["linear"])
    model.load_state_dict({layout[k][0]: v for k, v in golden["state_dict"].items()})
    outputs = float64_outputs(model, golden)
    for name, expected in zip(GOLDEN_STAGES, golden["stage_outputs"]):
        if name in ("body3", "body2", "head3", "head4", "head5"):
            assert relative_error(outputs[name], expected) > 10 * GOLDEN_TOLERANCE, name
