"""Segment images, folders, videos or a camera with a trained model; time it; export ONNX.

    python predict.py img/street.jpg --model-path logs/best_epoch_weights.pth
    python predict.py --mode dir_predict --dir-origin-path img/ --dir-save-path img_out/
    python predict.py --mode video --video-path clip.mp4 --video-save-path out.avi
    python predict.py --mode fps --fps-image-path img/street.jpg
    python predict.py --mode export_onnx --onnx-save-path model_data/models.onnx [--int8 ...]
    python predict.py img/street.jpg --model-path model_data/models.onnx   # in onnxruntime

Results are saved (headless machines work); ``--show`` also opens a window. The settings the
model was trained with (classes, backbone, input size, class names) come from the file train.py
saves beside the weights, or from an export's metadata; give --num-classes, --backbone and
--input-shape only for the original's own weights files. A ``.onnx`` model runs in onnxruntime,
in every mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from unet import Unet
from utils.data.datasets import IMAGE_EXTENSIONS, DatasetLayout, read_split
from utils.device import backend_settings, flush_denormals
from utils.errors import UserError, exit_on_user_error
from utils.images import distinct_names, read_image
from utils.inference.engines import ENGINES
from utils.inference.pipeline import check_batching, check_threads, default_batching
from utils.inference.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_paths, quantize_int8
from utils.inference.speed import command_for, engine_predictors, network_seconds, throughput
from utils.inference.video import VideoFile, read_frames
from utils.progress import progress, say
from utils.settings.cli import add_batch_flags, add_model_flags, argument_parser, predictor_kwargs
from utils.settings.config import MODEL_KEYS

MODES = ("predict", "video", "fps", "dir_predict", "export_onnx", "predict_onnx")
#: The original's defaults for these paths, kept: users know them.
FPS_IMAGE_PATH = "img/street.jpg"
DIR_ORIGIN_PATH = "img/"
ONNX_PATH = "model_data/models.onnx"


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument("images", nargs="*", help="predict mode: image files (none: ask for them)")
    parser.add_argument("--mode", choices=MODES, default="predict", help="what to do")
    add_model_flags(parser, tuple(k for k in MODEL_KEYS if k != "dataset_format"))
    add_batch_flags(parser, batch_size=1)
    flag = parser.add_argument_group("output").add_argument
    flag(
        "--mix-type",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="0: blend colours with the image, 1: colours only, 2: the image where not "
        "background (default: %(default)s)",
    )
    flag("--count", action="store_true", help="print pixel counts and ratios per class")
    flag("--show", action="store_true", help="also show results in a window")
    flag = parser.add_argument_group("video").add_argument
    flag("--video-path", default="0", help="a video file, or a camera index (default: 0)")
    flag("--video-save-path", default="", help="write the segmented video here (XVID)")
    flag("--video-fps", type=float, default=25.0, help="fps of the saved video")
    flag = parser.add_argument_group("timing").add_argument
    flag("--test-interval", type=int, default=100, help="fps mode: runs to average")
    flag(
        "--fps-image-path",
        default=FPS_IMAGE_PATH,
        help="fps mode: the image to time; the original's default, absent here, times a "
        "generated 1330x1330 image (default: %(default)s)",
    )
    flag(
        "--fps-batch-size",
        type=int,
        default=8,
        help="fps mode: the batch size of the batched-throughput figure (default: %(default)s)",
    )
    flag = parser.add_argument_group("folders").add_argument
    flag("--dir-origin-path", help=f"dir_predict: input folder (default: {DIR_ORIGIN_PATH})")
    flag("--dir-save-path", default="img_out/", help="where results are saved")
    add_onnx_flags(parser)
    return parser


def add_onnx_flags(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument_group("onnx").add_argument
    flag(
        "--onnx-path",
        help=f"the ONNX model to run, in predict_onnx or in any mode it is given to (default: "
        f"{ONNX_PATH})",
    )
    flag("--onnx-save-path", default=ONNX_PATH, help="export_onnx: output")
    flag(
        "--simplify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simplify the exported graph when onnxsim is installed (default: on)",
    )
    flag("--dynamic", action="store_true", help="export_onnx: dynamic height and width")
    flag("--int8", action="store_true", help="export_onnx: int8, calibrated on --calibration-dir")
    flag(
        "--calibration-dir",
        help="--int8: a folder of your training images, or a train split file (its ids' "
        "images), never the images you will score (default: none; --int8 needs it)",
    )
    flag(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="--int8: how many of them calibrate, evenly spread (all when fewer)",
    )
    flag(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        help="--int8: 7-bit weights, which cannot saturate the 8-bit kernels of CPUs without "
        "VNNI (AVX2, AVX-512 without VNNI); on for a model meant for any x86 CPU (default: on "
        "where the exporting CPU lacks VNNI)",
    )
    flag(
        "--dataset-path",
        help="--int8: score fp32 and int8 on this data set's --split and "
        "say how much int8 loses (default: not scored)",
    )
    flag(
        "--split",
        default="val",
        help="--int8 with --dataset-path: the ids to score, a split name or a file of ids",
    )


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_parser().parse_args(argv)
    check_batching(args.batch_size, args.num_workers)
    check_batching(args.fps_batch_size, args.num_workers, "--fps-batch-size")
    check_threads(args.num_threads)
    if args.int8 and args.mode != "export_onnx":
        raise UserError("--int8 is for --mode export_onnx; add --mode export_onnx.")
    if args.int8 and not args.calibration_dir:
        raise UserError(
            "--int8 calibrates on your own images: give --calibration-dir, a folder of your "
            "training images."
        )
    if args.int8:  # before the export, not after it
        calibration_paths(args.calibration_dir, args.calibration_images)
    if args.mode in ("predict", "predict_onnx"):
        refuse_folders(args.images)
    if args.dir_origin_path and args.mode in ("predict", "predict_onnx"):
        model = f" --onnx-path {args.onnx_path or ONNX_PATH}" if args.mode == "predict_onnx" else ""
        raise UserError(
            f"--dir-origin-path is read by --mode dir_predict, not --mode {args.mode}; run "
            f"--mode dir_predict{model} --dir-origin-path {args.dir_origin_path}."
        )
    return args


def model_path(args: argparse.Namespace) -> str:
    """The model the mode runs: the ONNX model for predict_onnx, or when --onnx-path is given to
    another mode (export_onnx aside), else --model-path."""
    if args.mode == "predict_onnx" or (args.onnx_path and args.mode != "export_onnx"):
        return args.onnx_path or ONNX_PATH
    return args.model_path


def show(image: Image.Image | np.ndarray, title: str, wait: int = 0) -> int:
    """Show a result in an OpenCV window (BGR arrays as they are); returns the key pressed."""
    frame = (
        image
        if isinstance(image, np.ndarray)
        else cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    )
    try:
        cv2.imshow(title, frame)
    except cv2.error as error:
        raise UserError(
            "--show needs OpenCV with GUI support, but the installed build is headless; "
            "pip install opencv-python in place of opencv-python-headless, or drop --show "
            "(results are saved either way)."
        ) from error
    return cv2.waitKey(wait)


def refuse_folders(paths: list[str]) -> None:
    """A folder given as an image: one sentence with the dir_predict command (before the model
    loads, when it comes on the command line)."""
    for path in paths:
        if Path(path).is_dir():
            raise UserError(
                f"'{path}' is a folder; to segment every image in it, run --mode dir_predict "
                f"--dir-origin-path {path}."
            )


def predict_images(unet, paths: list[str], args, missing: str = "check the path") -> None:
    """Segment each image file and save the drawing in --dir-save-path (stems that collide,
    a.jpg and a.png, keep their whole names: a.jpg.png)."""
    out = Path(args.dir_save_path)
    refuse_folders(paths)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_legend(out)
    for path, name in zip(paths, distinct_names(paths), strict=True):
        image = read_image(path, missing=missing)
        result = unet.detect_image(image, count=args.count, name_classes=args.name_classes)
        result.save(out / name)
        print(f"Saved {out / name}")
        if args.show:
            show(result, path)


def interactive(unet, args) -> None:
    """The reference's loop: ask for a file name until end of input. A pasted name may keep
    its quotes and spaces: they are stripped."""
    while True:
        try:
            path = input("Input image filename:").strip().strip("'\"").strip()
        except EOFError:
            return
        if not path:
            continue
        try:
            predict_images(unet, [path], args, missing="check the name and try again")
        except UserError as error:
            print(f"Open Error! {error}")


def dir_predict(unet, args) -> None:
    """Segment every image of a folder; an image that cannot be read is skipped and named.
    Stems that collide (a.jpg, a.png) keep their whole names (a.jpg.png): nothing is
    overwritten."""
    folder = Path(args.dir_origin_path or DIR_ORIGIN_PATH)
    if not folder.is_dir():
        hint = "" if args.dir_origin_path else " (the original's default)"
        raise UserError(
            f"--dir-origin-path '{folder}'{hint} is not a folder; point it at your images."
        )
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"'{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    out = Path(args.dir_save_path)
    out.mkdir(parents=True, exist_ok=True)
    legend = unet.save_legend(out)
    names = dict(zip(paths, distinct_names(paths), strict=True))
    predictions = unet.predict_files(
        paths, args.batch_size, args.num_workers, keep_image=True, skip_unreadable=True
    )
    skipped, written = [], 0
    for result in progress(predictions, total=len(paths), desc="dir_predict"):
        if result.error:
            skipped.append(result.error)
            say(f"warning: skipped {result.error}")
            continue
        unet.draw(result.image, result.labels).save(out / names[result.path])
        written += 1
    print(f"saved {written} of {len(paths)} to {out}")
    if legend is not None:
        print(f"which colour is which class: {legend}")
    if skipped:
        print(f"skipped {len(skipped)}:", *skipped, sep="\n  ")
    if not written:
        raise UserError(
            f"no image in '{folder}' could be read ({len(paths)} tried); see the warnings above."
        )


def video(unet, args) -> None:
    """Segment every frame, the first included; decoding overlaps the network. The capture and
    the saved file are closed whatever stops the loop (the end, Esc, Ctrl-C, an error)."""
    source = int(args.video_path) if args.video_path.isdigit() else args.video_path
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise UserError(
            f"cannot read from --video-path {args.video_path}; check the file or camera."
        )
    writer = VideoFile(args.video_save_path, args.video_fps)
    batches = read_frames(capture, unet.input_shape, args.batch_size)
    fps, frames = 0.0, 0
    last = time.perf_counter()
    try:
        for sample, labels in unet.pipeline.predict_batches(batches):
            result = cv2.cvtColor(np.asarray(unet.draw(sample.image, labels)), cv2.COLOR_RGB2BGR)
            now = time.perf_counter()
            fps, last = (fps + 1.0 / max(now - last, 1e-9)) / 2, now
            result = cv2.putText(
                result, f"fps= {fps:.2f}", (0, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2
            )
            writer.write(result)
            frames += 1
            if args.show and show(result, "video", wait=1) & 0xFF == 27:  # Esc
                break
    finally:
        batches.close()
        capture.release()
        writer.release()
    if frames == 0:
        raise UserError(
            f"cannot read from --video-path {args.video_path}; check the file or camera."
        )
    if args.video_save_path:
        print(f"Saved {frames} frames to {args.video_save_path}")
        unet.save_legend(Path(args.video_save_path).parent)
    print(f"Video Detection Done! {frames} frames, last fps {fps:.2f}")


def fps_image(path: str) -> tuple[Image.Image, str]:
    """The image to time and what to call it; with the original's default path absent, a
    generated one."""
    if path == FPS_IMAGE_PATH and not Path(path).is_file():
        print(
            f"{path} (the original's default) is not here: timing a generated 1330x1330 "
            "photo-like image instead; give --fps-image-path to time your own."
        )
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (1330, 1330), interpolation=cv2.INTER_CUBIC)
        return Image.fromarray(image), "a generated image"
    return read_image(path, missing="check --fps-image-path"), path


def fps(unet: Unet, args) -> None:
    """One table: each engine and precision this machine can run for the model, in seconds
    per image of the network + argmax (what the original's get_FPS times) and of the whole
    get_miou_png pipeline, with the speed-up over torch fp32; the fastest, and the command
    that runs it; then the batched throughput."""
    image, name = fps_image(args.fps_image_path)
    height, width = unet.input_shape
    weights = unet.model_path if unet.net is not None else args.model_path
    base = {**predictor_kwargs(args, Unet), "precision": None}
    with tempfile.TemporaryDirectory(prefix="unet-fps-") as folder:
        make = lambda **kwargs: Unet(**{**base, **kwargs})  # noqa: E731
        predictors = engine_predictors(make, unet, weights, Path(folder))
        rows = [
            (u, network_seconds(u, image, args.test_interval), u.get_FPS(image, args.test_interval))
            for u in predictors
        ]
        fastest = min(rows, key=lambda row: row[2])[0]
        command = command_for(fastest, weights, Path(folder))
    base_seconds = rows[0][2] if rows[0][0].how().startswith("torch fp32") else None
    print(
        f"Seconds per image on {unet.runtime.device.type}, {name} ({image.width}x"
        f"{image.height}), {args.test_interval} runs each:"
    )
    network = f"network + argmax at {height}x{width}"
    print(
        f"{'engine and precision':<28} {network:>26} {'whole get_miou_png':>20} "
        f"{'vs torch fp32':>14}"
    )
    for predictor, seconds, whole in rows:
        label = predictor.how()
        label += "" if predictor.runtime.device == unet.runtime.device else " (cpu)"
        ratio = f"x{base_seconds / whole:.2f}" if base_seconds else "-"
        print(f"{label:<28} {seconds:>24.4f} s {whole:>18.4f} s {ratio:>14}")
    print(f"fastest here: {fastest.how()} ({command})")
    batches = max(1, args.test_interval // args.fps_batch_size)
    workers = default_batching(unet.runtime.device, num_workers=args.num_workers)[1]
    speed = throughput(unet, image, args.fps_batch_size, batches, workers)
    print(
        f"batched get_miou_png, {unet.how()}: {speed:.2f} images/s @batch_size "
        f"{args.fps_batch_size}, {workers} workers"
    )


def export(unet: Unet, args) -> None:
    """--mode export_onnx: fp32, or with --int8 the fp32 export quantized on the user's images
    and, with --dataset-path, scored against it."""
    if not args.int8:
        unet.convert_to_onnx(args.simplify, args.onnx_save_path, dynamic=args.dynamic)
        return
    with tempfile.TemporaryDirectory(prefix="unet-int8-") as folder:
        fp32 = Path(folder) / "fp32.onnx"
        unet.convert_to_onnx(args.simplify, str(fp32), dynamic=args.dynamic)
        info = quantize_int8(
            fp32,
            args.onnx_save_path,
            args.calibration_dir,
            unet.settings.input_shape,
            count=args.calibration_images,
            reduce_range=args.reduce_range,
        )
        reduce_range = "on" if info["reduce_range"] else "off"
        print(
            f"int8 model saved as {args.onnx_save_path}: {info['format']}, per-channel int8 "
            f"weights, {info['method']} calibration on {info['images']} images of "
            f"{info['folder']}, reduce_range {reduce_range}."
        )
        if args.dataset_path:
            score_int8(fp32, args)


def score_int8(fp32: Path, args) -> None:
    """For each engine that runs the int8 file here: fp32 against int8 on --dataset-path's
    --split, mIoU and the pixels that agree."""
    from utils.data.datasets import read_class_label
    from utils.inference.export import compare_int8

    kwargs = {**predictor_kwargs(args, Unet), "precision": None}
    settings = Unet(**{**kwargs, "model_path": str(fp32), "engine": None}).settings
    layout = DatasetLayout.of(args.dataset_path, settings.dataset_format)
    names = read_split(args.dataset_path, args.split, settings.dataset_format)
    images, labels = layout.image_files(names), layout.label_files(names)
    for name, engine in ENGINES.items():
        if name == "torch" or not engine.available() or "cpu" not in engine.devices:
            continue
        precision = "fp32" if engine.takes_precision else None
        models = [
            Unet(**{**kwargs, "model_path": str(fp32), "engine": name, "precision": precision}),
            Unet(**{**kwargs, "model_path": args.onnx_save_path, "engine": name}),
        ]
        truth = (
            read_class_label(path, settings.num_classes, settings.dataset_format) for path in labels
        )
        check = compare_int8(*models, images, truth, settings.num_classes)
        print("\n".join(check.lines(f"{args.dataset_path} ({args.split}) in {name}")))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    flush_denormals()  # before the intra-op threads start, so that they flush too
    args = get_args(argv)
    with backend_settings(deterministic=False, tf32=args.tf32):
        unet = Unet(**predictor_kwargs(args, Unet, model_path=model_path(args)))
        if args.mode in ("predict", "predict_onnx"):
            if args.images:
                predict_images(unet, args.images, args)
            else:
                interactive(unet, args)
        elif args.mode == "dir_predict":
            dir_predict(unet, args)
        elif args.mode == "video":
            video(unet, args)
        elif args.mode == "fps":
            fps(unet, args)
        else:
            export(unet, args)


if __name__ == "__main__":
    main()
