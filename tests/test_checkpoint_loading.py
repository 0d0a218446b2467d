"""FishNetCheckpointer reads checkpoints without running their code and refuses, with a message
naming the file and the problem, anything that is not a checkpoint of the model; the model is
left as it was."""

import copy
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.modeling import build_backbone

from fishnet_d2.weights.checkpointer import CheckpointLoadError, FishNetCheckpointer, UnsafeCheckpointError
from fishnet_d2.weights.convert import save_d2_checkpoint
from fishnet_d2.weights.files import read_checkpoint

from .support import tiny_mask_rcnn_cfg

# torch warns before refusing a plain pickle (protocol > 2) given as a torch file.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def tiny_backbone_state(seed: int = 1, **arch_changes):
    """The state_dict of the detector's FishNet, alone (as ImageNet weights are), random weights."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_backbone"
    for key, value in arch_changes.items():
        cfg.MODEL.FISHNET.ARCH[key] = value
    torch.manual_seed(seed)
    backbone = build_backbone(cfg)
    for tensor in backbone.state_dict().values():
        if tensor.is_floating_point():  # BatchNorm's statistics too, which are constants otherwise
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    return backbone.state_dict()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the model was changed"


def assert_bottom_up_equals(model, state):
    bottom_up = model.backbone.bottom_up.state_dict()
    assert bottom_up.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(bottom_up[key], value, rtol=0, atol=0, msg=key)


# ---- files that load ----


def test_resume_round_trip(model, pristine_model, tmp_path):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    FishNetCheckpointer(model, str(tmp_path)).save("model_0000009", iteration=9)
    fresh = copy.deepcopy(pristine_model)
    extra = FishNetCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra == {"iteration": 9}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_model_zoo_pkl_initialises_the_detector_backbone(model, tmp_path, protocol):
    """A backbone-only .pkl in Detectron2's model-zoo format (the converter's output): names are
    matched by Detectron2's heuristics; protocol 2 is what Python 2 era model-zoo files use."""
    state = tiny_backbone_state()
    path = tmp_path / "imagenet.pkl"
    if protocol == pickle.HIGHEST_PROTOCOL:
        save_d2_checkpoint(state, str(path), author="test")
    else:
        data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test", "matching_heuristics": True}
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    FishNetCheckpointer(model).load(str(path))
    assert_bottom_up_equals(model, state)


def test_backbone_pth_needs_matching_heuristics(model, tmp_path):
    """Bare backbone names match the detector only by Detectron2's heuristics: without them the
    file is "of another model"; ``?matching_heuristics=True`` (newer Detectron2's option) loads it."""
    state = tiny_backbone_state()
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    before = snapshot(model)
    with pytest.raises(CheckpointLoadError, match="the weights of another model: the file gives 0 of the"):
        FishNetCheckpointer(model).load(str(path))
    assert_unchanged(model, before)
    FishNetCheckpointer(model).load(f"{path}?matching_heuristics=True")
    assert_bottom_up_equals(model, state)


def test_imagenet_classifier_and_dataparallel_prefix(model, tmp_path):
    """The converter's .pth of a classifier (``linear`` weights, unknown to the detector) and a
    state_dict saved from DataParallel (``module.`` prefix) load."""
    state = tiny_backbone_state()
    classifier = {"classifier.fc.weight": torch.rand(10, 208), "classifier.fc.bias": torch.rand(10)}
    save_d2_checkpoint({**state, **classifier}, str(tmp_path / "imagenet.pth"), author="test")
    FishNetCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    assert_bottom_up_equals(model, state)

    trained = {f"module.{k}": v + 1 for k, v in model.state_dict().items()}
    torch.save({"model": trained}, tmp_path / "ddp.pth")
    FishNetCheckpointer(model).load(str(tmp_path / "ddp.pth"))
    for key, value in trained.items():
        assert torch.equal(model.state_dict()[key[len("module.") :]], value), key


def test_caffe2_and_pycls_files(model, tmp_path):
    """Detectron1 / Caffe2 model-zoo pickles (weights under "blobs", SGD's momentum beside them)
    and pycls ``.pyth`` files ("model_state") give their weights with Detectron2's name matching;
    a ``.pyth`` loads into the detector."""
    state = tiny_backbone_state()
    blobs = {k: v.numpy() for k, v in state.items()}
    momentum = {f"{k}_momentum": np.zeros_like(v) for k, v in blobs.items()}
    (tmp_path / "caffe2.pkl").write_bytes(pickle.dumps({"blobs": {**blobs, **momentum}}, protocol=2))
    checkpoint = read_checkpoint(str(tmp_path / "caffe2.pkl"))
    assert checkpoint.keys() == {"model", "__author__", "matching_heuristics"}
    assert checkpoint["__author__"] == "Caffe2" and checkpoint["matching_heuristics"] is True
    assert checkpoint["model"].keys() == state.keys()
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in state.items())

    torch.save({"model_state": state, "epoch": 3}, tmp_path / "pycls.pyth")
    checkpoint = read_checkpoint(str(tmp_path / "pycls.pyth"))
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(weights) < len(state) and checkpoint["model"].keys() == weights.keys()
    assert (checkpoint["__author__"], checkpoint["matching_heuristics"]) == ("pycls", True)
    FishNetCheckpointer(model).load(str(tmp_path / "pycls.pyth"))
    bottom_up = model.backbone.bottom_up.state_dict()
    assert all(torch.equal(bottom_up[k], v) for k, v in weights.items())


