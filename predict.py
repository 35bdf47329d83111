"""Segment images, folders, videos or a camera with a trained model; time it; export ONNX.

    python predict.py img/street.jpg --model-path logs/best_epoch_weights.pth --num-classes 4
    python predict.py --mode dir_predict --dir-origin-path img/ --dir-save-path img_out/
    python predict.py --mode video --video-path clip.mp4 --video-save-path out.avi
    python predict.py --mode fps --fps-image-path img/street.jpg
    python predict.py --mode export_onnx --onnx-save-path model_data/models.onnx

Results are saved (headless machines work); ``--show`` also opens a window.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from get_miou import add_model_flags, predictor_from_args
from unet import default_class_names
from utils.dataloader import IMAGE_EXTENSIONS
from utils.errors import UserError, exit_on_user_error
from utils.utils import read_image

MODES = ("predict", "video", "fps", "dir_predict", "export_onnx", "predict_onnx")


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help="predict mode: image files (none: ask for them)")
    parser.add_argument("--mode", choices=MODES, default="predict", help="what to do")
    add_model_flags(parser)
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
    flag("--name-classes", nargs="+", default=None, help="class names for --count")
    flag("--show", action="store_true", help="also show results in a window")
    flag = parser.add_argument_group("video").add_argument
    flag("--video-path", default="0", help="a video file, or a camera index (default: 0)")
    flag("--video-save-path", default="", help="write the segmented video here (XVID)")
    flag("--video-fps", type=float, default=25.0, help="fps of the saved video")
    flag = parser.add_argument_group("timing").add_argument
    flag("--test-interval", type=int, default=100, help="fps mode: runs to average")
    flag("--fps-image-path", default="img/street.jpg", help="fps mode: the image to time")
    flag = parser.add_argument_group("folders").add_argument
    flag("--dir-origin-path", default="img/", help="dir_predict: input folder")
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
    return parser.parse_args(argv)  # fmt: skip


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


def predict_images(unet, paths: list[str], args) -> None:
    out = Path(args.dir_save_path)
    out.mkdir(parents=True, exist_ok=True)
    names = args.name_classes or default_class_names(args.num_classes)
    for path in paths:
        result = unet.detect_image(read_image(Path(path)), count=args.count, name_classes=names)
        target = out / f"{Path(path).stem}.png"
        result.save(target)
        print(f"Saved {target}")
        if args.show:
            show(result, path)


def interactive(unet, args) -> None:
    """The reference's loop: ask for a file name until end of input."""
    while True:
        try:
            path = input("Input image filename:")
        except EOFError:
            return
        try:
            predict_images(unet, [path], args)
        except UserError as error:
            print(f"Open Error! {error}")


def dir_predict(unet, args) -> None:
    folder = Path(args.dir_origin_path)
    if not folder.is_dir():
        raise UserError(f"--dir-origin-path {folder} is not a folder.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    out = Path(args.dir_save_path)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths):
        unet.detect_image(read_image(path)).save(out / f"{path.stem}.png")


def video(unet, args) -> None:
    source = int(args.video_path) if args.video_path.isdigit() else args.video_path
    capture = cv2.VideoCapture(source)
    ok, frame = capture.read()
    if not ok:
        raise UserError(
            f"cannot read from --video-path {args.video_path}; check the file or camera."
        )
    writer = None
    if args.video_save_path:
        height, width = frame.shape[:2]
        fourcc = cv2.VideoWriter_fourcc(*"XVID")
        writer = cv2.VideoWriter(args.video_save_path, fourcc, args.video_fps, (width, height))
    fps, frames = 0.0, 0
    while ok:  # the first frame is kept, unlike the reference
        start = time.perf_counter()
        image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        result = cv2.cvtColor(np.asarray(unet.detect_image(image)), cv2.COLOR_RGB2BGR)
        fps = (fps + 1.0 / (time.perf_counter() - start)) / 2
        result = cv2.putText(result, f"fps= {fps:.2f}", (0, 40), cv2.FONT_HERSHEY_SIMPLEX, 1,
                             (0, 255, 0), 2)  # fmt: skip
        if writer is not None:
            writer.write(result)
        frames += 1
        if args.show and show(result, "video", wait=1) & 0xFF == 27:  # Esc
            break
        ok, frame = capture.read()
    capture.release()
    if writer is not None:
        writer.release()
        print(f"Saved {frames} frames to {args.video_save_path}")
    print(f"Video Detection Done! {frames} frames, last fps {fps:.2f}")


def fps(unet, args) -> None:
    image = read_image(Path(args.fps_image_path))
    end_to_end = unet.get_FPS(image, args.test_interval)
    model_only = unet.model_seconds(args.test_interval)
    print(f"model only: {model_only:.4f} seconds, {1 / model_only:.2f} FPS @batch_size 1")
    print(f"end to end: {end_to_end:.4f} seconds, {1 / end_to_end:.2f} FPS @batch_size 1 "
          f"({args.fps_image_path}, {image.width}x{image.height})")  # fmt: skip


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.mode == "predict_onnx":
        from unet import Unet_ONNX

        unet = Unet_ONNX(onnx_path=args.onnx_path, num_classes=args.num_classes,
                         input_shape=args.input_shape, mix_type=args.mix_type)  # fmt: skip
    else:
        unet = predictor_from_args(args, mix_type=args.mix_type)
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
