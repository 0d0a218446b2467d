"""What the tests share: the tiny FishNet, every feature name, and Detectron2 configs that use
them. Fixtures are in conftest.py."""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg

from fishnet_d2 import FishNetArch, add_fishnet_config
from fishnet_d2.weights.convert import main as convert_main
from fishnet_d2.modeling import fishnet_arch_to_config

REPO = Path(__file__).resolve().parents[1]
# Reference data made with the official FishNet code (tests/data/README.md says what and whence).
REFERENCE = REPO / "tests" / "data"
CONVERTER = REPO / "tools" / "convert_fishnet_to_d2.py"

# A FishNet small enough for CPU tests: 3 stages per part, one block each.
TINY_ARCH = FishNetArch(
    stem_channels=16,
    tail_channels=(16, 32, 64),
    body_channels=(64, 48, 32),
    head_channels=(48, 112, 208),
    tail_blocks=(1, 1, 1),
    bridge_blocks=1,
    body_blocks=(1, 1, 1),
    head_blocks=(1, 1, 1),
    body_transfer_blocks=(1, 1, 1),
    head_transfer_blocks=(1, 1, 1),
)

# Every feature a FishNet with 3 stages per part returns, in the order it computes them.
ALL_FEATURES = [
    "stem", "tail3", "tail4", "tail5", "bridge",
    "body4", "body3", "body2", "head2", "head3", "head4", "head5",
]  # fmt: skip


def fishnet_cfg() -> CfgNode:
    """Detectron2's default config with MODEL.FISHNET added and the plain FishNet backbone, on CPU."""
    cfg = get_cfg()
    add_fishnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_backbone"
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def use_tiny_arch(cfg: CfgNode) -> CfgNode:
    """Switch cfg's FishNet to TINY_ARCH (DEPTH 0), in place."""
    cfg.MODEL.FISHNET.merge_from_other_cfg(CfgNode(fishnet_arch_to_config(TINY_ARCH)))
    return cfg



def run_converter(*args, script: bool = False) -> subprocess.CompletedProcess:
    """The converter's command line on ``args``: its ``main`` in this process (the tool is a thin
    script around it), or with ``script=True`` the script itself in a new interpreter."""
    argv = [str(a) for a in args]
    if script:
        return subprocess.run([sys.executable, str(CONVERTER), *argv], capture_output=True, text=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = convert_main(argv)
        except SystemExit as e:  # argparse's usage errors
            returncode = e.code
    return subprocess.CompletedProcess([str(CONVERTER), *argv], returncode, stdout.getvalue(), stderr.getvalue())


def assert_scripted_equals_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.jit.script(model)`` gives eager mode's features, bit for bit (the same kernels run)."""
    scripted = torch.jit.script(model)
    with torch.no_grad():
        eager, script = model(x), scripted(x)
    assert list(eager) == list(script)
    for name in eager:
        torch.testing.assert_close(script[name], eager[name], rtol=0, atol=0)
