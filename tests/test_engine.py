"""fishnet_d2.engine and fishnet_d2.evaluation: evaluators by dataset type, the setup checks, the
launcher, and tools/train_net.py's main: trained in 2 CPU processes, resumed in one, evaluated
with --eval-only."""

import json
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.engine import DefaultTrainer, default_argument_parser
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.structures import Instances

from fishnet_d2.apps.data import register_synthetic_shapes
from fishnet_d2.engine import Trainer, launch, main, setup
from fishnet_d2.engine.trainer import ddp_arguments
from fishnet_d2.evaluation import build_evaluator, build_evaluators
from fishnet_d2.weights.checkpointer import FishNetCheckpointer

from .support import REPO, TINY_SHAPES, fishnet_cfg, shrink_config, tiny_mask_rcnn_cfg

PAPER_MASK_RCNN = REPO / "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml"
SHAPES_PREFIX = "fishnet_engine_test"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The tests' tiny shapes dataset, generated here (so that worker processes only read it):
    (root, split -> registered name)."""
    root = tmp_path_factory.mktemp("shapes")
    names = register_synthetic_shapes(SHAPES_PREFIX, root, TINY_SHAPES)
    assert len(DatasetCatalog.get(names["val"])) == TINY_SHAPES.num_val
    return root, names


def ground_truth_as_predictions(dataset_name: str):
    """(inputs, outputs) pairs whose predictions are the dataset's annotations, score 1."""
    for record in DatasetCatalog.get(dataset_name):
        size = (record["height"], record["width"])
        truth = annotations_to_instances(record["annotations"], size, mask_format="bitmask")
        predicted = Instances(size, pred_boxes=truth.gt_boxes, pred_classes=truth.gt_classes)
        predicted.scores = torch.ones(len(truth))
        predicted.pred_masks = truth.gt_masks.tensor
        yield [record], [{"instances": predicted}]


@pytest.mark.parametrize("mask_on", [True, False])
def test_coco_evaluator_scores_the_tasks_of_the_model(shapes, tmp_path, mask_on):
    """Perfect predictions score AP 100 on the tasks the model predicts, and only on those. The
    evaluation runs pycocotools' reference COCOeval, on every detectron2 build (v0.6's Python-only
    build has no compiled fast COCOeval)."""
    _, names = shapes
    cfg = fishnet_cfg()
    cfg.MODEL.MASK_ON = mask_on
    (evaluator,) = build_evaluators(cfg, names["val"], str(tmp_path))
    assert isinstance(evaluator, COCOEvaluator)
    evaluator.reset()
    for inputs, outputs in ground_truth_as_predictions(names["val"]):
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    assert set(results) == ({"bbox", "segm"} if mask_on else {"bbox"})
    for task in results.values():
        assert task["AP"] == pytest.approx(100.0)


def _register_metadata(name, **metadata):
    """An empty dataset with the given metadata."""
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, list)
        MetadataCatalog.get(name).set(**metadata)
    return name


def test_semantic_and_panoptic_evaluators(tmp_path):
    stuff = dict(stuff_classes=["things", "sky", "grass"], ignore_label=255)
    sem_seg = _register_metadata("fishnet_engine_sem_seg", evaluator_type="sem_seg", **stuff)
    assert isinstance(build_evaluator(fishnet_cfg(), sem_seg, str(tmp_path)), SemSegEvaluator)

    coco_json = tmp_path / "instances.json"
    coco_json.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    panoptic = _register_metadata(
        "fishnet_engine_panoptic",
        evaluator_type="coco_panoptic_seg",
        json_file=str(coco_json),
        thing_classes=["a"],
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={2: 0},
        **stuff,
    )
    cfg = fishnet_cfg()
    cfg.MODEL.MASK_ON = True
    kinds = [type(e) for e in build_evaluators(cfg, panoptic, str(tmp_path))]
    assert kinds == [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]
    assert isinstance(build_evaluator(cfg, panoptic, str(tmp_path)), DatasetEvaluators)


def test_unknown_evaluator_type_raises():
    name = _register_metadata("fishnet_engine_voc", evaluator_type="pascal_voc")
    with pytest.raises(ValueError, match=r"evaluator_type='pascal_voc'.*allowed: \['coco', 'coco_panoptic_seg', 'sem_seg'\]"):
        build_evaluator(fishnet_cfg(), name)


def _args(*argv):
    return default_argument_parser().parse_args(list(argv))


def test_setup_refuses_cuda_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _args("--config-file", str(PAPER_MASK_RCNN), "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"MODEL.DEVICE='cuda'.*allowed here: 'cpu'"):
        setup(args)


def test_launch_checks_its_arguments(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="num_gpus_per_machine=0"):
        launch(print, 0)
    with pytest.raises(ValueError, match="machine_rank=1: must be below num_machines=1"):
        launch(print, 1, machine_rank=1)
    with pytest.raises(ValueError, match="dist_url=None"):
        launch(print, 2, dist_url=None)
    with pytest.raises(ValueError, match="dist_url='auto' works on one machine only"):
        launch(print, 2, num_machines=2, dist_url="auto")


def test_launch_under_torchrun_refuses_its_own_process_counts(monkeypatch):
    for name, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"num_gpus_per_machine=2.*started by torchrun \(WORLD_SIZE=2\).*leave out --num-gpus"):
        launch(print, 2)


