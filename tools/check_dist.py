#!/usr/bin/env python
"""Check what the built sdist and wheel carry (tools/check_wheel.sh runs it):

    python tools/check_dist.py build/release

The wheel: every package of fishnet_d2 (the programs of fishnet_d2.apps too), every config of
configs/ as model-zoo package data, the weight table, the version of fishnet_d2/version.py, the
Python versions and extras setup.py declares. The sdist: the configs and the texts, and a
CHANGELOG entry for the version. Prints each file's size and what it holds.
"""

import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]


def expected_configs() -> List[str]:
    return sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".py"))


def expected_packages() -> List[str]:
    return sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "fishnet_d2").rglob("__init__.py"))


def check_wheel(wheel: Path, version: str) -> List[str]:
    problems = []
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "fishnet_d2/model_zoo/configs/"
    configs = sorted(n[len(prefix):] for n in names if n.startswith(prefix))
    missing = sorted(set(expected_configs()) - set(configs))
    if missing:
        problems.append(f"configs missing from the wheel: {missing}")
    packages = sorted(str(Path(n).parent) for n in names if n.endswith("/__init__.py"))
    if packages != expected_packages():
        problems.append(f"packages {sorted(set(expected_packages()) ^ set(packages))} differ from the source tree's")
    if "fishnet_d2/weights/zoo.py" not in names:
        problems.append("the weight table (fishnet_d2/weights/zoo.py) is missing")
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for line in (f"Version: {version}", "Requires-Python: >=3.11", "Provides-Extra: apps", "Provides-Extra: test"):
        if line not in metadata.splitlines():
            problems.append(f"METADATA lacks {line!r}")
    print(f"{wheel.name}: {wheel.stat().st_size / 1e3:.0f} kB, {len(names)} files, {len(packages)} packages, {len(configs)} configs")
    return problems


def check_sdist(sdist: Path, version: str) -> List[str]:
    problems = []
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    configs = sorted(n[len("configs/"):] for n in names if n.startswith("configs/") and n.endswith((".yaml", ".py")))
    if configs != expected_configs():
        problems.append(f"configs of the sdist differ: {sorted(set(expected_configs()) ^ set(configs))}")
    for text in ("README.md", "LICENSE", "CHANGELOG.md", "setup.py"):
        if text not in names:
            problems.append(f"{text} is missing from the sdist")
    print(f"{sdist.name}: {sdist.stat().st_size / 1e3:.0f} kB, {len(names)} files")
    return problems


def main() -> int:
    dist = Path(sys.argv[1])
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "fishnet_d2" / "version.py").read_text()).group(1)
    (wheel,), (sdist,) = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    problems = check_wheel(wheel, version) + check_sdist(sdist, version)
    if f"## {version} " not in (ROOT / "CHANGELOG.md").read_text():
        problems.append(f"CHANGELOG.md has no entry '## {version} (date)'")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
