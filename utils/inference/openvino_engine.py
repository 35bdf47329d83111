"""OpenVINO, the third engine of :mod:`utils.inference.engines`: Intel's inference runtime on the
CPU (AMD CPUs too), for an ONNX export (fp32, or the ``--int8`` QDQ file, run in int8), its own IR
(``.xml`` with its ``.bin``) and weights (``.pth``, converted through the project's ONNX
export and cached beside them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.device import Runtime, cpu_has_native_bf16, parse_device
from utils.errors import UserError
from utils.inference.engines import (
    Engine,
    TorchEngine,
    check_exported,
    exported_settings,
    is_int8_onnx,
    load_network,
    register_engine,
    require_file,
    run_in_batches_of_one,
    takes_one_size,
)
from utils.settings.model import ModelSettings

#: How OpenVINO is installed (requirements.txt lists it).
OPENVINO_PIP = "pip install openvino"
#: Where a .pth's OpenVINO model is cached beside it: <stem>.openvino-<key>.xml and .bin.
OPENVINO_CACHE = "{stem}.openvino-{key}.xml"


@register_engine
class OpenVinoEngine(Engine):
    """Intel's OpenVINO on the CPU (AMD CPUs too): an ONNX export (fp32, or the ``--int8`` QDQ
    file, run in int8), an OpenVINO IR (``.xml`` with its ``.bin``), or weights (``.pth``),
    converted through the project's own ONNX export and cached as an IR beside them, named by
    their content so that it is never stale. Its float parts run in fp32, or in bf16 where the
    CPU has it natively: OpenVINO's own default there, and this engine's. It takes as many
    threads as torch, so the fps table compares like with like."""

    name = "openvino"
    summary = (
        "Intel's OpenVINO on the CPU: fp32, bf16 where the CPU has it, int8 from an --int8 "
        "export; runs .onnx, its own .xml and .pth weights"
    )
    opens = (".onnx", ".xml", ".pth")
    default_for = (".xml",)
    package = "openvino"
    install = OPENVINO_PIP
    devices = ("cpu",)
    converts = True

    @classmethod
    def require(cls):
        """openvino, without its usage telemetry: at every import it sends an event to Google
        Analytics, from a process it forks, unless a consent file in the home folder says no.
        With its telemetry package blocked, openvino uses the silent stub it ships instead."""
        sys.modules.setdefault("openvino_telemetry", None)
        return super().require()

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool | None = None,
        num_threads: int | None = None,
    ):
        self.ov = self.require()
        if parse_device(device or "auto")[0] == "cuda":
            raise UserError(
                f"--engine openvino runs on the CPU, not --device {device}; drop --device, or "
                "use --engine torch or onnxruntime on the GPU."
            )
        self.model_path = Path(model_path)
        self.runtime = Runtime(torch.device("cpu"))
        wanted = None if precision in ("int8", "auto") else precision  # auto: OpenVINO's own
        self.float_precision = _openvino_precision(wanted)
        self.num_threads = num_threads or torch.get_num_threads()
        self.core = self.ov.Core()
        self.model = None if TorchEngine.can_open(self.model_path) else self._read()
        self.precision = self.float_precision
        if self.model is not None and _has_fake_quantize(self.model):
            self.precision = "int8"
        if precision == "int8" and self.precision != "int8":
            raise UserError(
                f"'{self.model_path}' is not an int8 model; make one with predict.py --mode "
                "export_onnx --int8, or drop --precision int8."
            )

    @classmethod
    def can_open(cls, model_path: str | Path) -> bool:
        suffix = Path(model_path).suffix.lower()
        return suffix in (".onnx", ".xml") or TorchEngine.can_open(model_path)

    @classmethod
    def precisions(cls, device: torch.device, model_path: str | Path) -> tuple[str, ...]:
        if Path(model_path).suffix.lower() == ".onnx" and is_int8_onnx(model_path):
            return ("int8",)
        return ("bf16", "fp32") if cpu_has_native_bf16() else ("fp32",)

    @classmethod
    def read_settings(
        cls, model_path: str | Path, given: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        if TorchEngine.can_open(model_path):
            return TorchEngine.read_settings(model_path, given)
        engine = cls(model_path, device="cpu", precision="fp32")
        return exported_settings(_openvino_metadata(engine.model), *engine._shapes(),
                                 engine.model_path, given)  # fmt: skip

    def load(self, settings: ModelSettings) -> None:
        if self.model is None:
            self.model = self._converted(settings)
        inputs, outputs = self._shapes()
        check_exported(self.model_path, inputs, outputs, settings)
        hint = {"bf16": "bf16", "fp32": "f32"}[self.float_precision]
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": self.num_threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = self.core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.one_at_a_time = inputs[0] == 1
        self.fixed_size = takes_one_size(inputs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous().cpu().numpy()

        def run(batch: np.ndarray) -> np.ndarray:
            # In OpenVINO's own threads, never this one: its AMX kernels leave the tile state in
            # use, and a signal (a child's SIGCHLD) then needs a frame larger than the alternate
            # stack Python's faulthandler gives the main thread (pytest enables it): SIGSEGV.
            self.request.start_async({0: batch})
            self.request.wait()
            # the request's own output buffer: read before the next call, as the pipeline does
            return self.request.get_output_tensor(0).data

        return torch.from_numpy(run_in_batches_of_one(run, x, self.one_at_a_time))

    def _shapes(self) -> tuple[list, list]:
        """The model's input and output dimensions: ints, or names where they are free."""

        def dims(port) -> list:
            shape = port.get_partial_shape()
            return [d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(shape)]

        return dims(self.model.inputs[0]), dims(self.model.outputs[0])

    def _read(self):
        """An .onnx or an IR; an IR needs its .bin beside it."""
        path = self.model_path
        require_file(path)
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise UserError(
                f"'{path}' is an OpenVINO model without its weights '{path.with_suffix('.bin')}'; "
                "copy the .bin beside it."
            )
        try:
            return self.core.read_model(str(path))
        except Exception as error:  # noqa: BLE001 - OpenVINO raises its own types
            reason = str(error).strip().splitlines()[0]
            raise UserError(
                f"'{path}' is not a model OpenVINO can read ({reason}); export it again."
            ) from None

    def _converted(self, settings: ModelSettings):
        """The weights through the project's ONNX export, read by OpenVINO; cached as an IR
        beside them, named by their bytes and the input size."""
        import contextlib
        import io
        import tempfile
        import zlib

        from utils.inference.export import export_onnx

        with open(self.model_path, "rb") as file:
            crc = zlib.crc32(file.read())
        height, width = settings.input_shape
        key = f"{crc:08x}-{height}x{width}"
        stem = self.model_path.stem
        cache = self.model_path.with_name(OPENVINO_CACHE.format(stem=stem, key=key))
        if cache.is_file() and cache.with_suffix(".bin").is_file():
            return self.core.read_model(str(cache))
        print(f"Converting {self.model_path} to OpenVINO through ONNX (once; cached beside it).")
        net = load_network(self.model_path, settings)
        with tempfile.TemporaryDirectory(prefix="unet-openvino-") as folder:
            onnx_path = Path(folder) / "model.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                export_onnx(net, settings, onnx_path, simplify=False, check=False)
            model = self.core.read_model(str(onnx_path))
            _save_cache(self.ov, model, cache)
        return model


