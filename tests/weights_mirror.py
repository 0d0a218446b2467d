"""A weights mirror on 127.0.0.1 and the published files it serves, generated (no internet at
test time); conftest.py's fixtures ``published``, ``mirror`` and ``published_mirror`` start them.

The files are generated from the layouts in tests/data/ (official) and
fishnet_d2.weights.pytorchcv_layout (pytorchcv), stored as their sources publish them: the official
checkpoint as the 2018 code saved it (a DataParallel model's ``state_dict`` with ``best_prec1`` and
``optimizer``, torch's legacy format), pytorchcv's state_dict zipped. The published pytorchcv file
is checked by the SHA-1 its name carries, so the generated one, with other bytes, is also written
under its own hash (``own_pytorchcv``); under the published name it must be refused.
"""

import hashlib
import http.server
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from fishnet_d2 import FISHNET_VARIANTS
from fishnet_d2.weights.pytorchcv_layout import pytorchcv_layout
from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS

from .support import reference_layout

PYTORCHCV_150 = PUBLISHED_WEIGHTS["fishnet150_pytorchcv"]


def plausible(key: str, shape: Tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A random value for a weight named ``key`` that keeps a FishNet's activations finite:
    positive variances, small convolutions (random BatchNorm statistics send a frozen FishNet-150
    to Inf)."""
    if key.endswith("num_batches_tracked"):
        return torch.randint(0, 100, shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    if key.endswith("running_var"):
        return 1.0 + 0.1 * noise.abs()
    if len(shape) == 1 and key.endswith("weight"):  # a BatchNorm's scale
        return 1.0 + 0.1 * noise
    return 0.01 * noise


def official_checkpoint(depth: int) -> Dict:
    """An official checkpoint as published: DataParallel keys, best_prec1, SGD state."""
    generator = torch.Generator().manual_seed(depth)
    state_dict = {f"module.{k}": plausible(k, shape, generator) for k, shape in reference_layout(depth).items()}
    first = next(iter(state_dict))
    optimizer = {
        "state": {140000000000000: {"momentum_buffer": torch.zeros_like(state_dict[first])}},
        "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4, "nesterov": False, "params": [140000000000000]}],
    }  # fmt: skip
    return {"state_dict": state_dict, "best_prec1": torch.tensor(78.14), "optimizer": optimizer}


def pytorchcv_state_dict(depth: int) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(depth + 1)
    return {key: plausible(key, tuple(shape), generator) for key, (_, shape) in pytorchcv_layout(FISHNET_VARIANTS[depth], 1000).items()}


def zip_as_pytorchcv(pth: Path, archive: Path, member: str) -> None:
    """``pth`` deflated into ``archive`` as ``member``, as pytorchcv publishes its weights."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        zipped.write(pth, member)


def write_published(root: Path) -> Dict[str, Path]:
    """The published files, generated into ``root``: {file name on the mirror: the file}, and under
    "own_pytorchcv" the pytorchcv archive named with its own SHA-1."""
    files = {}
    for depth in (99, 150):
        entry = PUBLISHED_WEIGHTS[f"fishnet{depth}_official"]
        torch.save(official_checkpoint(depth), root / entry.file_name, _use_new_zipfile_serialization=False)
        files[entry.file_name] = root / entry.file_name
    own = root / "own"
    own.mkdir()
    torch.save(pytorchcv_state_dict(150), own / "weights.pth")
    sha1 = hashlib.sha1((own / "weights.pth").read_bytes()).hexdigest()
    pth = own / "weights.pth"
    files["own_pytorchcv"] = own / f"fishnet150-0475-{sha1[:8]}.pth.zip"
    zip_as_pytorchcv(pth, files["own_pytorchcv"], files["own_pytorchcv"].stem)
    # The same bytes under the published name: their SHA-1 is not the published one.
    files[PYTORCHCV_150.file_name] = root / PYTORCHCV_150.file_name
    zip_as_pytorchcv(pth, files[PYTORCHCV_150.file_name], PYTORCHCV_150.archive_member)
    return files


class Mirror:
    """An HTTP server on 127.0.0.1 serving ``files`` ({name: path}) at ``/<name>``, recording each
    request. ``faults[name]``: ("status", code), ("drop", n: n bytes of 2n announced, then the
    connection closes), ("slow", seconds between 1 MiB chunks) or ("page", text served with status
    200)."""

    def __init__(self, files: Dict[str, Path]):
        self.files = dict(files)
        self.faults: Dict[str, Tuple[str, object]] = {}
        self.requests: List[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                mirror.requests.append(name)
                kind, value = mirror.faults.get(name, (None, None))
                if kind == "status":
                    self.send_error(value)
                    return
                if kind == "page":
                    data = value.encode()
                elif kind == "drop":
                    data = bytes(2 * value)
                elif name in mirror.files:
                    data = mirror.files[name].read_bytes()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if kind == "drop":
                        self.wfile.write(data[:value])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    for start in range(0, len(data), 1 << 20):
                        self.wfile.write(data[start : start + (1 << 20)])
                        if kind == "slow":
                            time.sleep(value)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