def _shapes_config(tmp_path, names):
    """The paper's Mask R-CNN config, shrunk, on the small shapes dataset, written as a YAML file."""
    cfg = fishnet_cfg()
    cfg.merge_from_file(str(PAPER_MASK_RCNN))
    shrink_config(cfg)
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"],)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.INPUT.update(MIN_SIZE_TRAIN=(64,), MAX_SIZE_TRAIN=96, MIN_SIZE_TEST=64, MAX_SIZE_TEST=96)
    cfg.INPUT.MASK_FORMAT = "bitmask"  # the dataset's masks are RLE
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.update(MAX_ITER=2, STEPS=(1,), WARMUP_ITERS=1, CHECKPOINT_PERIOD=1000)
    cfg.SOLVER.CLIP_GRADIENTS.UNTIL_ITER = 1
    cfg.TEST.EVAL_PERIOD = 0  # evaluate once, after the last iteration
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detections even from a model trained 2 iterations
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return path


def _registered_main(args, root):
    """main(args) in a worker process, which has to register the dataset again."""
    register_synthetic_shapes(SHAPES_PREFIX, root, TINY_SHAPES)
    main(args)


@pytest.mark.slow
def test_train_net_two_cpu_processes_resume_then_eval_only(shapes, tmp_path, capfd):
    root, names = shapes
    config = _shapes_config(tmp_path, names)
    output = tmp_path / "output"
    train_args = _args("--config-file", str(config), "--num-gpus", "2", "--dist-url", "auto", "MODEL.DEVICE", "cpu")
    launch(_registered_main, 2, dist_url=train_args.dist_url, args=(train_args, root))

    assert (output / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert any(m["iteration"] == 1 and "total_loss" in m for m in metrics)
    assert any("bbox/AP" in m and "segm/AP" in m for m in metrics)  # the evaluation after training
    assert (output / "inference" / "coco_instances_results.json").is_file()

    # --resume in one process: from the checkpoint of iteration 1, train iteration 2
    capfd.readouterr()  # what training printed
    resume_args = _args("--config-file", str(config), "--resume", "SOLVER.MAX_ITER", "3")
    launch(main, 1, args=(resume_args,))
    assert "Starting training from iteration 2" in capfd.readouterr().out
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert any(m["iteration"] == 2 and "total_loss" in m for m in metrics)

    eval_args = _args(
        "--config-file", str(config), "--eval-only", "MODEL.WEIGHTS", str(output / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval"),
    )  # fmt: skip
    results = main(eval_args)
    assert set(results) == {"bbox", "segm"}
    assert all(0.0 <= results[task]["AP"] <= 100.0 for task in results), results
    printed = capfd.readouterr().out
    assert "Evaluation results for bbox" in printed and "Evaluation results for segm" in printed
    assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|\s*AP75\s*\|\s*APs\s*\|\s*APm\s*\|\s*APl\s*\|", printed)


@pytest.mark.parametrize(
    "norm, weights, resume, warns",
    [("FrozenBN", "", False, True), ("BN", "", False, False), ("FrozenBN", "weights.pth", False, False), ("FrozenBN", "", True, False)],
    ids=["FrozenBN from scratch", "BN from scratch", "FrozenBN with weights", "FrozenBN resumed"],
)
def test_trainer_warns_before_training_frozen_batchnorm_from_scratch(shapes, tmp_path, monkeypatch, norm, weights, resume, warns):
    _, names = shapes
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train"],), ()
    cfg.MODEL.FISHNET.NORM = norm
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = Trainer(cfg)
    if weights:  # a file to load: the model's own initial weights
        trainer.checkpointer.save("weights")
        trainer.cfg.defrost()
        trainer.cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
        (tmp_path / "last_checkpoint").unlink()
    if resume:
        trainer.checkpointer.save("model_0000009")
    logged = []
    monkeypatch.setattr("fishnet_d2.engine.trainer.log_first_n", lambda level, message, **kwargs: logged.append(message))
    trainer.resume_or_load(resume=resume)
    assert bool(logged) == warns
    if warns:
        assert "MODEL.FISHNET.NORM FrozenBN and no MODEL.WEIGHTS" in logged[0]
        assert "MODEL.FISHNET.NORM BN, SyncBN or GN" in logged[0]


def test_trainer_builds_what_defaulttrainer_builds(shapes, tmp_path):
    """Trainer.__init__ runs DefaultTrainer.__init__'s steps itself (DefaultTrainer's would wrap a
    CPU model in DistributedDataParallel with device ids, which torch refuses): the trainer has
    the attributes, inner trainer, model type and hooks of Detectron2's own, and its checkpointer
    is a FishNetCheckpointer of its model. A change in Detectron2's __init__ shows here."""
    _, names = shapes
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train"],), ()
    cfg.OUTPUT_DIR = str(tmp_path)
    detectron2_trainer, trainer = DefaultTrainer(cfg), Trainer(cfg)

    assert vars(trainer).keys() == vars(detectron2_trainer).keys()
    assert type(trainer._trainer) is type(detectron2_trainer._trainer)
    assert vars(trainer._trainer).keys() == vars(detectron2_trainer._trainer).keys()
    assert type(trainer.model) is type(detectron2_trainer.model)
    assert type(trainer.scheduler) is type(detectron2_trainer.scheduler)
    assert (trainer.start_iter, trainer.max_iter) == (detectron2_trainer.start_iter, detectron2_trainer.max_iter)
    assert isinstance(trainer.checkpointer, FishNetCheckpointer) and trainer.checkpointer.model is trainer.model
    # Detectron2's hooks, in its order, with this package's among them
    hooks = [type(hook) for hook in trainer._hooks]
    detectron2_hooks = [type(hook) for hook in detectron2_trainer._hooks]
    assert [hook for hook in hooks if hook in detectron2_hooks] == detectron2_hooks


def test_ddp_arguments_give_cpu_models_no_device_ids():
    assert ddp_arguments("cpu") == {"broadcast_buffers": False, "device_ids": None}
    assert ddp_arguments("cuda") == {"broadcast_buffers": False}
    assert ddp_arguments("cuda:0") == {"broadcast_buffers": False}
