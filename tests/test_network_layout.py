"""The network (fishnet_d2/modeling: arch, blocks, stages, fishnet) is FishNet as the paper writes
it, and knows none of the ways it can run: the speed and memory paths live in
fishnet_d2/modeling/optimize/ and substitute its modules once it is built."""

import ast
from pathlib import Path

import pytest
import torch

import fishnet_d2.modeling
from fishnet_d2 import FishNet, build_fishnet
from fishnet_d2.modeling.blocks import ConvNormReLU, PreActBottleneck, PreActProjection, ScoreUnit
from fishnet_d2.modeling.stages import FishStem, ResidualBlocks, TailStage

from .support import ALL_FEATURES, TINY_ARCH

NETWORK = ("arch.py", "blocks.py", "stages.py", "fishnet.py", "errors.py")


def imported_modules(path: Path) -> list:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("name", NETWORK)
def test_the_network_imports_no_optimization(name):
    imports = imported_modules(Path(fishnet_d2.modeling.__file__).parent / name)
    assert imports, name  # the parse found the module's imports
    assert not [m for m in imports if "optimize" in m or m.startswith("..")], imports


def test_a_fishnet_is_built_plain_and_the_builder_substitutes():
    """FishNet(...) has only the network's classes, NCHW weights and Detectron2's FrozenBN;
    build_fishnet's default substitutes the folded blocks and channels-last weights."""
    network_classes = {PreActBottleneck, PreActProjection, ConvNormReLU, ScoreUnit, FishStem, TailStage, ResidualBlocks}
    plain = FishNet(TINY_ARCH, norm="FrozenBN", out_features=ALL_FEATURES)
    kinds = {type(m) for m in plain.modules()}
    assert network_classes <= kinds
    assert all(type(m).__module__.startswith(("fishnet_d2.modeling.", "torch.", "detectron2.")) for m in plain.modules())
    assert not any("optimize" in type(m).__module__ for m in plain.modules())
    assert all(p.is_contiguous() for p in plain.parameters())
    built = build_fishnet(TINY_ARCH, norm="FrozenBN", out_features=ALL_FEATURES)
    assert not {PreActBottleneck, ConvNormReLU, ScoreUnit} & {type(m) for m in built.modules()}
    conv = built.tail[0].blocks[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
