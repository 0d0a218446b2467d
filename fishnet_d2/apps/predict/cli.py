"""What ``tools/predict.py`` runs: its command line (Detectron2's ``demo/demo.py`` conventions) and
``main``."""

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import Metadata
from detectron2.data.detection_utils import convert_image_to_rgb, convert_PIL_to_numpy
from PIL import Image
from tqdm import tqdm

from ...weights.atomic_file import atomic_write
from ...weights.checkpointer import CheckpointLoadError
from ..visualization import draw_predictions, prediction_metadata
from ...model_zoo import add_config_arguments, load_config
from .dataset_ids import DatasetIds, annotations_ids, dataset_ids
from .images import InputError, expand_inputs, read_image_file
from .exported import ExportedModelError
from .predictor import Prediction, Predictor
from .results import assign_image_ids, coco_results, write_json
from .video import VIDEO_CODECS, AtomicVideoWriter, open_camera, open_video, read_frames

__all__ = ["IMAGE_SUFFIXES", "RESULTS_JSON", "IMAGES_JSON", "argument_parser", "main"]

# --output names a file (rather than a directory) when it ends in one of these.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RESULTS_JSON = "coco_instances_results.json"  # the name COCOEvaluator gives it
IMAGES_JSON = "images.json"  # COCO "images" entries (id, file_name, height, width) of the results
DEFAULT_FPS = 30.0

EPILOG = """\
examples:
  python tools/predict.py --config-file COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_1x.yaml \\
      --input photos/ 'more/*.jpg' --output out/ MODEL.WEIGHTS model_final.pth
  python tools/predict.py --config-file configs/Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml \\
      --input datasets/fishnet_demo/val --dataset fishnet_demo_val --confidence-threshold 0.05 \\
      --output out/ MODEL.WEIGHTS output/model_final.pth
  python tools/predict.py --config-file my_config.yaml --video-input clip.mp4 --output out/clip.mp4
  python tools/predict.py --config-file my_config.yaml --exported exported/ --input photos/ --output out/

config overrides (KEY VALUE ...) go after the options, or after --opts.
outputs: per image a drawing (same name; .png added to names not ending in .jpg/.jpeg/.png), and
coco_instances_results.json (COCO results, as COCOEvaluator writes them) with images.json (the
image ids: with --dataset or --annotations the dataset's, found by file name; else the number in
the file name when all names are numbers, else 1..N). With --output FILE (one image, or a
.mp4/.avi video) the JSON files are FILE's stem + '_' + those names. Results to evaluate need
Detectron2's --confidence-threshold 0.05 (the default 0.5 is for drawing).
--exported DIR runs the model tools/export_model.py wrote to DIR (any of its formats) instead of
building the config's model: the config gives the input format, the test resize and the class
names, and must be the one exported (its meta-architecture and MODEL.MASK_ON); MODEL.WEIGHTS is not
read. The exported model keeps the detections its export config's thresholds kept; of those,
--confidence-threshold keeps the ones scoring above it, as the eager model does.
exit status: 0 when every input was predicted, 1 when any failed (each is reported and skipped),
2 for a bad command line."""


def argument_parser() -> argparse.ArgumentParser:
    """The command line of Detectron2's ``demo/demo.py``, with ``--config-file`` taking a fishnet_d2
    config name too, and ``--output`` required."""
    parser = argparse.ArgumentParser(
        description="Predict images or a video with a FishNet model; draw and save the predictions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="images: files, directories (the files directly in them) or glob patterns ('dir/*.jpg')",
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0, until Ctrl-C")
    parser.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="a directory (created when missing), or a file for one image (ending in "
        f"{', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_CODECS)})",
    )
    numbering = parser.add_mutually_exclusive_group()
    numbering.add_argument(
        "--dataset",
        metavar="NAME",
        help="the inputs are images of the registered dataset NAME: the results take its image ids "
        "(found by file name) and category ids, so that they evaluate against its annotations",
    )
    numbering.add_argument(
        "--annotations",
        metavar="FILE",
        help="the same from a COCO annotations file: its images' ids by file name, its category ids",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="the minimum score of the predictions kept (the heads' test thresholds; default 0.5; "
        "0.05, Detectron2's default, for results to evaluate)",
    )
    parser.add_argument(
        "--exported",
        metavar="DIR",
        help="predict with the model tools/export_model.py exported to DIR (its --output: "
        "export_info.json and the model file), not the config's eager model; --config-file is still "
        "needed (input format, test size, class names) and MODEL.WEIGHTS is not read",
    )
    return parser


