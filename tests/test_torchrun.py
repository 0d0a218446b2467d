"""tools/train_net.py's main under torchrun, on CPU (GLOO) and 127.0.0.1: two processes train the
tiny Mask R-CNN and evaluate it; two "nodes" of one process each, through a c10d rendezvous, end
with the same weights; a worker killed (SIGKILL) after a checkpoint is restarted by torchrun
(--max-restarts 1; --standalone, and the static rendezvous of --master-port), continues from that checkpoint without --resume, and ends with the same
weights and a metrics.json without a repeated or missing iteration; a SIGTERM at an iteration
without a periodic checkpoint (--num-gpus 2) writes one, exits with status 75, and the run
resumed with --resume ends with the same weights."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fishnet_d2.engine import REQUEUE_EXIT_CODE

from .support import REPO, tiny_mask_rcnn_cfg

pytestmark = pytest.mark.slow  # trains in new processes

MAX_ITER = 24  # past iteration 19, where Detectron2's PeriodicWriter (every 20) writes metrics.json
CHECKPOINT_PERIOD = 15  # one periodic checkpoint, at iteration 14
TIMEOUT = 400

# tools/train_net.py on the tests' tiny dataset; SIGNAL_AT="ITERATION:SIGNAL:RANK" makes rank
# RANK send itself SIGNAL before ITERATION, in a first run only (not in one torchrun restarted).
TRAIN_NET = textwrap.dedent(
    """
    import os, signal
    from detectron2.engine import HookBase, default_argument_parser
    from detectron2.utils import comm

    import fishnet_d2.engine.cli
    from fishnet_d2.engine import launch_from_args, main
    from tests.support import register_tiny_shapes

    register_tiny_shapes(os.environ["TINY_SHAPES_ROOT"])


    class SignalAt(HookBase):
        def __init__(self, iteration, signum, rank):
            self.iteration, self.signum, self.rank = iteration, signum, rank

        def before_step(self):
            if self.trainer.iter == self.iteration and comm.get_rank() == self.rank:
                os.kill(os.getpid(), self.signum)


    class Trainer(fishnet_d2.engine.cli.Trainer):
        def build_hooks(self):
            hooks = super().build_hooks()
            if "SIGNAL_AT" in os.environ and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
                iteration, name, rank = os.environ["SIGNAL_AT"].split(":")
                hooks.append(SignalAt(int(iteration), getattr(signal, name), int(rank)))
            return hooks


    fishnet_d2.engine.cli.Trainer = Trainer

    if __name__ == "__main__":
        launch_from_args(main, default_argument_parser().parse_args())
    """
)


def wait_until_listening(endpoint: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Return once something accepts connections at ``endpoint`` ("HOST:PORT"); fail if
    ``process`` ends first or nothing listens within ``timeout`` seconds."""
    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the first node ended before its rendezvous store listened:\n{process.communicate()[0][-3000:]}"
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened at {endpoint} within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_shapes, tmp_path_factory):
    """(the config file, the training script, the environment of its processes)."""
    root, names = tiny_shapes
    work = tmp_path_factory.mktemp("torchrun")
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"],)
    cfg.SOLVER.IMS_PER_BATCH = 4  # 2 per process
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.STEPS = (MAX_ITER - 4,)
    cfg.SOLVER.CHECKPOINT_PERIOD = CHECKPOINT_PERIOD
    cfg.TEST.EVAL_PERIOD = 0  # evaluate once, after training
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detections even from a barely trained model
    cfg.SEED = 23
    (work / "config.yaml").write_text(cfg.dump())
    (work / "train_net.py").write_text(TRAIN_NET)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TINY_SHAPES_ROOT": str(root)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SIGNAL_AT", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"):
        env.pop(name, None)
    return work / "config.yaml", work / "train_net.py", env


def torchrun(*options):
    return [sys.executable, "-m", "torch.distributed.run", *options]


def run(command, output, env, **extra_env):
    """Run ``command`` (the training script's options added) into OUTPUT_DIR ``output``."""
    config, script, env = command[-1], command[-2], {**env, **extra_env}
    argv = [*command[:-2], str(script), "--config-file", str(config), "OUTPUT_DIR", str(output)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=REPO)


