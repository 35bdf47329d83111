"""Segment images, folders, videos or a camera with a trained model; time it; export ONNX.

    python predict.py img/street.jpg --model-path logs/best_epoch_weights.pth
    python predict.py --mode dir_predict --dir-origin-path img/ --dir-save-path img_out/
    python predict.py --mode video --video-path clip.mp4 --video-save-path out.avi
    python predict.py --mode fps --fps-image-path img/street.jpg
    python predict.py --mode export_onnx --onnx-save-path model_data/models.onnx

Results are saved (headless machines work); ``--show`` also opens a window. The settings the
model was trained with (classes, backbone, input size, class names) come from the file train.py
saves beside the weights; give --num-classes, --backbone and --input-shape only for the
original's own weights files.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from unet import Unet, Unet_ONNX
from utils.cli import add_batch_flags, add_model_flags, argument_parser, predictor_kwargs
from utils.config import MODEL_KEYS
from utils.dataloader import IMAGE_EXTENSIONS
from utils.device import backend_settings
from utils.errors import UserError, exit_on_user_error
from utils.inference import (
    Sample,
    check_batching,
    collate_predictions,
    default_batching,
    letterbox_input,
)
from utils.progress import progress, say
from utils.utils import read_image

MODES = ("predict", "video", "fps", "dir_predict", "export_onnx", "predict_onnx")
#: The original's defaults for these paths, kept: users know them.
FPS_IMAGE_PATH = "img/street.jpg"
DIR_ORIGIN_PATH = "img/"


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
    flag("--dir-origin-path", default=DIR_ORIGIN_PATH, help="dir_predict: input folder")
    flag("--dir-save-path", default="img_out/", help="where results are saved")
    flag = parser.add_argument_group("onnx").add_argument
    flag(
        "--simplify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simplify the exported graph when onnxsim is installed (default: on)",
    )
    flag("--onnx-save-path", default="model_data/models.onnx", help="export_onnx: output")
    flag("--onnx-path", default="model_data/models.onnx", help="predict_onnx: model to run")
    flag("--dynamic", action="store_true", help="export_onnx: dynamic height and width")
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_batching(args.batch_size, args.num_workers)
    check_batching(args.fps_batch_size, args.num_workers, "--fps-batch-size")
    return args


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


def predict_images(unet, paths: list[str], args, missing: str = "check the path") -> None:
    """Segment each image file and save the drawing in --dir-save-path."""
    out = Path(args.dir_save_path)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_legend(out)
    for path in paths:
        image = read_image(path, missing=missing)
        result = unet.detect_image(image, count=args.count, name_classes=args.name_classes)
        target = out / f"{Path(path).stem}.png"
        result.save(target)
        print(f"Saved {target}")
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
    """Segment every image of a folder; an image that cannot be read is skipped and named."""
    folder = Path(args.dir_origin_path)
    if not folder.is_dir():
        hint = " (the original's default)" if args.dir_origin_path == DIR_ORIGIN_PATH else ""
        raise UserError(
            f"--dir-origin-path '{folder}'{hint} is not a folder; point it at your images."
        )
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"'{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    out = Path(args.dir_save_path)
    out.mkdir(parents=True, exist_ok=True)
    legend = unet.save_legend(out)
    predictions = unet.predict_files(
        paths, args.batch_size, args.num_workers, keep_image=True, skip_unreadable=True
    )
    skipped = []
    for result in progress(predictions, total=len(paths), desc="dir_predict"):
        if result.error:
            skipped.append(result.path)
            say(f"warning: skipped {result.error}")
            continue
        unet.draw(result.image, result.labels).save(out / f"{result.path.stem}.png")
    print(f"saved {len(paths) - len(skipped)} of {len(paths)} to {out}")
    if legend is not None:
        print(f"which colour is which class: {legend}")
    if skipped:
        print(f"skipped (unreadable): {', '.join(repr(str(path)) for path in skipped)}")
    if len(skipped) == len(paths):
        raise UserError(
            f"no image in '{folder}' could be read ({len(paths)} tried); see the warnings above."
        )


def read_frames(capture, input_shape, batch_size: int) -> Iterator[tuple]:
    """Batches of letterboxed video frames, decoded by a background thread while the network
    runs on the previous batch (OpenCV and Pillow release the GIL while they work)."""
    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        batch, index = [], 0
        while not stop.is_set():
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            data, placement = letterbox_input(Image.fromarray(rgb), input_shape)
            batch.append((data, Sample(index, placement, image=rgb)))
            index += 1
            if len(batch) == batch_size and not put(collate_predictions(batch)):
                return
            batch = [] if len(batch) == batch_size else batch
        if batch:
            put(collate_predictions(batch))
        put(None)

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    try:
        while (item := batches.get()) is not None:
            yield item
    finally:
        stop.set()
        thread.join()


def video(unet, args) -> None:
    """Segment every frame, the first included; decoding overlaps the network."""
    source = int(args.video_path) if args.video_path.isdigit() else args.video_path
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise UserError(
            f"cannot read from --video-path {args.video_path}; check the file or camera."
        )
    writer = None
    fps, frames = 0.0, 0
    last = time.perf_counter()
    batches = read_frames(capture, unet.input_shape, args.batch_size)
    for sample, labels in unet.pipeline.predict_batches(batches):
        result = cv2.cvtColor(np.asarray(unet.draw(sample.image, labels)), cv2.COLOR_RGB2BGR)
        now = time.perf_counter()
        fps, last = (fps + 1.0 / max(now - last, 1e-9)) / 2, now
        result = cv2.putText(result, f"fps= {fps:.2f}", (0, 40), cv2.FONT_HERSHEY_SIMPLEX, 1,
                             (0, 255, 0), 2)  # fmt: skip
        if args.video_save_path and writer is None:
            height, width = result.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"XVID")
            writer = cv2.VideoWriter(args.video_save_path, fourcc, args.video_fps, (width, height))
        if writer is not None:
            writer.write(result)
        frames += 1
        if args.show and show(result, "video", wait=1) & 0xFF == 27:  # Esc
            break
    batches.close()
    capture.release()
    if frames == 0:
        raise UserError(
            f"cannot read from --video-path {args.video_path}; check the file or camera."
        )
    if writer is not None:
        writer.release()
        print(f"Saved {frames} frames to {args.video_save_path}")
        unet.save_legend(Path(args.video_save_path).parent)
    print(f"Video Detection Done! {frames} frames, last fps {fps:.2f}")


def fps_image(path: str) -> tuple[Image.Image, str]:
    """The image to time and what to call it; with the original's default path absent, a
    generated one."""
    if path == FPS_IMAGE_PATH and not Path(path).is_file():
        print(f"{path} (the original's default) is not here: timing a generated 1330x1330 "
              "photo-like image instead; give --fps-image-path to time your own.")  # fmt: skip
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (1330, 1330), interpolation=cv2.INTER_CUBIC)
        return Image.fromarray(image), "a generated image"
    return read_image(path, missing="check --fps-image-path"), path


def fps(unet, args) -> None:
    """Three figures: the network + argmax (what the original's get_FPS times), the whole
    get_miou_png pipeline for one image, and the batched pipeline's throughput."""
    image, name = fps_image(args.fps_image_path)
    height, width = unet.input_shape
    network = unet.network_seconds(image, args.test_interval)
    end_to_end = unet.get_FPS(image, args.test_interval)
    batches = max(1, args.test_interval // args.fps_batch_size)
    workers = default_batching(unet.runtime.device, num_workers=args.num_workers)[1]
    throughput = unet.throughput(image, args.fps_batch_size, batches, workers)
    print(
        f"network + argmax at {height}x{width} (what the original's get_FPS times): "
        f"{network:.4f} seconds, {1 / network:.2f} FPS @batch_size 1"
    )
    print(
        f"get_miou_png, whole pipeline ({name}, {image.width}x{image.height}): "
        f"{end_to_end:.4f} seconds, {1 / end_to_end:.2f} FPS @batch_size 1"
    )
    print(f"batched get_miou_png: {throughput:.2f} images/s @batch_size {args.fps_batch_size}, "
          f"{workers} workers")  # fmt: skip


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    with backend_settings(deterministic=False, tf32=args.tf32):
        predictor = Unet_ONNX if args.mode == "predict_onnx" else Unet
        unet = predictor(**predictor_kwargs(args, predictor))
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
            unet.convert_to_onnx(args.simplify, args.onnx_save_path, dynamic=args.dynamic)


if __name__ == "__main__":
    main()
