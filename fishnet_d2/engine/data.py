"""The training data of :class:`fishnet_d2.engine.Trainer`: Detectron2's (dataset dicts,
``DatasetMapper``, the order of ``TrainingSampler`` or ``RepeatFactorTrainingSampler``, batches
grouped by aspect ratio), as a loader that resumes at any iteration where it stopped.

What a batch holds is a function of (seed, world size, rank, batch number) alone:

* the order is that of Detectron2's own sampler, ``TrainingSampler`` or
  ``RepeatFactorTrainingSampler`` seeded with ``seed`` (one shuffle of the dataset, or of its
  repeats, per epoch), shared by all ranks, rank ``r`` of ``W`` taking positions
  ``r, r + W, r + 2W, ...``;
* batches of one aspect-ratio group (width > height or not), as ``AspectRatioGroupedDataset``
  makes them, computed from the records' ``width`` and ``height`` without loading images;
* each image is mapped (read, augmented) with Python's, NumPy's and torch's random generators
  seeded from (seed, its position in the order), in the training process or in a data-loader
  worker alike, and the process's own generators restored afterwards.

So the state of the loader is three numbers (``state_dict``): a resumed loader replays the order
up to the batch where it stopped (metadata only, no image read) and gives the batches the
uninterrupted loader would have given; ``NUM_WORKERS`` changes the speed, not the data.
"""

import contextlib
import logging
import os
import random
import signal
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader", "derived_seed", "seed_all_rngs"]

SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")

# A sample: (its position in the whole order, shared by all ranks; its index in the dataset).
Sample = Tuple[int, int]


def derived_seed(*keys: int) -> int:
    """A seed in [0, 2**63) that depends on every one of ``keys`` (NumPy's ``SeedSequence``)."""
    low, high = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def seed_all_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _own_rngs(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) generators seeded from ``seed`` inside, and as they were
    afterwards: mapping an image in the training process leaves the process's randomness alone."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_all_rngs(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class _MappedBatch:
    """A map-style dataset whose items are batches: ``[(position, index), ...]`` -> mapped dicts."""

    def __init__(self, records: Sequence[Dict], mapper: Callable[[Dict], Optional[Dict]], seed: int):
        self.records, self.mapper, self.seed = records, mapper, seed

    def __getitem__(self, batch: List[Sample]) -> List[Dict]:
        return [self.map(position, index) for position, index in batch]

    def map(self, position: int, index: int) -> Dict:
        """The mapped record ``index`` at ``position``; where the mapper drops it (returns None, as
        after a crop without instances), another record chosen from (seed, position, attempt)."""
        for attempt in range(100):
            with _own_rngs(derived_seed(self.seed, position, attempt)):
                mapped = self.mapper(self.records[index])
                if mapped is not None:
                    return mapped
                index = random.randrange(len(self.records))
        raise RuntimeError(f"the mapper dropped 100 records in a row, the last at dataset index {index}")


def _identity(batch: List[Dict]) -> List[Dict]:
    return batch


# How long a data-loader worker lives on after a SIGTERM: torchrun's and SLURM's default grace.
WORKER_SIGTERM_GRACE_S = 30


def _on_sigterm_in_worker(signum: int, frame: Any) -> None:
    """In a data-loader worker: SIGTERM (which torchrun and schedulers send to every process) is
    for the training process, which finishes its iteration and checkpoints; a worker that died at
    once would fail that iteration. The worker ends with the training process, or after the grace
    period (a SIGTERM from its own training process, as multiprocessing sends at exit)."""
    timer = threading.Timer(WORKER_SIGTERM_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _worker_init(worker_id: int) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm_in_worker)