def final_weights(output):
    return torch.load(output / "model_final.pth", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def training_iterations(output):
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    return [m["iteration"] for m in metrics if "total_loss" in m], metrics


@pytest.fixture(scope="module")
def unbroken(setup, tmp_path_factory):
    """torchrun --nproc-per-node 2 --standalone: (OUTPUT_DIR, the completed process)."""
    config, script, env = setup
    output = tmp_path_factory.mktemp("unbroken")
    result = run([*torchrun("--nproc-per-node", "2", "--standalone"), script, config], output, env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return output, result


def test_torchrun_two_processes_train_and_evaluate(unbroken):
    output, result = unbroken
    for log in ("log.txt", "log.txt.rank1"):
        text = (output / log).read_text()
        assert "World size: 2" in text, log
        assert "Start inference on 2 batches" in text, log  # 4 validation images, 2 per process
    iterations, metrics = training_iterations(output)
    assert iterations == [19, MAX_ITER - 1], iterations
    evaluated = [m for m in metrics if "bbox/AP" in m]
    assert len(evaluated) == 1 and "segm/AP" in evaluated[0], metrics
    assert (output / "inference" / "coco_instances_results.json").is_file()


def test_two_nodes_through_c10d_rendezvous(setup, unbroken, tmp_path):
    """Two torchrun agents of one process each, meeting at 127.0.0.1: the same run as one
    machine with two processes (each rank trains on its share of the data with its own seeds)."""
    config, script, env = setup
    endpoint = f"127.0.0.1:{free_port()}"
    options = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes"]
    nodes = []
    for node in range(2):
        argv = [*torchrun(*options), str(script), "--config-file", str(config), "OUTPUT_DIR", str(tmp_path / f"node{node}")]
        nodes.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO))
        if node == 0:
            # Both agents run on 127.0.0.1, so both would try to host the rendezvous store at the
            # endpoint; on a cluster only the endpoint's machine does. The second starts once the
            # first one's store listens, as a second machine would find it.
            wait_until_listening(endpoint, nodes[0])
    try:
        printed = [node.communicate(timeout=TIMEOUT)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(p[-3000:] for p in printed)
    # Rank 0 is on one node or the other: its OUTPUT_DIR has the final weights and the evaluation.
    rank0 = [tmp_path / f"node{node}" for node in range(2) if (tmp_path / f"node{node}" / "model_final.pth").exists()]
    assert len(rank0) == 1, rank0
    assert "World size: 2" in (rank0[0] / "log.txt").read_text()
    assert any("bbox/AP" in m for m in training_iterations(rank0[0])[1])
    assert_same_weights(final_weights(rank0[0]), final_weights(unbroken[0]))


@pytest.mark.parametrize("rendezvous", ["standalone", "static"])
def test_sigkill_restarted_by_torchrun_continues_from_the_checkpoint(setup, unbroken, tmp_path, rendezvous):
    """Rank 1 dies (SIGKILL) before iteration 21, after rank 0 wrote metrics.json's line of
    iteration 19; torchrun restarts both workers, which continue after the checkpoint of
    iteration 14, without --resume. With --standalone (c10d rendezvous) and with torchrun's
    default static rendezvous on --master-port, and no environment variable: both keep one store
    across restarts, in which the restarted workers' process group has keys of its own."""
    config, script, env = setup
    output = tmp_path / "output"
    where = ["--standalone"] if rendezvous == "standalone" else ["--master-port", str(free_port())]
    command = [*torchrun("--nproc-per-node", "2", *where, "--max-restarts", "1"), script, config]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in env
    result = run(command, output, env, SIGNAL_AT="21:SIGKILL:1")
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-4000:]
    log = (output / "log.txt").read_text()
    assert re.findall(r"Starting training from iteration (\d+)", log) == ["0", str(CHECKPOINT_PERIOD)]
    assert "Restarted by torchrun: resuming from the last checkpoint" in log
    iterations, metrics = training_iterations(output)
    assert iterations == [19, MAX_ITER - 1], iterations  # 19 once: the killed run's line was dropped
    assert len([m for m in metrics if "bbox/AP" in m]) == 1
    assert_same_weights(final_weights(output), final_weights(unbroken[0]))


def test_sigterm_checkpoints_exits_75_and_resumes(setup, unbroken, tmp_path):
    """--num-gpus 2 (Detectron2's launcher): rank 0 gets SIGTERM during iteration 9; both ranks
    stop after it, the checkpoint of iteration 9 is written, the launcher exits with 75; the run
    resumed with --resume ends with the weights of the unbroken torchrun run."""
    config, script, env = setup
    output = tmp_path / "output"
    launcher = ["--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}"]
    argv = [sys.executable, str(script), "--config-file", str(config), *launcher, "OUTPUT_DIR", str(output)]
    stopped = subprocess.run(argv, capture_output=True, text=True, env={**env, "SIGNAL_AT": "9:SIGTERM:0"}, timeout=TIMEOUT, cwd=REPO)
    assert stopped.returncode == REQUEUE_EXIT_CODE, (stopped.stdout + stopped.stderr)[-4000:]
    assert (output / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(p.name for p in output.glob("model_*.pth")) == ["model_0000009.pth"]
    assert "Stopped by SIGTERM after iteration 9" in (output / "log.txt").read_text()

    launcher[-1] = f"tcp://127.0.0.1:{free_port()}"
    argv = [sys.executable, str(script), "--config-file", str(config), *launcher, "--resume", "OUTPUT_DIR", str(output)]
    resumed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=REPO)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "Starting training from iteration 10" in (output / "log.txt").read_text()
    assert_same_weights(final_weights(output), final_weights(unbroken[0]))