def _report(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _output_is_file(output: str, suffixes: Sequence[str]) -> bool:
    return not os.path.isdir(output) and Path(output).suffix.lower() in suffixes


def _json_paths(output: str, as_file: bool) -> Tuple[str, str]:
    if as_file:
        stem = os.path.splitext(output)[0]
        return f"{stem}_{RESULTS_JSON}", f"{stem}_{IMAGES_JSON}"
    return os.path.join(output, RESULTS_JSON), os.path.join(output, IMAGES_JSON)


def _drawing_paths(files: Sequence[str], output: str, as_file: bool) -> Dict[str, str]:
    """Where each file's drawing goes: ``output`` itself, or ``output/<name>`` (``.png`` added to
    names not ending in .jpg, .jpeg or .png; ``-2``, ``-3``... before the suffix for names seen
    already)."""
    if as_file:
        return {files[0]: output}
    paths: Dict[str, str] = {}
    taken = set()
    for file in files:
        name = os.path.basename(file)
        if Path(name).suffix.lower() not in (".jpg", ".jpeg", ".png"):
            name += ".png"
        stem, suffix = os.path.splitext(name)
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{stem}-{k}{suffix}"
        taken.add(candidate)
        paths[file] = os.path.join(output, candidate)
    return paths


def _rgb_at_output_size(image: np.ndarray, input_format: str, prediction: Prediction) -> np.ndarray:
    rgb = convert_image_to_rgb(image, input_format)
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if prediction.output_size != prediction.image_size:
        height, width = prediction.output_size
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return rgb


def _predict_and_draw(
    predictor: Predictor, metadata: Metadata, image: np.ndarray, name: str, threshold: float
) -> Tuple[Prediction, np.ndarray]:
    """The prediction of ``image`` and its drawing (RGB, at the outputs' size); InputError naming
    ``name`` when the model or the drawing fails on it (the other inputs may work)."""
    try:
        prediction = predictor(image)
    except Exception as e:
        raise InputError(f"{name}: prediction failed: {type(e).__name__}: {e}") from None
    try:
        rgb = _rgb_at_output_size(image, predictor.input_format, prediction)
        return prediction, draw_predictions(rgb, prediction.outputs, metadata, score_threshold=threshold)
    except Exception as e:
        raise InputError(f"{name}: drawing the predictions failed: {type(e).__name__}: {e}") from None


def _save_image(rgb: np.ndarray, path: str) -> None:
    ok, encoded = cv2.imencode(Path(path).suffix.lower(), np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    atomic_write(path, lambda f: f.write(encoded.tobytes()))


def _frame_to_format(frame_bgr: np.ndarray, input_format: str) -> np.ndarray:
    if input_format == "BGR":
        return frame_bgr
    if input_format == "RGB":
        return np.ascontiguousarray(frame_bgr[:, :, ::-1])
    return convert_PIL_to_numpy(Image.fromarray(frame_bgr[:, :, ::-1]), input_format)


def _predict_images(
    args: argparse.Namespace,
    predictor: Predictor,
    metadata: Metadata,
    drawings: Dict[str, str],
    image_ids: Dict[str, int],
    as_file: bool,
    failures: int,
) -> int:
    """Predict, draw and save each image of ``drawings`` (file -> where its drawing goes), then
    write the results with ``image_ids``; ``failures``: the inputs that failed already."""
    files = list(drawings)
    results: List[Dict] = []
    images: List[Dict] = []
    any_instances = False
    predicted = 0
    for file in tqdm(files, unit="image", file=sys.stderr, dynamic_ncols=True):
        try:
            image = read_image_file(file, predictor.input_format)
            prediction, drawn = _predict_and_draw(predictor, metadata, image, file, args.confidence_threshold)
            _save_image(drawn, drawings[file])
        except InputError as e:
            _report(f"skipped: {e}")
            failures += 1
            continue
        height, width = prediction.image_size
        images.append(
            {"id": image_ids[file], "file_name": os.path.abspath(file), "height": height, "width": width}
        )
        if "instances" in prediction.outputs:
            any_instances = True
            instances = prediction.outputs["instances"]
            results.extend(coco_results(instances, image_ids[file], prediction.image_size, metadata))
        predicted += 1
    if any_instances:
        results_json, images_json = _json_paths(args.output, as_file)
        write_json(results, results_json)
        write_json(images, images_json)
        print(f"wrote {len(results)} detections to {results_json} (image ids in {images_json})")
    where = args.output if as_file else f"{args.output}{os.sep}"
    print(f"predicted {predicted} of {predicted + failures} inputs; drawings in {where}")
    if failures:
        print(f"{failures} input(s) failed (see the messages above)", file=sys.stderr)
    return 1 if failures else 0


def _predict_video(args: argparse.Namespace, predictor: Predictor, metadata: Metadata) -> int:
    """Predict and draw each frame of ``--video-input`` or ``--webcam`` into one video file, then
    write the results; InputError when the video cannot be read."""
    if args.webcam:
        video, name = open_camera(0), "webcam"
    else:
        video, name = open_video(args.video_input), Path(args.video_input).stem
    try:
        as_file = _output_is_file(args.output, tuple(VIDEO_CODECS))
        path = args.output if as_file else os.path.join(args.output, f"{name}.mp4")
        if not args.webcam and os.path.realpath(path) == os.path.realpath(args.video_input):
            raise InputError(f"--output {path} is the input video; give another path")
        fps = video.get(cv2.CAP_PROP_FPS)
        if not (fps > 0 and math.isfinite(fps)):
            _report(f"{name}: the video gives no frame rate; writing {DEFAULT_FPS:g} frames per second")
            fps = DEFAULT_FPS
        count = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
        results: List[Dict] = []
        any_instances = False
        writer = AtomicVideoWriter(path, fps)
        frames = tqdm(read_frames(video), total=count if count > 0 else None, unit="frame", file=sys.stderr)
        try:
            for index, frame in enumerate(frames):
                image = _frame_to_format(frame, predictor.input_format)
                prediction, drawn = _predict_and_draw(
                    predictor, metadata, image, f"{name}, frame {index}", args.confidence_threshold
                )
                writer.write(drawn[:, :, ::-1])
                if "instances" in prediction.outputs:
                    any_instances = True
                    instances = prediction.outputs["instances"]
                    results.extend(coco_results(instances, index, prediction.image_size, metadata))
        except KeyboardInterrupt:
            if not args.webcam:
                writer.discard()
                raise
            _report("stopped (Ctrl-C)")  # the webcam's only end: keep what was recorded
        except BaseException:
            writer.discard()
            raise
        if writer.frames == 0:
            writer.discard()
            source = "the camera" if args.webcam else args.video_input
            raise InputError(f"{source}: OpenCV decoded no frame of this video")
        writer.commit()
    finally:
        video.release()
    print(f"wrote {writer.frames} drawn frames to {path}")
    if any_instances:
        results_json = f"{os.path.splitext(path)[0]}_{RESULTS_JSON}"
        write_json(results, results_json)
        print(f"wrote {len(results)} detections to {results_json} (image_id: the frame index, from 0)")
    return 0


def _is_config_key(cfg: CfgNode, name: str) -> bool:
    node = cfg
    for part in name.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def _dataset_numbering(args: argparse.Namespace, cfg: CfgNode) -> Optional[DatasetIds]:
    """The ids of ``--dataset`` or ``--annotations`` (None when neither is given); InputError when
    its categories are not as many as the model's classes."""
    if args.dataset:
        numbering = dataset_ids(args.dataset)
    elif args.annotations:
        numbering = annotations_ids(args.annotations)
    else:
        return None
    num_classes = len(prediction_metadata(cfg).thing_classes)
    if numbering.category_ids and len(numbering.category_ids) != num_classes:
        raise InputError(
            f"{numbering.source} has {len(numbering.category_ids)} categories, the model {num_classes} classes"
        )
    return numbering


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tools/predict.py`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts, confidence_threshold=args.confidence_threshold)
    except (FileNotFoundError, ValueError, KeyError) as e:
        parser.error(str(e))  # exits with status 2

    failures = 0
    drawings: Dict[str, str] = {}
    image_ids: Dict[str, int] = {}
    numbering: Optional[DatasetIds] = None
    as_file = False
    if args.input is not None:
        keys = [item for item in args.input if not os.path.exists(item) and _is_config_key(cfg, item)]
        if keys:
            parser.error(
                f"--input {' '.join(args.input)}: {keys[0]} is a config key, not a file; config overrides go "
                "after the last option (--input takes the paths up to the next option) or after --opts"
            )
        files, errors = expand_inputs(args.input)
        for error in errors:
            print(f"skipped: {error}", file=sys.stderr)
        failures = len(errors)
        if not files:
            print("error: no input file to predict", file=sys.stderr)
            return 1
        if Path(args.output).suffix.lower() in VIDEO_CODECS:
            parser.error(
                f"--output {args.output} is a video file name; images go to a directory or an image file"
            )
        as_file = _output_is_file(args.output, IMAGE_SUFFIXES)
        if as_file and len(files) > 1:
            parser.error(
                f"--output {args.output} is one file, but --input names {len(files)} files; give a directory"
            )
        if not as_file and os.path.exists(args.output) and not os.path.isdir(args.output):
            parser.error(
                f"--output {args.output} is a file without an image suffix ({', '.join(IMAGE_SUFFIXES)}); "
                "give a directory or an image file name"
            )
        drawings = _drawing_paths(files, args.output, as_file)
        try:
            numbering = _dataset_numbering(args, cfg)
            image_ids = numbering.image_ids(files) if numbering is not None else assign_image_ids(files)
        except InputError as e:
            print(f"error: {e}; nothing written", file=sys.stderr)
            return 1
        inputs = {os.path.realpath(f) for f in files}
        clobbered = [d for d in drawings.values() if os.path.realpath(d) in inputs]
        if clobbered:
            parser.error(
                f"--output {args.output} would overwrite the input {clobbered[0]} with its drawing; "
                "give another --output"
            )

    elif args.dataset or args.annotations:
        parser.error("--dataset and --annotations number images (--input); a video's frames are numbered from 0")
    elif Path(args.output).suffix.lower() in IMAGE_SUFFIXES:
        parser.error(
            f"--output {args.output} is an image file name; a video goes to a directory or a "
            f"{'/'.join(VIDEO_CODECS)} file"
        )

    if args.exported is None and not cfg.MODEL.WEIGHTS:
        print("warning: MODEL.WEIGHTS is empty: predicting with random weights", file=sys.stderr)
    try:
        predictor = Predictor(cfg, exported=args.exported)
    except ExportedModelError as e:
        print(f"error: --exported {e}", file=sys.stderr)
        return 1
    except (CheckpointLoadError, FileNotFoundError) as e:
        print(f"error: MODEL.WEIGHTS: {e}", file=sys.stderr)
        return 1
    if args.exported is not None:
        print(f"predicting with {predictor.model}")
    metadata = prediction_metadata(cfg)
    if numbering is not None:
        metadata = Metadata(**{**metadata.as_dict(), "thing_dataset_id_to_contiguous_id": numbering.category_ids})
    try:
        if args.input is not None:
            return _predict_images(args, predictor, metadata, drawings, image_ids, as_file, failures)
        return _predict_video(args, predictor, metadata)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # writing to --output (each file is complete or absent)
        print(f"error: cannot write the output: {e}", file=sys.stderr)
        return 1