# ---- files that are refused ----


def write_file(path, kind: str, model) -> None:
    """Write one kind of bad file to ``path``."""
    good_state = model.state_dict()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("MODEL:\n  WEIGHTS: model_final.pth\n" * 20)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        full = path.with_name("full" + path.suffix)
        if path.suffix == ".pkl":
            save_d2_checkpoint(good_state, str(full), author="test")
        else:
            torch.save({"model": good_state, "iteration": 3}, full)
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "a list":
        if path.suffix == ".pkl":
            path.write_bytes(pickle.dumps([np.zeros(3)]))
        else:
            torch.save([torch.zeros(3)], path)
    elif kind == "no weights":
        obj = {"model": {}, "__author__": "test"}
        path.write_bytes(pickle.dumps(obj)) if path.suffix == ".pkl" else torch.save(obj, path)
    elif kind == "non-array weights":
        obj = {"model": {"backbone.w": "0.5", "backbone.b": [1.0]}, "__author__": "test"}
        path.write_bytes(pickle.dumps(obj)) if path.suffix == ".pkl" else torch.save(obj, path)
    elif kind == "object array":
        obj = {"model": {"backbone.w": np.array([None, 1], dtype=object)}, "__author__": "test"}
        path.write_bytes(pickle.dumps(obj))
    elif kind == "torch file as pkl":
        torch.save({"model": good_state}, path)
    elif kind == "plain pickle as pth":
        path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in good_state.items()}}))
    elif kind == "pyth without model_state":
        torch.save({"model": good_state}, path)
    elif kind == "official FishNet":
        torch.save({"state_dict": {"module.conv1.0.weight": torch.rand(16, 3, 3, 3)}, "epoch": 100}, path)
    elif kind == "torchvision resnet":
        state = torchvision.models.resnet18(weights=None).state_dict()
        torch.save({"model": state}, path)
    elif kind == "resnet, model zoo pkl":
        state = torchvision.models.resnet18(weights=None).state_dict()
        save_d2_checkpoint(state, str(path), author="test")
    elif kind == "FishNet of other widths":
        state = tiny_backbone_state(
            STEM_CHANNELS=32, TAIL_CHANNELS=[32, 64, 128], BODY_CHANNELS=[128, 96, 64], HEAD_CHANNELS=[96, 224, 416]
        )
        if path.suffix == ".pkl":  # names matched by Detectron2's heuristics
            save_d2_checkpoint(state, str(path), author="test")
        else:  # the detector's names
            torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in state.items()}}, path)
    elif kind == "detector, renamed":
        torch.save({"model": {f"net.{k}": v for k, v in good_state.items()}}, path)
    else:
        raise AssertionError(kind)


# (kind, suffix, text the message must contain)
BAD_FILES = [
    ("empty", ".pth", "empty file, not a checkpoint"),
    ("empty", ".pkl", "empty file, not a checkpoint"),
    ("text", ".pth", "not a readable torch checkpoint (truncated, or another format)"),
    ("text", ".pkl", "not a readable pickle (truncated, or not a pickle)"),
    ("random bytes", ".pth", "not a readable torch checkpoint (truncated, or another format)"),
    ("random bytes", ".pkl", "not a readable pickle"),
    ("truncated", ".pth", "not a readable torch checkpoint (truncated"),
    ("truncated", ".pkl", "not a readable pickle (truncated"),
    ("a list", ".pth", "not a checkpoint: the file holds a list, not a dict of weights"),
    ("a list", ".pkl", "not a checkpoint: the pickle holds a list, not a dict of weights"),
    ("no weights", ".pth", "its weights ('model') are empty"),
    ("no weights", ".pkl", "its weights ('model') are empty"),
    ("non-array weights", ".pth", "2 of 2 are not: backbone.w (str), backbone.b (list)"),
    ("non-array weights", ".pkl", "2 of 2 are not: backbone.w (str), backbone.b (list)"),
    ("object array", ".pkl", "backbone.w (numpy dtype object)"),
    ("plain pickle as pth", ".pth", "a plain pickle, not a torch checkpoint"),
    ("torch file as pkl", ".pkl", "a torch checkpoint (zip archive) under a .pkl name: name it .pth"),
    ("pyth without model_state", ".pyth", "a .pyth (pycls) checkpoint needs a dict 'model_state'; found model"),
    ("official FishNet", ".pth", "the file's names: conv1.0.weight\n  ImageNet weights of a FishNet (the official code's"),
    ("torchvision resnet", ".pth", "the weights of another model: the file gives 0 of the"),
    ("resnet, model zoo pkl", ".pkl", "the weights of another model: the file gives 0 of the"),
    ("FishNet of other widths", ".pkl", "after Detectron2 matched names by suffix"),
    ("FishNet of other widths", ".pth", "other shape: backbone.bottom_up.stem.conv1.conv.weight: (16, 3, 3, 3) in the file, (8, 3, 3, 3) in the model"),
    ("detector, renamed", ".pth", "the weights of another model: the file gives 0 of the"),
]


