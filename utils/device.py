"""The one place that turns ``--device`` and ``--precision`` into a device, autocast and scaler."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where, in which precision and in which memory layout the model runs."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device, in this runtime's memory layout."""
        return model.to(self.device, memory_format=self.memory_format)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) images -> float ``/ 255`` on the device, in the memory layout."""
        images = images.to(self.device, non_blocking=True).float().div_(255)
        return images.contiguous(memory_format=self.memory_format)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W) class indices -> int64 on the device, as the losses index with."""
        return labels.to(self.device, non_blocking=True).long()

    def autocast(self):
        """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def parse_device(name: str) -> tuple[str, int | None]:
    """``cuda:1`` -> ("cuda", 1), ``cpu`` -> ("cpu", None); an unknown name is refused."""
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N.")
    return kind, int(index) if index else None


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda:N`` is GPU N; under torchrun each
    rank takes its own GPU."""
    kind, index = parse_device(name)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu."
        )
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    number = index if index is not None else torch.cuda.current_device()
    if number >= torch.cuda.device_count():
        raise UserError(
            f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); CUDA_VISIBLE_DEVICES may hide "
            "the others."
        )
    return torch.device("cuda", number)


def resolve_runtime(
    device: str = "auto",
    precision: str = "fp32",
    local_rank: int | None = None,
    channels_last: bool | None = False,
    training: bool = False,
) -> Runtime:
    """Check that the precision suits the device and return the :class:`Runtime`.

    ``channels_last=None`` picks the faster layout for the device, for ``training`` or for
    prediction (:func:`prefers_channels_last`).
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    resolved = resolve_device(device, local_rank)
    if precision == "auto":  # bf16 where it is native, else the original's fp32
        native = gpu_has_native_bf16() if resolved.type == "cuda" else cpu_has_native_bf16()
        precision = "bf16" if native else "fp32"
    if precision == "fp16" and resolved.type != "cuda":
        raise UserError(
            "--precision fp16 (or --fp16) needs a CUDA GPU; on the CPU use --precision bf16."
        )
    if precision == "bf16" and resolved.type == "cuda" and not gpu_has_native_bf16():
        raise UserError("this GPU has no native bf16 (before Ampere); use --precision fp16.")
    if precision == "bf16" and resolved.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated and much slower "
            "than fp32 here; use --precision fp32 on this machine.",
            stacklevel=2,
        )
    if channels_last is None:
        channels_last = prefers_channels_last(resolved, training, precision)
    return Runtime(resolved, precision, channels_last)


def bf16_note(runtime: Runtime) -> str | None:
    """One line for a run in fp32 on a CPU that runs bf16 natively: faithful, and slower."""
    if runtime.device.type != "cpu" or runtime.precision != "fp32" or not cpu_has_native_bf16():
        return None
    return (
        "note: this CPU runs bf16 natively (AVX512-BF16 or AMX): --precision bf16 trains several "
        "times faster than this fp32 run (the original's precision), at bf16's rounding."
    )


def prefers_channels_last(
    device: torch.device, training: bool = False, precision: str = "fp32"
) -> bool:
    """Whether convolutions run faster channels-last here: on CUDA always (tensor cores want
    NHWC, and the in-training evaluation then needs no copy of the model in another layout);
    on a CPU for prediction, and for training in bf16 only.

    Measured on a 2-core AMD Zen 4, VGG UNet at 512x512, batch 1, fp32: channels-last inference
    took 0.85x the time of NCHW with AVX-512 and 0.81x with oneDNN held to AVX2
    (``ONEDNN_MAX_CPU_ISA=AVX2``); a Zen 3 (AVX2 only) measured x1.1 to x1.4 faster inference.
    Training steps there took 1.7x as long channels-last in fp32, so fp32 training keeps NCHW
    on a CPU. In bf16 on a 2-core Sapphire Rapids (AMX), a training step at 96x128, batch 4,
    took 0.330 s channels-last against 0.386 s NCHW (``train.py --config recipes/cpu.yaml
    --benchmark 8``).
    """
    return device.type == "cuda" or not training or precision == "bf16"


#: The cuBLAS workspace that torch's reproducibility notes require for deterministic matmuls.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
#: The values of ``CUBLAS_WORKSPACE_CONFIG`` that make cuBLAS deterministic.
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


def use_device(device: torch.device) -> None:
    """Make a CUDA device the current one, so that pinned memory, streams and events use it
    instead of opening a stray context on GPU 0 (``--device cuda:N``, or a torchrun rank)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def tf32_state() -> tuple[bool, bool]:
    """Whether CUDA fp32 convolutions and matmuls may use TF32, as they are (to restore them).

    Read and written through ``allow_tf32``, the flags that torch 2.9's ``fp32_precision`` API
    keeps in step with its own: setting ``cudnn.conv.fp32_precision`` alone leaves cuDNN's RNN
    flag behind, and ``torch.backends.cudnn.allow_tf32`` then raises for whoever reads it.
    """
    return bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32)


