"""pytorchcv's FishNet weights (``pytorchcv.models.fishnet``): the layout derived from our model is
pytorchcv's, the converter recognises and checks it, and the converted file gives pytorchcv's own
logits and initialises the paper's Mask R-CNN. Also the converter's other choices of layout:
``--layout``, and files already in this project's own keys.

pytorchcv's models are built here with random weights (``pretrained=False``, the default,
downloads nothing) and saved as pytorchcv saves its weights: a plain state_dict.
"""

from typing import Callable, Dict, Tuple

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model
from pytorchcv.models.fishnet import fishnet99, fishnet150
from pytorchcv.models.preresnet import preresnet50
from torch import nn

from fishnet_d2 import FishNet
from fishnet_d2.weights.convert import load_state_dict, save_d2_checkpoint
from fishnet_d2.weights.pytorchcv_layout import PYTORCHCV_VARIANTS, pytorchcv_layout

from .support import REPO, TINY_ARCH, fishnet_cfg, run_converter

PYTORCHCV_MODELS: Dict[int, Callable[[], nn.Module]] = {99: fishnet99, 150: fishnet150}
PAPER_MASK_RCNN = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_fishnet150_FPN_paper.yaml"

# Both models run in float64 so that the check holds on any CPU: in float32 the difference comes
# from each model's convolution algorithms and summation order (NHWC against NCHW), which depend on
# the CPU (4.6e-6 and 6.4e-6 for FishNet-99 and -150 on the CPU measured); in float64 that part is
# ~1e-14 (1.1e-14 and 1.5e-14), far below 1e-4 wherever it runs. A tensor in the wrong place misses
# 1e-4 by more than an order of magnitude: the subtlest mistakes tried (two transfer blocks of one
# body stage swapped, the classifier's bias permuted) give 2e-3 to 5e-3, the others 1e-2 and more.
TOLERANCE = 1e-4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random convolution biases (pytorchcv initialises them to 0),
    random BatchNorm weights and biases, and BatchNorm running statistics measured on a random
    image, then randomly perturbed.

    Statistics of the order of the activations keep every block's contribution visible in the
    logits; with arbitrary ones (mean 0, variance 1) the activations grow block after block and
    the last blocks drown the others, so that a misplaced early tensor could go unnoticed.
    """
    generator = torch.Generator().manual_seed(seed)
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.bias is not None:
            conv.bias.data = torch.randn(conv.out_channels, generator=generator) * 0.1
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        channels = norm.num_features
        norm.weight.data = torch.rand(channels, generator=generator) + 0.5
        norm.bias.data = torch.randn(channels, generator=generator) * 0.1
        norm.reset_running_stats()
        norm.momentum = None  # the running statistics become those of the next batch
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224, generator=generator))
    for norm in norms:
        channels = norm.num_features
        norm.running_mean += torch.randn(channels, generator=generator) * 0.1 * norm.running_var.sqrt()
        norm.running_var *= torch.rand(channels, generator=generator) * 0.5 + 0.75
        norm.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def pytorchcv_weights(tmp_path_factory) -> Callable[[int], Tuple[nn.Module, str]]:
    """``depth -> (pytorchcv model, its weights file)``: FishNet-``depth`` with random weights
    (:func:`randomized`), saved as pytorchcv saves them (a plain state_dict); built on first use."""
    built: Dict[int, Tuple[nn.Module, str]] = {}

    def get(depth: int) -> Tuple[nn.Module, str]:
        if depth not in built:
            torch.manual_seed(depth)  # pytorchcv's initialisation draws from the global generator
            model = randomized(PYTORCHCV_MODELS[depth](), seed=depth)
            path = tmp_path_factory.mktemp(f"pytorchcv{depth}") / f"fishnet{depth}-random.pth"
            torch.save(model.state_dict(), path)
            built[depth] = (model, str(path))
        return built[depth]

    return get


def state_dict_of(build: Callable[[], nn.Module]) -> Dict[str, torch.Tensor]:
    """A state_dict of the model ``build()`` makes, with random values, built without computing
    pytorchcv's initialisation (for the tests that only read keys and shapes)."""
    with torch.device("meta"):
        shapes = build().state_dict()
    generator = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
        for k, v in shapes.items()
    }