@pytest.mark.parametrize("kind, suffix, expected", BAD_FILES, ids=[f"{k}{s}" for k, s, _ in BAD_FILES])
def test_bad_file_is_refused(model, tmp_path, kind, suffix, expected):
    path = tmp_path / f"weights{suffix}"
    write_file(path, kind, model)
    before = snapshot(model)
    with pytest.raises(CheckpointLoadError) as error:
        FishNetCheckpointer(model).load(str(path))
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert not isinstance(error.value, UnsafeCheckpointError) or kind == "random bytes", message
    assert_unchanged(model, before)


def test_other_model_threshold(model, tmp_path):
    """Half of the backbone from the file is enough by default; min_backbone_match asks more."""
    state = model.state_dict()
    keys = [k for k in state if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    half = {k: state[k] + 1 for k in keys[: (len(keys) + 1) // 2]}
    torch.save({"model": half}, tmp_path / "half.pth")
    with pytest.raises(CheckpointLoadError, match=f"gives {len(half)} of the {len(keys)} tensors .* min_backbone_match=0.9"):
        FishNetCheckpointer(model, min_backbone_match=0.9).load(str(tmp_path / "half.pth"))
    FishNetCheckpointer(model).load(str(tmp_path / "half.pth"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in half.items())


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5", True, None])
def test_min_backbone_match_must_be_a_fraction(model, value):
    with pytest.raises(ValueError, match=rf"min_backbone_match={value!r}: allowed a number in \[0, 1\]"):
        FishNetCheckpointer(model, min_backbone_match=value)


def test_missing_file_and_unknown_option(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nowhere.pth.*no such file"):
        FishNetCheckpointer(model).load(str(tmp_path / "nowhere.pth"))
    torch.save({"model": model.state_dict()}, tmp_path / "ok.pth")
    with pytest.raises(ValueError, match="Unsupported query remaining.*strict"):
        FishNetCheckpointer(model).load(f"{tmp_path / 'ok.pth'}?strict=1")


# ---- files that would run code ----


class Payload:
    """Unpickling an instance calls ``function(*args)``: here, each creates a file."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payload(kind: str, target: str) -> Payload:
    if kind == "open":
        return Payload(open, target, "w")
    if kind == "os.system":
        return Payload(os.system, f"touch {target}")
    if kind == "numpy.save":
        return Payload(np.save, target, np.zeros(1))
    raise AssertionError(kind)


PAYLOADS = {"open": open, "os.system": os.system, "numpy.save": np.save}
FORMATS = ["pkl protocol 2", "pkl protocol 5", "pth (torch.save)", "pth raw pickle protocol 2", "pth raw pickle protocol 5"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_pickle_runs_no_code(model, tmp_path, fmt, kind):
    target = tmp_path / "created_by_unpickling.npy"
    path = tmp_path / ("evil.pkl" if fmt.startswith("pkl") else "evil.pth")
    # torch.save'd files hold tensors; plain pickles numpy arrays (a pickled tensor is refused too).
    array = torch.zeros(3) if fmt == "pth (torch.save)" else np.zeros(3)
    weights = {"evil": payload(kind, str(target)), "backbone.bottom_up.stem.conv1.conv.weight": array}
    checkpoint = {"model": weights, "__author__": "attacker"}
    if fmt == "pth (torch.save)":
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint, protocol=int(fmt[-1])))
    assert not target.exists()
    before = snapshot(model)
    with pytest.raises(UnsafeCheckpointError) as error:
        FishNetCheckpointer(model).load(str(path))
    function = PAYLOADS[kind]
    # What pickle writes: _io.open (io.open before Python 3.12), posix.system, numpy.save.
    global_name = f"{function.__module__}.{function.__qualname__}"
    message = str(error.value)
    assert message.startswith(f"{path}: refused to load: reading it would call "), message
    assert global_name in message.split("would call ")[1].split(", not allowed")[0].split(", "), message
    assert not target.exists(), "unpickling ran the payload"
    assert_unchanged(model, before)
    # The control: plain pickle does run it (the file is what the test says it is).
    if fmt.startswith("pkl"):
        pickle.loads(path.read_bytes())
        assert target.exists() or target.with_suffix(".npy").exists()