def tf32_enabled() -> bool:
    """Whether fp32 convolutions on CUDA may use TF32 (PyTorch's default: they may)."""
    return tf32_state()[0]


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA fp32 convolutions on, or convolutions and matmuls strict fp32. Matmuls are
    only ever turned off: PyTorch's default keeps them strict, and so does ``--tf32``."""
    torch.backends.cudnn.allow_tf32 = enabled
    if not enabled and torch.backends.cuda.matmul.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False


def restore_tf32(state: tuple[bool, bool]) -> None:
    """Undo :func:`set_tf32`: put back a :func:`tf32_state`, touching only what changed."""
    for owner, value in zip((torch.backends.cudnn, torch.backends.cuda.matmul), state, strict=True):
        if bool(owner.allow_tf32) != value:
            owner.allow_tf32 = value


def deterministic_cublas() -> None:
    """Set the cuBLAS workspace deterministic matmuls need; a nondeterministic value the user
    set is replaced, with a note (it is read when CUDA starts)."""
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace not in (None, *DETERMINISTIC_CUBLAS):
        print(
            f"--deterministic: CUBLAS_WORKSPACE_CONFIG={workspace} is not deterministic; "
            f"using {CUBLAS_WORKSPACE_CONFIG} instead."
        )
    if workspace not in DETERMINISTIC_CUBLAS:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG


@contextlib.contextmanager
def backend_settings(deterministic: bool | None = None, tf32: bool = True) -> Iterator[None]:
    """The numerics of a run, restored on exit.

    ``deterministic``: deterministic algorithms only (an op without one is an error), cuDNN
    without autotuning, and a deterministic cuBLAS workspace (:func:`deterministic_cublas`;
    call this before CUDA starts). Off: cuDNN autotunes its algorithms, which pays off for the
    fixed input shape of training and of prediction. None leaves all of that as it is.
    ``tf32`` off keeps CUDA fp32 convolutions and matmuls strict; on keeps PyTorch's default,
    TF32 convolutions.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    previous_tf32 = tf32_state()
    if deterministic:
        deterministic_cublas()
    if deterministic is not None:
        set_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if tf32 != tf32_enabled():
        set_tf32(tf32)
    try:
        yield
    finally:
        set_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[1:]
        restore_tf32(previous_tf32)


def flush_denormals() -> bool:
    """Flush CPU denormals to zero for the rest of the process; False where the CPU cannot.

    Adam's first moment of a weight whose gradient stays zero (a dead ReLU's) shrinks by beta1
    each step, into fp32's denormals after about 700 steps, where the CPU's arithmetic on it is
    about ten times slower: the fused Adam step over 25M such weights took 195 ms instead of 17
    (2 cores), and an ISBI epoch grew from 7 to 8-9 s. Values under 1.2e-38 are zero to
    training. PyTorch's switch is the calling thread's, and the intra-op threads copy it when
    they start: the scripts call this first, before any parallel op starts them.
    """
    return torch.set_flush_denormal(True)


def set_deterministic_algorithms(enabled: bool) -> None:
    """``torch.use_deterministic_algorithms(enabled)`` where that changes something: the call
    imports torch._inductor, a second and a half of a run's start-up."""
    if torch.are_deterministic_algorithms_enabled() != enabled:
        torch.use_deterministic_algorithms(enabled)


def gpu_has_native_bf16() -> bool:
    """Whether the current GPU computes bf16 in hardware (Ampere and later): torch's own check
    also counts the emulation of older GPUs, which runs but far slower than fp16."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from ``cpuinfo``; ("", no flags) where that file
    cannot be read (not Linux)."""
    name, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags":
                flags.update(value.split())
    return name, flags


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions in hardware (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
