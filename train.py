"""Train a UNet on VOC-layout or medical-layout data: the original's recipe, one engine.

A recipe file holds the settings you change, as the block of constants at the top of the
original's train.py did; flags win over it:

    python train.py --config recipes/voc.yaml --dataset-path VOCdevkit
    python train.py --config recipes/scratch.yaml --dataset-path VOCdevkit --num-classes 4
    python train.py --dataset-path VOCdevkit --num-classes 4 --model-path model_data/my.pth
    python train.py --resume logs/checkpoint_last.pth          # after a crash or Ctrl-C
    torchrun --nproc_per_node 4 train.py --config ...          # DDP, one process per GPU

Each run writes its resolved settings to <save-dir>/config.yaml; --config with that file trains
the same model again; a resumed run writes where its checkpoint lies unless --save-dir is given.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from pathlib import Path

from utils.device import Runtime, backend_settings, flush_denormals, resolve_runtime, use_device
from utils.distributed import (
    DistInfo,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
)
from utils.errors import UserError, exit_on_user_error
from utils.seeding import seed_everything
from utils.settings.cli import add_setting_flags, argument_parser, differing_defaults
from utils.settings.config import (
    SETTINGS,
    TrainConfig,
    format_value,
)
from utils.settings.recipes import read_config_file, resolve_config
from utils.settings.validation import validate
from utils.training.build import build_data
from utils.training.checkpoint import check_fixed_on_resume, read_training_checkpoint
from utils.training.log import save_augmented_samples
from utils.training.stopping import TrainingInterruptedError, stop_on_signals
from utils.training.trainer import Trainer, benchmark


def get_parser(
    description: str | None = None, defaults: dict | None = None
) -> argparse.ArgumentParser:
    """train.py's flags; ``description`` and ``defaults`` (a recipe's values, shown as the
    defaults in --help) are train_medical.py's."""
    text = textwrap.fill(differing_defaults(), 95, break_on_hyphens=False)
    parser = argument_parser(f"{description or __doc__}\n{text}")
    flag = parser.add_argument_group("what to run").add_argument
    flag(
        "--config",
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="a recipe file of settings (recipes/*.yaml, or a run's config.yaml); flags win "
        "over it, and a later --config over an earlier one (default: none)",
    )
    flag(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue from <save-dir>/checkpoint_last.pth with its settings; flags given with "
        "it override them, e.g. a larger --unfreeze-epoch (default: a new run)",
    )
    flag(
        "--benchmark",
        type=int,
        default=0,
        metavar="N",
        help="time N training steps (after 2 warm-up steps), print s/step and img/s, and exit "
        "(default: off)",
    )
    flag(
        "--save-augmented",
        type=int,
        default=0,
        metavar="N",
        help="save a picture of N augmented training samples with their labels overlaid to "
        "<save-dir>/augmented.png, and exit (default: off)",
    )
    add_setting_flags(parser, **{name: format_value(v) for name, v in (defaults or {}).items()})
    return parser


def get_config(
    argv: list[str] | None = None, recipe: str | Path | None = None, description: str | None = None
) -> tuple[TrainConfig, argparse.Namespace, dict | None]:
    """The run's settings: the flags over the --config files over (with --resume) the
    checkpoint's settings over ``recipe`` (train_medical.py's defaults) over the original's
    defaults. Returns them with the parsed command line and the checkpoint to resume."""
    base = read_config_file(recipe) if recipe else {}
    args = get_parser(description, base).parse_args(argv)
    given = {key: value for key, value in vars(args).items() if key in SETTINGS}
    from_files: dict = {}
    for path in args.config:
        from_files.update(read_config_file(path))
    checkpoint = None
    if args.resume:
        checkpoint = read_training_checkpoint(args.resume)
        check_fixed_on_resume(checkpoint["config"], {**from_files, **given})
        base = {**base, **checkpoint["config"]}
        # a resumed run writes beside its checkpoint (a copied run into the copy), never into
        # the folder it was first saved to, unless --save-dir says so
        from_files["save_dir"] = str(Path(args.resume).parent)
    config = resolve_config(base, from_files, given)
    check_launch(config, argv if argv is not None else sys.argv[1:], args.benchmark)
    validate(config)
    return config, args, checkpoint


def check_launch(config: TrainConfig, argv: list[str], benchmark: int = 0) -> None:
    """Settings that depend on how the script was started (``argv`` is quoted back)."""
    runtime = config.runtime
    if runtime.distributed and not launched_by_torchrun():
        raise UserError(
            "multi-GPU training runs one process per GPU under torchrun; start it as "
            f"`torchrun --nproc_per_node <GPUs> train.py {shlex.join(argv)}`."
        )
    if benchmark and launched_by_torchrun():
        raise UserError("--benchmark times one process; run it without torchrun.")
    if runtime.sync_bn and not launched_by_torchrun():
        raise UserError(
            "sync_bn (--sync-bn) synchronises torchrun processes; run under torchrun or drop it."
        )


def run(
    config: TrainConfig,
    runtime: Runtime,
    dist_info: DistInfo,
    *,
    checkpoint: dict | None = None,
    resume: str | None = None,
    steps: int = 0,
    augmented: int = 0,
) -> None:
    """Time ``steps`` steps, draw ``augmented`` augmented samples, or train (resumed from
    ``checkpoint``, read from ``resume``)."""
    if steps:
        print(benchmark(config, runtime, steps))
        return
    save_dir = Path(config.output.save_dir)
    if augmented:
        train_set, _ = build_data(config.data, config.runtime.seed)
        path = save_augmented_samples(
            train_set, augmented, save_dir / "augmented.png", config.schedule.init_epoch
        )
        print(f"Saved {augmented} augmented training samples to {path}")
        return
    if checkpoint is not None and dist_info.is_main:
        where = "the checkpoint's folder; --save-dir writes elsewhere"
        where = "--save-dir" if Path(resume).parent != save_dir else where
        print(f"Resuming {resume}, writing to {save_dir}/ ({where})")
    trainer = Trainer(config, runtime, dist_info)
    if checkpoint is not None:
        trainer.resume(checkpoint, resume)
    trainer.fit()


@exit_on_user_error
def main(
    argv: list[str] | None = None, recipe: str | Path | None = None, description: str | None = None
) -> None:
    flush_denormals()  # before the intra-op threads start, so that they flush too
    config, args, checkpoint = get_config(argv, recipe, description)
    settings = config.runtime
    # before anything starts CUDA: determinism needs the cuBLAS workspace set first
    numerics = backend_settings(deterministic=settings.deterministic, tf32=settings.tf32)
    with stop_on_signals(), numerics:
        local_rank = int(os.environ["LOCAL_RANK"]) if launched_by_torchrun() else None
        runtime = resolve_runtime(
            settings.device, settings.precision, local_rank, settings.channels_last, training=True
        )
        use_device(runtime.device)  # --device cuda:N, or this rank's GPU
        dist_info = init_distributed(runtime.device.type)
        seed_everything(settings.seed)
        try:
            run(
                config,
                runtime,
                dist_info,
                checkpoint=checkpoint,
                resume=args.resume,
                steps=args.benchmark,
                augmented=args.save_augmented,
            )
        except TrainingInterruptedError as stop:
            if dist_info.is_main:
                print(f"\n{stop.message()}", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        finally:
            cleanup_distributed()


if __name__ == "__main__":
    main()
