"""Settings and fixtures for the whole test suite (helpers without state are in support.py)."""

import copy
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
import torch
from detectron2.modeling import build_model

from fishnet_d2.apps.data import DEMO_DATASET_PREFIX, DEMO_SPEC, ensure_synthetic_shapes, register_synthetic_shapes
from fishnet_d2.engine import Trainer
from fishnet_d2.model_zoo import load_config

from fishnet_d2.weights.download import CACHE_ENV, MIRROR_ENV

from .support import REFERENCE, REPO, TINY_SHAPES, register_tiny_shapes, tiny_mask_rcnn_cfg
from .weights_mirror import Mirror, write_published


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tests' models are tiny: one thread runs them faster than threads competing for the
    machine's cores (CI has two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden() -> Dict:
    """tests/data/tiny_golden.pt, made with the official FishNet code: its ``state_dict``,
    ``input``, ``stage_outputs`` and ``logits`` (tests/data/README.md)."""
    return torch.load(REFERENCE / "tiny_golden.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def pristine_model() -> torch.nn.Module:
    """The tiny Mask R-CNN (tiny_mask_rcnn_cfg) with random weights (seed 0), in eval mode.
    Shared by the session: tests change the `model` fixture's copy of it, never this one."""
    torch.manual_seed(0)
    return build_model(tiny_mask_rcnn_cfg()).eval()


@pytest.fixture
def model(pristine_model: torch.nn.Module) -> torch.nn.Module:
    """A fresh copy of pristine_model, for this test alone."""
    return copy.deepcopy(pristine_model)


@pytest.fixture(scope="session")
def demo_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A $DETECTRON2_DATASETS folder holding the demo's dataset (DEMO_SPEC), generated once per
    session, so that the runs given it only read it."""
    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_shapes(root / DEMO_DATASET_PREFIX, DEMO_SPEC)
    return root


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, str]]:
    """TINY_SHAPES generated and registered once per session: (root, split -> dataset name)."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    ensure_synthetic_shapes(root, TINY_SHAPES)  # here, so that worker processes only read it
    return root, register_tiny_shapes(root)


@pytest.fixture(scope="session")
def demo_checkpoint(demo_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Dict[str, str]]:
    """The demo's Mask R-CNN (configs/Demo) trained on the demo's dataset for 30 iterations of 2
    images (the demo runs 900 of 8): trained weights, in a minute. (config file, model_final.pth,
    split -> the registered name of the demo's split; none is the config's DATASETS.TEST)."""
    names = register_synthetic_shapes("fishnet_tests_demo", root=demo_datasets / DEMO_DATASET_PREFIX, spec=DEMO_SPEC)
    output = tmp_path_factory.mktemp("demo_checkpoint")
    config = REPO / "configs" / "Demo" / "mask_rcnn_fishnet_tiny_FPN_demo.yaml"
    overrides = {
        "DATASETS.TRAIN": f"('{names['train']}',)", "DATASETS.TEST": "()",
        "SOLVER.MAX_ITER": "30", "SOLVER.IMS_PER_BATCH": "2", "SOLVER.WARMUP_ITERS": "10",
        "SOLVER.STEPS": "()", "SOLVER.CHECKPOINT_PERIOD": "1000", "TEST.EVAL_PERIOD": "0",
    }  # fmt: skip
    cfg = load_config(str(config), [*(item for pair in overrides.items() for item in pair), "OUTPUT_DIR", str(output)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return config, output / "model_final.pth", names


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The published weights files, generated once per session (tests/weights_mirror.py)."""
    return write_published(tmp_path_factory.mktemp("published"))


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """An empty mirror on 127.0.0.1, named by FISHNET_D2_MIRROR; an empty cache in FISHNET_D2_CACHE."""
    server = Mirror({})
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    yield server
    server.close()


@pytest.fixture
def published_mirror(mirror: Mirror, published: Dict[str, Path]) -> Mirror:
    """The mirror of the published files."""
    mirror.files.update(published)
    return mirror
