"""Layer table, parameter count and GFLOPs of a UNet, as the reference's summary.py reports.

    python summary.py --backbone vgg --num-classes 21 --input-shape 512 512
    python summary.py --model-path logs/last_epoch_weights.pth    # the settings it was trained with

FLOPs come from ``torch.utils.flop_counter`` and count a multiply-add as 2 operations.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from nets.unet import check_input_shape
from utils.errors import exit_on_user_error
from utils.inference.engines import settings_of
from utils.settings.cli import add_weights_setting_flags, argument_parser


def layer_table(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple, int]]:
    """(name, type, output shape, parameters) of every leaf module, in call order."""
    rows, hooks = [], []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            params = sum(p.numel() for p in module.parameters())

            def hook(mod, _inputs, output, name=name, params=params):
                rows.append((name, type(mod).__name__, tuple(output.shape), params))

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for handle in hooks:
        handle.remove()
    return rows


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--model-path",
        default=None,
        help="weights whose settings file (beside them) gives the flags below (default: none)",
    )
    add_weights_setting_flags(parser, ["num_classes", "backbone", "width_mult", "input_shape"])
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    names = ("num_classes", "backbone", "width_mult", "input_shape")
    settings = settings_of(args.model_path, {name: getattr(args, name) for name in names})
    check_input_shape(*settings.input_shape, settings.backbone)
    model = settings.network().eval()
    x = torch.zeros(1, 3, *settings.input_shape)
    print(f"{'Layer':<32} {'Type':<22} {'Output shape':<24} {'Params':>12}")
    print("-" * 93)
    for name, kind, shape, params in layer_table(model, x):
        print(f"{name:<32} {kind:<22} {str(list(shape)):<24} {params:>12,}")
    print("-" * 93)
    total = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, x)
    print(f"Total params: {total:,} ({total / 1e6:.2f} M)")
    shape = list(settings.input_shape)
    print(f"Total GFLOPS: {flops / 1e9:.3f}G (multiply-adds x 2, input {shape})")


if __name__ == "__main__":
    main()
