"""The encoders of ``nets/backbones.py`` side by side: parameters, GFLOPs and CPU latency::

    python -m benchmarks.backbones                  # 512x512, the docs' table
    python -m benchmarks.backbones --size 256 --repeats 2
    python -m benchmarks.backbones --backbones vgg vgg16_bn   # some of them
    python -m benchmarks.backbones --backbones vgg --width-mult 0.5   # with half the channels

Each row is a 21-class UNet on that encoder: its parameters, the multiply-adds of one forward
pass at ``--size`` counted by ``torch.utils.flop_counter`` (GFLOPs = 2 x multiply-adds / 1e9,
as torch counts them), and the best of ``--repeats`` forward passes of one image after a
warm-up, on this machine's CPU in fp32 and, where the CPU has native bf16, in bf16 +
channels-last. It prints a Markdown table for docs/training.md.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.predict_speed import device_name, interleaved_best
from nets.backbones import BACKBONES
from nets.unet import Unet
from utils.device import cpu_has_native_bf16


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int, bf16: bool) -> float:
    if bf16:
        model, x = (t.to(memory_format=torch.channels_last) for t in (model, x))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        return interleaved_best([lambda: model(x)], repeats)[0] * 1000


def row(name: str, size: int, repeats: int, bf16: bool, width_mult: float = 1.0) -> str:
    torch.manual_seed(0)
    model = Unet(num_classes=21, backbone=name, width_mult=width_mult).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.rand(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    gflops = counter.get_total_flops() / 1e9
    label = name if width_mult == 1 else f"{name} --width-mult {width_mult:g}"
    cells = [f"`{label}`", f"{params:.1f}M", f"{gflops:.0f}",
             f"{latency_ms(model, x, repeats, bf16=False):.0f} ms"]  # fmt: skip
    if bf16:
        cells.append(f"{latency_ms(model, x, repeats, bf16=True):.0f} ms")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=list(BACKBONES),
        default=None,
        help="the rows (default: every encoder; those that scale, with --width-mult)",
    )
    parser.add_argument(
        "--width-mult", type=float, default=1.0, help="their channels' multiple (default: 1)"
    )
    args = parser.parse_args(argv)
    scale = args.width_mult != 1
    rows = args.backbones or [name for name, b in BACKBONES.items() if b.scales or not scale]
    bf16 = cpu_has_native_bf16()
    print(f"{args.size}x{args.size}, 21 classes, batch 1, {torch.get_num_threads()} threads, "
          f"{device_name(torch.device('cpu'))}:")  # fmt: skip
    head = ["backbone", "parameters", "GFLOPs", "CPU fp32"] + (["CPU bf16"] if bf16 else [])
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for name in rows:
        print(row(name, args.size, args.repeats, bf16, args.width_mult), flush=True)


if __name__ == "__main__":
    main()
