"""The release: the versions fishnet_d2 needs, refused when older at import; the wheel and sdist
carry what users need (tools/check_dist.py); the CHANGELOG names the version."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fishnet_d2
from fishnet_d2.requirements import MINIMUM_VERSIONS, unmet_requirements

ROOT = Path(__file__).resolve().parents[1]


def test_versions_older_than_needed_are_named_with_what_is_needed():
    assert unmet_requirements({"torch": "2.14.1+cu128", "torchvision": "0.29.1", "detectron2": "0.6+pb1.pyonly.mainlines"}) == []
    assert unmet_requirements({"torch": "2.4.0", "torchvision": "0.19.0", "detectron2": "0.6"}) == []
    assert unmet_requirements({"torch": "2.3.1+cu121", "torchvision": "0.18.1", "detectron2": "0.5"}) == [
        "torch 2.4 or newer (found 2.3.1+cu121)",
        "torchvision 0.19 or newer (found 0.18.1)",
        "detectron2 0.6 or newer (found 0.5)",
    ]
    assert unmet_requirements({"torch": "2.10.0"}) == []  # numbers, not strings: 10 > 4
    assert set(MINIMUM_VERSIONS) == {"torch", "torchvision", "detectron2"}


@pytest.mark.slow
def test_import_refuses_an_old_torch():
    child = subprocess.run(
        [sys.executable, "-c", "import torch; torch.__version__ = '2.3.1'; import fishnet_d2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert child.returncode != 0
    assert "ImportError: fishnet_d2 needs torch 2.4 or newer (found 2.3.1)" in child.stderr


def test_changelog_has_an_entry_for_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {fishnet_d2.__version__} (" in text


@pytest.mark.slow
def test_the_built_wheel_and_sdist_carry_the_package_and_a_broken_wheel_is_caught(tmp_path):
    """`make release`'s build and checks pass; tools/check_dist.py fails for a wheel that lost a
    config, naming it."""
    dist = tmp_path / "release"
    env = {**os.environ, "PY": sys.executable, "FLAVOURS": "", "DIST": str(dist)}
    subprocess.run(["bash", "tools/check_wheel.sh"], cwd=ROOT, check=True, env=env)
    (wheel,) = dist.glob("*.whl")
    broken = tmp_path / "dist"
    broken.mkdir()
    for sdist in dist.glob("*.tar.gz"):
        (broken / sdist.name).write_bytes(sdist.read_bytes())
    lost = "fishnet_d2/model_zoo/configs/Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(broken / wheel.name, "w") as target:
        assert lost in source.namelist()
        for item in source.infolist():
            if item.filename != lost:
                target.writestr(item, source.read(item.filename))
    child = subprocess.run([sys.executable, "tools/check_dist.py", str(broken)], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == 1
    assert "configs missing from the wheel: ['Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml']" in child.stderr