@pytest.fixture(scope="module")
def fishnet99_state_dict() -> Dict[str, torch.Tensor]:
    return state_dict_of(fishnet99)


@pytest.mark.parametrize("depth", sorted(PYTORCHCV_MODELS))
def test_pytorchcv_layout_is_pytorchcvs(depth):
    """Every key and shape of pytorchcv's model, and no other, from our model's structure."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PYTORCHCV_MODELS[depth]().state_dict().items()}
    layout = pytorchcv_layout(PYTORCHCV_VARIANTS[depth], num_classes=1000)
    assert {k: tuple(shape) for k, (_, shape) in layout.items()} == expected


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(PYTORCHCV_MODELS))
def test_converted_pytorchcv_weights_give_pytorchcv_logits(tmp_path, pytorchcv_weights, depth):
    reference, weights = pytorchcv_weights(depth)
    output = tmp_path / f"fishnet{depth}_imagenet_d2.pth"
    result = run_converter(weights, output)
    assert result.returncode == 0, result.stderr
    assert "read the pytorchcv layout (recognised from the keys)" in result.stdout
    assert f"FishNet-{depth} (1000 classes)" in result.stdout and f"DEPTH: {depth}" in result.stdout

    cfg = fishnet_cfg()
    cfg.MODEL.FISHNET.DEPTH = depth
    cfg.MODEL.FISHNET.NORM = "BN"
    cfg.MODEL.FISHNET.FREEZE_STEM_CONV1 = False  # its FrozenBN would have no num_batches_tracked
    cfg.MODEL.FISHNET.NUM_CLASSES = 1000
    cfg.MODEL.FISHNET.OUT_FEATURES = ["head5", "linear"]
    backbone = build_backbone(cfg)
    # Every tensor of the file, its classifier's too (kept apart from the network's).
    backbone.load_state_dict(load_state_dict(str(output)), strict=True)

    # pytorchcv's classifier pools 7x7: 224x224 inputs give one logit per class.
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference.double()(images)
        actual = backbone.double().eval()(images)["linear"]
    assert actual.shape == expected.shape == (2, 1000)
    assert relative_error(actual, expected) < TOLERANCE
    # The logits depend on the image far beyond the tolerance: the comparison above sees the trunk.
    assert relative_error(expected[0], expected[1]) > 100 * TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(PYTORCHCV_MODELS))
def test_converted_pytorchcv_weights_load_into_paper_mask_rcnn(tmp_path, pytorchcv_weights, depth):
    """MODEL.WEIGHTS of the paper's Mask R-CNN: every backbone tensor holds the converted value."""
    _, weights = pytorchcv_weights(depth)
    output = tmp_path / f"fishnet{depth}_imagenet_d2.pth"
    assert run_converter(weights, output).returncode == 0
    converted = torch.load(output, weights_only=True)["model"]

    cfg = fishnet_cfg()
    cfg.merge_from_file(str(PAPER_MASK_RCNN))
    cfg.MODEL.FISHNET.DEPTH = depth
    cfg.MODEL.WEIGHTS = str(output)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    state = model.state_dict()
    prefix = "backbone.bottom_up."
    backbone_keys = [k for k in state if k.startswith(prefix)]
    # FrozenBN (the paper's) has no num_batches_tracked; the detector has no classifier.
    expected = {k for k in converted if not k.endswith("num_batches_tracked") and not k.startswith("classifier.")}
    assert {k[len(prefix) :] for k in backbone_keys} == expected
    for key in backbone_keys:
        assert torch.equal(state[key], converted[key[len(prefix) :]].to(state[key].dtype)), key


def rename(state_dict: Dict[str, torch.Tensor], old: str, new: str) -> None:
    state_dict[new] = state_dict.pop(old)