class ResumableTrainLoader:
    """An infinite iterable of training batches (lists of mapped dicts) for this rank, resumable:
    ``state_dict()`` after ``n`` batches were taken, ``load_state_dict`` on a new loader (before
    it is iterated), and its batches are the first loader's batches ``n, n + 1, ...``."""

    def __init__(
        self,
        records: Sequence[Dict],
        mapper: Callable[[Dict], Optional[Dict]],
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        repeat_factors: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            records: the dataset dicts (with ``width`` and ``height`` for aspect-ratio grouping).
            mapper: dataset dict -> model input, or None to drop it (Detectron2's ``DatasetMapper``).
            batch_size: images per batch in this process.
            seed: the order's and the augmentations' seed, the same in every rank.
            rank, world_size: this process among the training processes.
            repeat_factors: ``RepeatFactorTrainingSampler``'s, per record; None for ``TrainingSampler``.
        """
        if batch_size < 1 or num_workers < 0 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size={batch_size} (>= 1), num_workers={num_workers} (>= 0), rank={rank} of world_size={world_size}")
        # Detectron2's samplers give the share of the process's rank in its process group.
        if comm.get_world_size() > 1 and (rank, world_size) != (comm.get_rank(), comm.get_world_size()):
            raise ValueError(
                f"rank={rank} of world_size={world_size}: in a process group, a loader is for the process's "
                f"rank, {comm.get_rank()} of {comm.get_world_size()} (Detectron2's samplers take it from there)"
            )
        # Each record's aspect-ratio group (width > height), for batches grouped by it.
        self._wide: Optional[List[bool]] = None
        if aspect_ratio_grouping:
            sizes = [(r.get("width"), r.get("height")) for r in records]
            missing = [i for i, (w, h) in enumerate(sizes) if w is None or h is None]
            if missing:
                raise ValueError(f"aspect-ratio grouping needs 'width' and 'height' in every record; {len(missing)} lack them (first: index {missing[0]})")
            self._wide = [w > h for w, h in sizes]
        self.dataset = _MappedBatch(records, mapper, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers = num_workers
        self.repeat_factors = repeat_factors
        self.batches = 0  # the number of batches taken from this loader (by every iteration of it)
        self._iterators: "weakref.WeakSet[Iterator[List[Dict]]]" = weakref.WeakSet()

    @property
    def seed(self) -> int:
        return self.dataset.seed

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed, "world_size": self.world_size, "batches": self.batches}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue after ``state["batches"]`` batches of the order of ``state["seed"]``."""
        if state["world_size"] != self.world_size:
            logging.getLogger(__name__).warning(
                f"The checkpoint's data order was made for {state['world_size']} processes, this run has "
                f"{self.world_size}: training continues after batch {state['batches']} of each process's "
                "share of the order for the new number of processes (images seen differ from an unbroken run)."
            )
        self.dataset.seed = int(state["seed"])
        self.batches = int(state["batches"])

    # ---- the order ----

    def _sampler(self) -> Union[TrainingSampler, RepeatFactorTrainingSampler]:
        """Detectron2's sampler of the order, seeded with ``seed``: ``TrainingSampler``, or
        ``RepeatFactorTrainingSampler`` (stochastic rounding of the repeat factors, then a shuffle)."""
        if self.repeat_factors is None:
            return TrainingSampler(len(self.dataset.records), seed=self.seed)
        return RepeatFactorTrainingSampler(self.repeat_factors, seed=self.seed)

    def _samples(self) -> Iterator[Sample]:
        """This rank's share of the order, with each sample's position in the whole order. The
        sampler yields the positions ``r, r + W, ...`` of the process's rank ``r`` of ``W``: in a
        process group this loader's own; alone, the whole order, of which this rank's are kept."""
        start, step = comm.get_rank(), comm.get_world_size()
        for k, index in enumerate(self._sampler()):
            position = start + k * step
            if position % self.world_size == self.rank:
                yield position, index

    def _all_batches(self) -> Iterator[List[Sample]]:
        """This rank's batches from the first one: consecutive samples, or with aspect-ratio
        grouping, the samples of one group as ``AspectRatioGroupedDataset`` collects them."""
        buckets: Dict[bool, List[Sample]] = {False: [], True: []}
        for sample in self._samples():
            bucket = buckets[self._wide[sample[1]] if self._wide is not None else False]
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def _batches(self, start: int) -> Iterator[List[Sample]]:
        batches = self._all_batches()
        for _ in range(start):
            next(batches)
        return batches

    def __iter__(self) -> Iterator[List[Dict]]:
        iterator = self._iterate()
        self._iterators.add(iterator)
        return iterator

    def close(self) -> None:
        """End the iterations of this loader and their data-loader workers (the trainer does when
        training ends, so that no worker outlives it)."""
        for iterator in list(self._iterators):
            iterator.close()

    def _iterate(self) -> Iterator[List[Dict]]:
        # A generator: it starts when the first batch is asked for, after a load_state_dict.
        batches = self._batches(self.batches)
        if self.num_workers == 0:
            mapped: Iterator[List[Dict]] = (self.dataset[batch] for batch in batches)
        else:
            # Batches of samples to map are the sampler; the loader's own generator (its workers'
            # base seed) leaves the training process's torch generator alone.
            generator = torch.Generator()
            generator.manual_seed(derived_seed(self.seed, self.rank, self.batches))
            mapped = iter(
                torch.utils.data.DataLoader(
                    self.dataset,
                    sampler=batches,
                    batch_size=None,
                    num_workers=self.num_workers,
                    collate_fn=_identity,
                    worker_init_fn=_worker_init,
                    generator=generator,
                )
            )
        try:
            for batch in mapped:
                self.batches += 1
                yield batch
        finally:
            del mapped  # a DataLoader's iterator stops its workers when deleted


def build_resumable_train_loader(cfg: CfgNode, mapper: Optional[Callable[[Dict], Optional[Dict]]] = None) -> ResumableTrainLoader:
    """The loader of ``cfg.DATASETS.TRAIN`` that Detectron2's ``build_detection_train_loader(cfg)``
    builds (same records, mapper, sampler order, batches), resumable; the seed is ``SEED`` or,
    when negative, one drawn by rank 0 (a checkpoint keeps it)."""
    sampler = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler not in SAMPLERS:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={sampler!r}: the resumable loader allows {list(SAMPLERS)}")
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}: must be a multiple of the number of processes, {world_size}")
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    repeat_factors = None
    if sampler == "RepeatFactorTrainingSampler":
        repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            records, cfg.DATALOADER.REPEAT_THRESHOLD
        )
    logging.getLogger(__name__).info(f"Using training sampler {sampler} (resumable)")
    return ResumableTrainLoader(
        DatasetFromList(records, copy=False),
        mapper if mapper is not None else DatasetMapper(cfg, True),
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
        seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
        rank=comm.get_rank(),
        world_size=world_size,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        repeat_factors=repeat_factors,
    )
