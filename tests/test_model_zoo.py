"""fishnet_d2.model_zoo: every config by name, from a source checkout and from a non-editable
install, as detectron2.model_zoo; the tools accept such a name where they accept a path."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser
from omegaconf import DictConfig

from fishnet_d2 import model_zoo
from fishnet_d2.engine import setup

from .support import REPO

PAPER = "COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml"
REPO_CONFIGS = sorted(
    p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".py")
)


def test_every_config_of_the_repository_has_a_name():
    assert model_zoo.list_configs() == REPO_CONFIGS
    for name in REPO_CONFIGS:
        assert os.path.samefile(model_zoo.get_config_file(name), REPO / "configs" / name)


def test_yaml_config_merges_with_fishnet_keys():
    cfg = model_zoo.get_config(PAPER)
    assert isinstance(cfg, CfgNode)
    assert cfg.MODEL.BACKBONE.NAME == "build_fishnet_fpn_backbone" and cfg.MODEL.FISHNET.DEPTH == 150
    assert cfg.MODEL.MASK_ON


def test_lazy_config_loads():
    cfg = model_zoo.get_config(PAPER.replace(".yaml", ".py"))
    assert isinstance(cfg, DictConfig) and "model" in cfg and "optimizer" in cfg


def test_unknown_name_lists_the_configs():
    with pytest.raises(FileNotFoundError, match=r"'COCO-Detection/nope.yaml' is not a fishnet_d2 config; available \(\d+\): .*faster_rcnn_fishnet150_FPN_1x.yaml"):
        model_zoo.get_config_file("COCO-Detection/nope.yaml")


def test_train_net_takes_a_config_name(tmp_path):
    args = default_argument_parser().parse_args(["--config-file", PAPER, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"])
    cfg = setup(args)
    assert cfg.MODEL.FISHNET.DEPTH == 150 and os.path.samefile(args.config_file, REPO / "configs" / PAPER)


@pytest.mark.slow
def test_non_editable_install_carries_the_configs(tmp_path):
    """``pip install .`` (not editable) into a fresh directory: the installed fishnet_d2, not this
    checkout, finds and merges the configs, and resolves their weight names."""
    target = tmp_path / "site"
    # From a copy of what setup.py reads: pip builds in the source tree (build/, egg-info), which
    # two runs at once (both detectron2 flavours) would share, and a test leaves a checkout alone.
    source = tmp_path / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "configs")  # the link, made anew
    shutil.copytree(REPO / "fishnet_d2", source / "fishnet_d2", ignore=junk)
    shutil.copytree(REPO / "configs", source / "configs")
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    script = textwrap.dedent(
        f"""
        import os, fishnet_d2
        from fishnet_d2 import model_zoo
        assert fishnet_d2.__file__.startswith({str(target)!r}), fishnet_d2.__file__
        path = model_zoo.get_config_file({PAPER!r})
        assert path.startswith({str(target)!r}) and os.path.isfile(path), path
        cfg = model_zoo.get_config({PAPER!r})
        lazy = model_zoo.get_config({PAPER.replace(".yaml", ".py")!r})
        # The config's weight name resolves (to the mirror's file; nothing listens there).
        from detectron2.utils.file_io import PathManager
        from fishnet_d2.weights.download import WeightsUnavailableError
        try:
            PathManager.get_local_path(cfg.MODEL.WEIGHTS)
        except WeightsUnavailableError as e:
            assert "could not download http://127.0.0.1:{port}/fishnet150_ckpt.tar" in str(e), e
        else:
            raise AssertionError("resolved with nothing listening")
        print(cfg.MODEL.FISHNET.DEPTH, len(model_zoo.list_configs()), "model" in lazy)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target), "FISHNET_D2_MIRROR": f"http://127.0.0.1:{port}", "FISHNET_D2_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["150", str(len(REPO_CONFIGS)), "True"]
