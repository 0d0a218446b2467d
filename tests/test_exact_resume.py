"""A training run interrupted at any iteration and resumed ends with the weights of the same run
done without interruption, bit for bit on CPU: the checkpoint keeps the data order's position and
seed, and the training process's randomness is derived from (seed, rank, iteration). In this
process: interruptions by SIGTERM (a checkpoint at that iteration, exit status 75) and by a crash
(resumed from the last periodic checkpoint), with data-loader workers and without."""

import itertools
import json
import os
import signal

import pytest
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from fishnet_d2.engine import REQUEUE_EXIT_CODE, Trainer
from fishnet_d2.engine.data import ResumableTrainLoader
from fishnet_d2.engine.trainer import drop_metrics_from

from .support import tiny_mask_rcnn_cfg

pytestmark = [
    pytest.mark.filterwarnings("ignore:`np.int` is a deprecated alias:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning"),
]

MAX_ITER = 8
CHECKPOINT_PERIOD = 3  # checkpoints after iterations 2 and 5


class Crash(Exception):
    pass


class Interrupt(HookBase):
    """At iteration ``at``: SIGTERM to this process before the step, or a crash after it."""

    def __init__(self, at: int, how: str):
        self.at, self.how = at, how

    def before_step(self):
        if self.trainer.iter == self.at and self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)

    def after_step(self):
        if self.trainer.iter == self.at and self.how == "crash":
            raise Crash(self.at)


def make_trainer(names, output_dir, num_workers):
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.STEPS = (MAX_ITER - 2,)
    cfg.SOLVER.CHECKPOINT_PERIOD = CHECKPOINT_PERIOD
    cfg.SOLVER.IMS_PER_BATCH = 3  # 8 images: epochs end inside batches
    cfg.SEED = 17
    cfg.OUTPUT_DIR = str(output_dir)
    seed_all_rng(cfg.SEED)  # the initial weights: what tools/train_net.py's default_setup does
    return Trainer(cfg)


def final_weights(output_dir):
    return torch.load(output_dir / "model_final.pth", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def names(tiny_shapes):
    return tiny_shapes[1]


@pytest.fixture(scope="module")
def unbroken(names, tmp_path_factory):
    """NUM_WORKERS -> final weights of the uninterrupted run."""
    weights = {}
    for workers in (0, 2):
        output = tmp_path_factory.mktemp(f"unbroken{workers}")
        trainer = make_trainer(names, output, workers)
        trainer.resume_or_load(resume=False)
        trainer.train()
        weights[workers] = final_weights(output)
    return weights


@pytest.mark.slow  # trains, and NUM_WORKERS 2 starts processes
def test_workers_do_not_change_the_data(unbroken):
    """Each image is mapped with randomness seeded from its position in the order."""
    assert_same_weights(unbroken[0], unbroken[2])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "at, how, resumed_from",
    [(1, "sigterm", 1), (4, "crash", 2), (5, "sigterm", 5)],
    ids=["sigterm at 1", "crash at 4", "sigterm at checkpoint 5"],
)
def test_interrupted_then_resumed_equals_unbroken(names, unbroken, tmp_path, workers, at, how, resumed_from):
    trainer = make_trainer(names, tmp_path, workers)
    trainer.register_hooks([Interrupt(at, how)])
    trainer.resume_or_load(resume=False)
    if how == "sigterm":
        with pytest.raises(SystemExit) as stopped:
            trainer.train()
        assert stopped.value.code == REQUEUE_EXIT_CODE
    else:
        with pytest.raises(Crash):
            trainer.train()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the SIGTERM handler outlived training"
    assert (tmp_path / "last_checkpoint").read_text() == f"model_{resumed_from:07d}.pth"
    assert not (tmp_path / "model_final.pth").exists()
    saved = torch.load(tmp_path / f"model_{resumed_from:07d}.pth", weights_only=True)
    assert saved["trainer"]["data_loader"] == {"seed": 17, "world_size": 1, "batches": resumed_from + 1}

    resumed = make_trainer(names, tmp_path, workers)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == resumed_from + 1
    resumed.train()
    assert_same_weights(final_weights(tmp_path), unbroken[workers])


