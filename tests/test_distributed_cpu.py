"""Two CPU processes (GLOO) train through fishnet_d2's launch / setup / Trainer, as
tools/train_net.py --num-gpus 2 does, and evaluate; after a step both hold the same parameters."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .support import REPO, tiny_mask_rcnn_cfg

pytestmark = pytest.mark.slow  # trains in new processes

MAX_ITER = 3

# tools/train_net.py with a Trainer that records a checksum of its parameters on each rank: when
# the model is built (before DistributedDataParallel copies rank 0's), after the first step and
# after training. The dataset is registered at import, so in every worker process too.
WRAPPER = textwrap.dedent(
    """
    import hashlib, json, os
    import torch
    from detectron2.engine import HookBase, default_argument_parser
    from detectron2.utils import comm

    from fishnet_d2.engine import Trainer, launch, setup
    from tests.support import register_tiny_shapes

    register_tiny_shapes(os.environ["TINY_SHAPES_ROOT"])


    def checksum(model):
        digest = hashlib.sha256()
        for name, p in model.named_parameters():
            digest.update(name.removeprefix("module.").encode())
            digest.update(p.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()


    class ChecksumTrainer(Trainer):
        built = None

        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            cls.built = checksum(model)
            return model


    class RecordChecksums(HookBase):
        def __init__(self):
            self.records = {"built": ChecksumTrainer.built}

        def after_step(self):
            if self.trainer.iter == 0:
                self.records["after_step_0"] = checksum(self.trainer.model)

        def after_train(self):
            self.records["after_train"] = checksum(self.trainer.model)
            path = os.path.join(self.trainer.cfg.OUTPUT_DIR, f"checksums_rank{comm.get_rank()}.json")
            with open(path, "w") as f:
                json.dump(self.records, f)


    def main(args):
        torch.set_num_threads(1)
        cfg = setup(args)
        trainer = ChecksumTrainer(cfg)
        trainer.register_hooks([RecordChecksums()])
        trainer.resume_or_load(resume=False)
        trainer.train()


    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    """
)


def test_two_cpu_processes_train_in_sync_and_evaluate(tiny_shapes, tmp_path):
    root, names = tiny_shapes
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"],)
    cfg.SOLVER.IMS_PER_BATCH = 4  # 2 per process
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0  # evaluate once, after training
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detections even from a barely trained model
    cfg.SEED = 11  # each process seeds with SEED + rank: their models start different
    output = tmp_path / "output"
    cfg.OUTPUT_DIR = str(output)
    (tmp_path / "config.yaml").write_text(cfg.dump())
    (tmp_path / "train_net_checksums.py").write_text(WRAPPER)

    command = [
        sys.executable, str(tmp_path / "train_net_checksums.py"), "--config-file", str(tmp_path / "config.yaml"),
        "--num-gpus", "2", "--dist-url", "auto", "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TINY_SHAPES_ROOT": str(root)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    checksums = [json.loads((output / f"checksums_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert checksums[0]["built"] != checksums[1]["built"], "both processes built the same model"
    for stage in ("after_step_0", "after_train"):
        assert checksums[0][stage] == checksums[1][stage], stage
    assert checksums[0]["after_train"] != checksums[0]["after_step_0"], "training did not change the model"

    # Trained MAX_ITER iterations; evaluated the 4 validation images, 2 in each process.
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert any(m["iteration"] == MAX_ITER - 1 and "total_loss" in m for m in metrics), metrics
    evaluated = [m for m in metrics if "bbox/AP" in m]  # the results, written after training
    assert len(evaluated) == 1 and "segm/AP" in evaluated[0], metrics
    assert all(0.0 <= evaluated[0][f"{task}/AP"] <= 100.0 for task in ("bbox", "segm")), evaluated
    for log in ("log.txt", "log.txt.rank1"):
        assert "Start inference on 2 batches" in (output / log).read_text(), log
