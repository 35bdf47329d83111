"""ONNX exports of a trained network, with the model's settings in the metadata and checked
against torch; and the check of an int8 export (utils/inference/quantize.py makes it) against its
fp32 export on labelled images."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError
from utils.inference.engines import import_onnxruntime
from utils.settings.model import ModelSettings
from utils.utils_metrics import ConfusionMatrix

#: The opset of the export: the original's.
OPSET = 12


def export_onnx(
    net: torch.nn.Module,
    settings: ModelSettings,
    path: str | Path,
    *,
    simplify: bool = True,
    dynamic: bool = False,
    check: bool = True,
) -> Path:
    """Export ``net`` (opset 12, input "images", output "output"), check it with onnx and,
    with ``check``, compare onnxruntime's output with torch's on a random input. ``settings``
    go into the model's metadata; ``dynamic`` leaves batch, height and width free."""
    try:
        import onnx
    except ImportError as error:
        raise UserError("exporting needs the onnx package: pip install onnx.") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(net).float().cpu().eval()  # the predictor stays as it is
    x = torch.rand(1, 3, *settings.input_shape)
    free = {0: "batch", 2: "height", 3: "width"}
    print(f"Starting export with onnx {onnx.__version__}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            x,
            str(path),
            opset_version=OPSET,
            input_names=["images"],
            output_names=["output"],
            dynamo=False,
            dynamic_axes={"images": free, "output": free} if dynamic else None,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if simplify:
        model = _simplified(model)
    for key, value in settings.to_dict().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    print(f"Onnx model save as {path}")
    if not check:
        return path
    try:
        onnxruntime = import_onnxruntime()
    except UserError:
        print("onnxruntime is not installed: skipped the check against torch.")
        return path
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ours = net(x).numpy()
    print(
        f"onnxruntime vs torch on a random input: max abs difference "
        f"{np.abs(theirs - ours).max():.2e}"
    )
    return path


def _simplified(model):
    """The graph simplified by onnxsim when it is installed, else as it is (said so)."""
    try:
        import onnxsim
    except ImportError:
        print("onnxsim is not installed: the graph is saved unsimplified.")
        return model
    model, ok = onnxsim.simplify(model)
    if not ok:
        raise UserError("onnxsim could not check the simplified model; use --no-simplify.")
    return model


@dataclass(frozen=True)
class Int8Check:
    """fp32 against int8 on labelled images: each one's mIoU (%) and the share of pixels on
    which their labels agree."""

    fp32_miou: float
    int8_miou: float
    agreement: float
    images: int

    #: More mIoU points lost than this, and the export warns.
    TOLERATED_LOSS = 1.0

    def lines(self, where: str) -> list[str]:
        loss = self.fp32_miou - self.int8_miou
        out = [
            f"On {self.images} images of {where}: mIoU fp32 {self.fp32_miou:.2f}, int8 "
            f"{self.int8_miou:.2f} ({-loss:+.2f}); the labels agree on {self.agreement:.2%} of "
            "the pixels."
        ]
        if loss > self.TOLERATED_LOSS:
            out.append(
                f"warning: int8 loses {loss:.2f} mIoU points against fp32 here; calibrate on "
                "more of your training images (--calibration-images), or deploy the fp32 export."
            )
        return out


def compare_int8(
    fp32: Any,
    int8: Any,
    image_paths: list[Path],
    labels: Iterable[np.ndarray],
    num_classes: int,
) -> Int8Check:
    """Run the fp32 and int8 predictors (``unet.Unet``) over ``image_paths``, score each against
    ``labels`` (class indices at the images' sizes) and count where they agree."""
    matrices = [ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)]
    same = total = 0
    pairs = zip(fp32.predict_files(image_paths), int8.predict_files(image_paths), strict=True)
    for (a, b), label in zip(pairs, labels, strict=True):
        matrices[0].update(label, a.labels)
        matrices[1].update(label, b.labels)
        same += int((a.labels == b.labels).sum())
        total += a.labels.size
    return Int8Check(
        matrices[0].miou * 100, matrices[1].miou * 100, same / max(total, 1), len(image_paths)
    )
