"""FishNetCheckpointer never leaves a partial checkpoint or tag under its final name: a save that
fails or is killed halfway leaves the previous checkpoint and ``last_checkpoint`` as they were."""

import io
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fishnet_d2.weights.checkpointer import CheckpointLoadError, FishNetCheckpointer

from .support import REPO


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4))


def files(directory):
    return sorted(os.listdir(directory))


@pytest.fixture
def saved(tmp_path):
    """A directory with one good checkpoint, model_0000001.pth, tagged as the last one."""
    model = small_model()
    checkpointer = FishNetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    assert files(tmp_path) == ["last_checkpoint", "model_0000001.pth"]
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    with torch.no_grad():
        model[0].weight.add_(1.0)  # what the failed save would have written
    return model, checkpointer, before


def write_half_then_fail(real_save):
    def save(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    return save


def assert_previous_intact(directory, before):
    assert files(directory) == sorted(before), "a partial or temporary file was left"
    for name, data in before.items():
        assert (directory / name).read_bytes() == data, f"{name} changed"
    fresh = small_model(seed=1)
    extra = FishNetCheckpointer(fresh, str(directory)).resume_or_load("", resume=True)
    assert extra == {"iteration": 1}
    torch.testing.assert_close(fresh[0].weight, small_model()[0].weight, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["model_0000002", "model_0000001"], ids=["new name", "same name"])
def test_failed_save_leaves_previous_checkpoint(saved, tmp_path, monkeypatch, name):
    _, checkpointer, before = saved
    monkeypatch.setattr(torch, "save", write_half_then_fail(torch.save))
    with pytest.raises(OSError, match="No space left on device"):
        checkpointer.save(name, iteration=2)
    monkeypatch.undo()
    assert_previous_intact(tmp_path, before)


def test_failed_tag_leaves_previous_tag(saved, tmp_path, monkeypatch):
    """The new checkpoint is complete, the tag still names the previous (complete) one."""
    model, checkpointer, before = saved
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        checkpointer.save("model_0000002", iteration=2)
    monkeypatch.undo()
    assert files(tmp_path) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    fresh = small_model(seed=1)
    assert FishNetCheckpointer(fresh).load(str(tmp_path / "model_0000002.pth")) == {"iteration": 2}
    torch.testing.assert_close(fresh[0].weight, model[0].weight, rtol=0, atol=0)


def test_saved_files_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        FishNetCheckpointer(small_model(), str(tmp_path)).save("model_final")
    finally:
        os.umask(umask)
    for name in ("model_final.pth", "last_checkpoint"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


# Saves model_0000001, then dies by SIGKILL halfway through writing model_0000002: no exception
# handler, no cleanup runs. argv: checkpointer class ("fishnet" or "detectron2"), directory.
KILLED_SAVE = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from fishnet_d2.weights.checkpointer import FishNetCheckpointer

    kind, directory = sys.argv[1:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    checkpointer = (FishNetCheckpointer if kind == "fishnet" else DetectionCheckpointer)(model, directory)
    checkpointer.save("model_0000001", iteration=1)
    real_save = torch.save

    def write_half_then_die(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print(len(data), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = write_half_then_die
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpointer.save("model_0000002", iteration=2)
    print("not killed", flush=True)
    """
)


def run_killed_save(tmp_path, kind):
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    directory = tmp_path / kind
    directory.mkdir()  # Detectron2 v0.6 does not create it
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), kind, str(directory)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    full_size = int(result.stdout.split()[0])
    return directory, full_size


@pytest.mark.slow
def test_killed_save_leaves_previous_checkpoint(tmp_path):
    directory, full_size = run_killed_save(tmp_path, "fishnet")
    names = files(directory)
    assert "model_0000002.pth" not in names
    assert (directory / "last_checkpoint").read_text() == "model_0000001.pth"
    # The half-written data is in a temporary file, which nothing lists or loads.
    partial = [n for n in names if n.startswith(".model_0000002.pth.") and n.endswith(".tmp")]
    assert len(partial) == 1 and os.path.getsize(directory / partial[0]) == full_size // 2, names
    assert set(names) == {"last_checkpoint", "model_0000001.pth", partial[0]}
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    checkpointer = FishNetCheckpointer(model, str(directory))
    assert checkpointer.get_all_checkpoint_files() == [str(directory / "model_0000001.pth")]
    assert checkpointer.resume_or_load("", resume=True) == {"iteration": 1}
    torch.manual_seed(0)
    expected = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    torch.testing.assert_close(model[0].weight, expected[0].weight, rtol=0, atol=0)


@pytest.mark.slow
def test_killed_save_control_detectron2_checkpointer(tmp_path):
    """The same kill with Detectron2's own checkpointer leaves a truncated file under the final
    name (what the test above guards against); FishNetCheckpointer refuses to load it."""
    directory, full_size = run_killed_save(tmp_path, "detectron2")
    assert os.path.getsize(directory / "model_0000002.pth") == full_size // 2
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    with pytest.raises(CheckpointLoadError, match="model_0000002.pth: not a readable torch checkpoint .truncated"):
        FishNetCheckpointer(model).load(str(directory / "model_0000002.pth"))