RENAMED = "features.hg.skip2_seq.unit1.blocks.block4.body.conv3.conv.weight"
MISSHAPED = "features.hg.skip1_seq.unit4.se.conv1.weight"


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda sd: rename(sd, RENAMED, RENAMED.replace("block4", "block5")),
            [f"missing (1): {RENAMED}", f"unexpected (1): {RENAMED.replace('block4', 'block5')}"],
        ),
        (
            lambda sd: sd.__setitem__(MISSHAPED, torch.zeros(16, 1024, 1, 1)),
            [f"mis-shaped (1): {MISSHAPED}: (16, 1024, 1, 1), expected (32, 1024, 1, 1)"],
        ),
    ],
    ids=["renamed", "misshaped"],
)
def test_converter_refuses_damaged_pytorchcv_weights(tmp_path, fishnet99_state_dict, damage, expected):
    damaged = dict(fishnet99_state_dict)
    damage(damaged)
    torch.save(damaged, tmp_path / "fishnet99-damaged.pth")
    output = tmp_path / "fishnet99_d2.pth"
    result = run_converter(tmp_path / "fishnet99-damaged.pth", output)
    assert result.returncode == 1
    assert "the closest is the pytorchcv layout of FishNet-99 (1000 classes)" in result.stderr
    for text in expected:
        assert text in result.stderr
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "fishnet99-damaged.pth"]


def test_converter_refuses_another_pytorchcv_model(tmp_path):
    torch.save(state_dict_of(preresnet50), tmp_path / "preresnet50.pth")
    result = run_converter(tmp_path / "preresnet50.pth", tmp_path / "preresnet50_d2.pth")
    assert result.returncode == 1
    tried = "not a FishNet state_dict in any layout this converter reads (tried: official, pytorchcv, fishnet_d2)"
    assert tried in result.stderr
    assert "the closest is the pytorchcv layout of FishNet-99" in result.stderr
    assert "missing (599): features.init_block.conv1.conv.weight" in result.stderr
    assert "unexpected (" in result.stderr and "features.init_block.conv.weight" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "preresnet50.pth"]


def test_layout_option_refuses_another_layout(tmp_path, fishnet99_state_dict):
    """--layout replaces the recognition by keys: pytorchcv's keys are not the official ones."""
    torch.save(fishnet99_state_dict, tmp_path / "fishnet99.pth")
    result = run_converter(tmp_path / "fishnet99.pth", tmp_path / "d2.pth", "--layout", "official")
    assert result.returncode == 1 and not (tmp_path / "d2.pth").exists()
    assert "not an official FishNet state_dict: compared with FishNet-99 (1000 classes)" in result.stderr
    assert "missing (599): conv1.0.weight" in result.stderr
    assert "unexpected (599): features.init_block.conv1.conv.weight" in result.stderr


def test_layout_option_converts_that_layout(tmp_path, fishnet99_state_dict):
    torch.save(fishnet99_state_dict, tmp_path / "fishnet99.pth")
    result = run_converter(tmp_path / "fishnet99.pth", tmp_path / "d2.pth", "--layout", "pytorchcv")
    assert result.returncode == 0 and "read the pytorchcv layout (as --layout says)" in result.stdout
    converted = load_state_dict(str(tmp_path / "d2.pth"))  # the classifier's tensors too
    # Every tensor but BatchNorm's counters, which the converted file leaves out.
    layout = {k: ours for k, (ours, _) in pytorchcv_layout(PYTORCHCV_VARIANTS[99], 1000).items() if not ours.endswith("num_batches_tracked")}
    assert set(converted) == set(layout.values())
    for key, ours in layout.items():
        assert torch.equal(converted[ours], fishnet99_state_dict[key]), key


def test_converted_file_is_recognised_as_fishnet_d2_layout(tmp_path):
    """A file in this project's own keys (as the converter writes it, .pkl too) is read as such,
    its architecture inferred (here a custom one), and converted to the same tensors."""
    model = FishNet(TINY_ARCH, norm="BN", num_classes=10)
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    save_d2_checkpoint(state_dict, str(tmp_path / "tiny_d2.pkl"), author="test")
    result = run_converter(tmp_path / "tiny_d2.pkl", tmp_path / "tiny_again.pth")
    assert result.returncode == 0, result.stderr
    assert "read the fishnet_d2 layout (recognised from the keys)" in result.stdout
    assert "a custom FishNet (10 classes)" in result.stdout and "STEM_CHANNELS: 16" in result.stdout
    again = load_state_dict(str(tmp_path / "tiny_again.pth"))
    kept = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert set(again) == set(kept)
    for key, value in kept.items():
        assert torch.equal(again[key], value), key