def test_loader_resumes_its_batches(names):
    """The loader alone: after load_state_dict, the batches of an uninterrupted loader, aspect-ratio
    groups and epochs included (records' sizes made to fall in both groups)."""
    records = [{"width": 40 + 20 * (i % 3), "height": 50, "id": i} for i in range(7)]
    make = lambda rank: ResumableTrainLoader(
        records, lambda r: {"id": r["id"], "draw": torch.rand(1).item()}, batch_size=2, seed=3, rank=rank, world_size=2
    )
    for rank in (0, 1):
        unbroken_loader = iter(make(rank))
        expected = [next(unbroken_loader) for _ in range(12)]
        assert len({d["id"] for batch in expected for d in batch}) == 7
        for stop in (0, 5, 9):
            first = make(rank)
            taken = iter(first)
            for _ in range(stop):
                next(taken)
            second = make(rank)
            second.load_state_dict(first.state_dict())
            batches = iter(second)
            assert [next(batches) for _ in range(12 - stop)] == expected[stop:], (rank, stop)


@pytest.mark.parametrize("sampler", ["TrainingSampler", "RepeatFactorTrainingSampler"])
def test_loader_order_is_detectron2_samplers(sampler):
    """The order the loader's ranks share is that of Detectron2's sampler with the same seed (the
    one build_detection_train_loader takes), over several epochs; with repeat factors, the
    stochastic rounding repeats records."""
    records = [{"width": 50, "height": 50, "id": i} for i in range(7)]
    repeat_factors = torch.tensor([1.0, 2.5, 1.0, 1.3, 3.0, 1.0, 1.7]) if sampler == "RepeatFactorTrainingSampler" else None
    make = lambda rank: ResumableTrainLoader(
        records, lambda r: {"id": r["id"]}, batch_size=1, seed=5, rank=rank, world_size=2,
        aspect_ratio_grouping=False, repeat_factors=repeat_factors,
    )  # fmt: skip
    shares = [[batch[0]["id"] for batch in itertools.islice(make(rank), 40)] for rank in (0, 1)]
    order = [index for pair in zip(*shares) for index in pair]
    detectron2 = TrainingSampler(7, seed=5) if repeat_factors is None else RepeatFactorTrainingSampler(repeat_factors, seed=5)
    assert order == list(itertools.islice(iter(detectron2), 80))
    repeated = max(order.count(i) for i in range(7)) - min(order.count(i) for i in range(7))
    assert (repeated > 4) == (repeat_factors is not None), [order.count(i) for i in range(7)]


def test_loader_in_a_process_group_is_for_the_process_rank(monkeypatch):
    """Detectron2's samplers give the share of the process's rank: in a process group of 2 as rank
    0, a loader for rank 1 is refused."""
    monkeypatch.setattr("fishnet_d2.engine.data.comm.get_world_size", lambda: 2)
    monkeypatch.setattr("fishnet_d2.engine.data.comm.get_rank", lambda: 0)
    make = lambda rank: ResumableTrainLoader([{"id": 0}], lambda r: r, batch_size=1, seed=0, rank=rank, world_size=2, aspect_ratio_grouping=False)
    assert make(0).rank == 0
    with pytest.raises(ValueError, match="rank=1 of world_size=2: in a process group, a loader is for the process's rank, 0 of 2"):
        make(1)


def test_metrics_lose_the_iterations_to_run_again(tmp_path):
    """On resume at iteration 20: the lines of iterations >= 20 go, and a line cut by a kill."""
    lines = [json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in (9, 19, 19, 20, 29)]
    path = tmp_path / "metrics.json"
    path.write_text("".join(lines[:3]) + "".join(lines[3:]))
    assert drop_metrics_from(str(path), 20) == 2
    assert path.read_text() == "".join(lines[:3])
    path.write_text("".join(lines[:2]) + '{"iteration": 19, "total_lo')
    assert drop_metrics_from(str(path), 20) == 1
    assert path.read_text() == "".join(lines[:2])
    assert drop_metrics_from(str(tmp_path / "missing.json"), 20) == 0