def _openvino_precision(precision: str | None) -> str:
    native = cpu_has_native_bf16()
    precision = precision or ("bf16" if native else "fp32")
    if precision not in ("fp32", "bf16"):
        raise UserError(
            f"--precision {precision} is not one OpenVINO runs on the CPU: use fp32, or bf16 "
            "where the CPU has it (an --int8 export runs in int8)."
        )
    if precision == "bf16" and not native:
        raise UserError(
            "this CPU has no native bf16 (AVX512-BF16 or AMX), which OpenVINO's bf16 needs; "
            "use --precision fp32."
        )
    return precision


def _has_fake_quantize(model) -> bool:
    """Whether an OpenVINO model holds quantized (int8) operations: a QDQ export's do."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _openvino_metadata(model) -> dict[str, str]:
    """An ONNX export's metadata as OpenVINO keeps it (also in an IR saved from it)."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {key: value.astype(str) for key, value in info["framework"].items()}


def _save_cache(ov, model, cache: Path) -> None:
    """Write the IR (its .bin first, so a whole .xml means a whole cache), and delete the
    weights' older caches; a folder that cannot be written only costs the conversion again."""
    import contextlib
    import shutil
    import tempfile

    try:
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".openvino-") as folder:
            staged = Path(folder) / cache.name
            ov.save_model(model, str(staged), compress_to_fp16=False)
            stem = cache.name.split(".openvino-")[0]
            for old in cache.parent.glob(f"{stem}.openvino-*"):
                with contextlib.suppress(OSError):
                    old.unlink()
            shutil.move(staged.with_suffix(".bin"), cache.with_suffix(".bin"))
            shutil.move(staged, cache)
    except OSError as error:
        print(f"note: the OpenVINO model cannot be cached beside the weights ({error.strerror}); "
              "it is converted again next time.")  # fmt: skip
