"""docs/timm.md is what the code does: its tables are the registered tags and the models'
``feature_info``, and its examples run (against a mirror of the published weights on 127.0.0.1),
printing what their comments say."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

timm = pytest.importorskip("timm")

import fishnet_d2.timm_models  # noqa: E402,F401  registers the models
from fishnet_d2.weights.zoo import SCHEME  # noqa: E402

from .doc_blocks import parse_blocks  # noqa: E402
from .support import REPO  # noqa: E402

DOC = REPO / "docs" / "timm.md"
THIS = "tests/test_timm_docs.py::test_the_examples_run"


def table_after(text: str, heading: str) -> List[List[str]]:
    """The rows (cells, backquotes removed) of the first Markdown table after ``heading``."""
    rows = []
    for line in text[text.index(heading) :].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def test_the_tag_table_is_the_registry():
    rows = table_after(DOC.read_text(), "| model | tag")
    documented = {f"{model.strip('`')}.{tag.split()[0].strip('`')}": weights.split()[0].strip("`")
                  for model, tag, weights, _ in rows if weights}  # fmt: skip
    assert set(documented) == set(timm.list_models("fishnet*", pretrained=True))
    for name, weights in documented.items():
        assert timm.models.get_pretrained_cfg(name).url == SCHEME + weights
    defaults = [f"{m.strip('`')}.{t.split()[0].strip('`')}" for m, t, _, _ in rows if "(default)" in t]
    assert all(timm.models.get_pretrained_cfg(d.split(".")[0]).tag == d.split(".")[1] for d in defaults)


@pytest.mark.parametrize("location, heading", [("head", "The default, `\"head\"`"), ("all", "`feature_location=\"all\"` lists")])
def test_the_feature_tables_are_feature_info(location, heading):
    rows = table_after(DOC.read_text(), heading)
    for name in ("fishnet99", "fishnet150", "fishnet201"):
        with torch.device("meta"):
            model = timm.create_model(name, feature_location=location)
        listed = [[str(i["index"]), i["name"], i["module"], str(i["num_chs"]), str(i["reduction"])] for i in model.feature_info]
        assert rows == listed, name


def examples() -> List[str]:
    blocks, _ = parse_blocks(DOC)
    return [b.text for b in blocks if b.lang == "python" and THIS in b.test_refs()]


@pytest.mark.slow
def test_the_examples_run(published_mirror, tmp_path):
    """Each example in a new interpreter, as a user runs it (the named weights from the mirror);
    a ``print(...)  # text`` prints ``text``."""
    texts = examples()
    assert len(texts) == 5
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # the mirror and cache: the fixture's
    for text in texts:
        (tmp_path / "example.py").write_text(text)
        process = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert process.returncode == 0, f"{text}\n{process.stderr[-3000:]}"
        expected = re.findall(r"^print\(.*\)  # (.*)$", text, re.M)
        assert process.stdout.splitlines() == expected, text
    assert published_mirror.requests == ["fishnet150_ckpt.tar"]  # downloaded once, then the cache
