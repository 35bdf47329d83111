"""Train a UNet on VOC-layout or medical-layout data: the reference's recipe, one engine.

Every flag defaults to the reference's value. Examples::

    python train.py --dataset-path VOCdevkit --model-path model_data/unet_vgg_voc.pth
    python train.py --dataset-path demo_data/VOCdevkit --num-classes 4 --model-path '' \\
        --input-shape 64 64 --no-freeze-train --unfreeze-epoch 12 --unfreeze-batch-size 4
    make isbi    # the README's ISBI 2012 recipe: from scratch, flips, Adam 1e-3, batch 1
    python train.py --resume logs/checkpoint_last.pth          # after a crash or Ctrl-C
    torchrun --nproc_per_node 4 train.py ...                   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nets.unet import BACKBONES, Unet, check_input_shape, check_tile
from nets.unet_training import (
    INIT_TYPES,
    SegmentationLoss,
    describe_lr,
    fit_lr,
    get_lr_scheduler,
    set_optimizer_lr,
    weights_init,
)
from utils.callbacks import TrainingLog, save_augmented_samples
from utils.checkpoint import (
    SETTINGS_KEYS,
    load_matching_weights,
    load_training_checkpoint,
    read_training_checkpoint,
    save_training_checkpoint,
    save_weights,
)
from utils.cli import argument_parser
from utils.dataloader import (
    AUGMENTATIONS,
    DATASET_FORMATS,
    Loaders,
    UnetDataset,
    check_split_size,
    read_split,
    split_path,
)
from utils.device import Runtime, add_runtime_flags, determinism, resolve_runtime
from utils.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
)
from utils.errors import UserError, exit_on_user_error
from utils.seeding import seed_everything
from utils.utils_fit import evaluate_loss, evaluate_miou, train_one_epoch

#: Settings that shape the model; a resumed run cannot change them.
FIXED_ON_RESUME = ("num_classes", "backbone", "input_shape", "dataset_format")


def get_parser() -> argparse.ArgumentParser:
    parser = argument_parser(__doc__)
    flag = parser.add_argument_group("data and model").add_argument
    flag("--dataset-path", default="VOCdevkit", help="data set root (default: %(default)s)")
    flag(
        "--dataset-format",
        choices=DATASET_FORMATS,
        default="voc",
        help="voc: VOC2007/JPEGImages + SegmentationClass; medical: Images + Labels, class 1 "
        "where the label is <= 127.5 (default: %(default)s)",
    )
    flag(
        "--num-classes",
        type=int,
        default=21,
        help="number of classes including background (default: %(default)s)",
    )
    flag(
        "--train-split",
        default="train",
        help="ids to train on: a split name under ImageSets/Segmentation, or a path to a file "
        "of ids, one per line (default: %(default)s)",
    )
    flag(
        "--val-split",
        default="val",
        help="ids to validate on, as --train-split; optional for the medical layout "
        "(default: %(default)s)",
    )
    flag(
        "--augment",
        choices=AUGMENTATIONS,
        default="reference",
        help="training augmentation: reference = random scale, aspect, placement, flip and HSV "
        "jitter; flip = random left-right and up-down flips only; elastic = the U-Net paper's "
        "elastic deformation (3x3 grid, 10 px) with flips, 90-degree turns and mild "
        "brightness/contrast; none (default: %(default)s)",
    )
    flag(
        "--train-crop",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="train on random H x W crops at native resolution instead of whole images resized "
        "to --input-shape; pair it with --tile at evaluation (default: off)",
    )
    flag(
        "--save-augmented",
        type=int,
        default=0,
        metavar="N",
        help="save a picture of N augmented training samples with their labels overlaid to "
        "<save-dir>/augmented.png, and exit (default: off)",
    )
    flag(
        "--name-classes",
        nargs="+",
        default=None,
        help="class names, saved beside the weights for predict.py and get_miou.py (default: "
        "none: they use the 21 VOC names for 21 classes, else class_0, class_1, ...)",
    )
    flag("--backbone", choices=BACKBONES, default="vgg", help="encoder (default: %(default)s)")
    flag(
        "--pretrained",
        action="store_true",
        help="start the encoder from ImageNet weights in model_data/ (downloaded if missing)",
    )
    flag(
        "--model-path",
        default="model_data/unet_vgg_voc.pth",
        help="weights to start from; matching tensors are loaded; '' for none "
        "(default: %(default)s)",
    )
    flag(
        "--allow-backbone-mismatch",
        action="store_true",
        help="train even when backbone tensors of --model-path do not fit the model",
    )
    flag(
        "--input-shape",
        type=int,
        nargs=2,
        default=[512, 512],
        metavar=("H", "W"),
        help="network input size; multiples of 16 (vgg) or 32 (resnet50) (default: 512 512)",
    )
    flag(
        "--init-type",
        choices=INIT_TYPES,
        default="kaiming",
        help="weight init when not --pretrained; the reference's 'normal' (N(0, 0.02)) leaves a "
        "VGG UNet trained from scratch predicting one class (default: %(default)s)",
    )

    flag = parser.add_argument_group("epochs, phases and batches").add_argument
    flag("--init-epoch", type=int, default=0, help="first epoch (default: %(default)s)")
    flag(
        "--freeze-epoch",
        type=int,
        default=50,
        help="epochs with a frozen backbone (default: %(default)s)",
    )
    flag(
        "--freeze-batch-size",
        type=int,
        default=2,
        help="batch size while frozen (default: %(default)s)",
    )
    flag(
        "--unfreeze-epoch",
        type=int,
        default=100,
        help="total number of epochs (default: %(default)s)",
    )
    flag(
        "--unfreeze-batch-size",
        type=int,
        default=2,
        help="batch size once unfrozen (default: %(default)s)",
    )
    flag(
        "--val-batch-size",
        type=int,
        default=None,
        help="batch size of the val loss (default: the phase's batch size, capped at the val "
        "split's size)",
    )
    flag(
        "--freeze-train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze the backbone for the first --freeze-epoch epochs (default: on)",
    )

    flag = parser.add_argument_group("optimizer and schedule").add_argument
    flag(
        "--init-lr",
        type=float,
        default=1e-4,
        help="largest LR before adapting to the batch size (default: %(default)s)",
    )
    flag("--min-lr", type=float, default=None, help="smallest LR (default: --init-lr * 0.01)")
    flag(
        "--lr-fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale the LRs by batch/16 and clamp them to the reference's limits (adam: 1e-4 "
        "exactly; sgd: 5e-4 to 0.1); --no-lr-fit uses --init-lr and --min-lr as given "
        "(default: on)",
    )
    flag(
        "--optimizer-type",
        choices=("adam", "sgd"),
        default="adam",
        help="adam, or sgd with Nesterov momentum (default: %(default)s)",
    )
    flag(
        "--momentum",
        type=float,
        default=0.9,
        help="SGD momentum / Adam beta1 (default: %(default)s)",
    )
    flag("--weight-decay", type=float, default=0.0, help="weight decay (default: %(default)s)")
    flag(
        "--lr-decay-type",
        choices=("cos", "step"),
        default="cos",
        help="per-epoch LR schedule (default: %(default)s)",
    )

    flag = parser.add_argument_group("saving and evaluation").add_argument
    flag(
        "--save-period",
        type=int,
        default=5,
        help="save ep*.pth weights every this many epochs (default: %(default)s)",
    )
    flag("--save-dir", default="logs", help="where weights and logs go (default: %(default)s)")
    flag(
        "--eval-flag",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute the val mIoU as get_miou.py does during training (default: on)",
    )
    flag(
        "--eval-period",
        type=int,
        default=5,
        help="epochs between mIoU evaluations (default: %(default)s)",
    )
    flag(
        "--save-best-by",
        choices=("val_loss", "miou"),
        default="val_loss",
        help="what best_epoch_weights.pth is best at: the lowest val loss, as the original, or "
        "the highest in-training mIoU (default: %(default)s)",
    )
    flag(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="evaluate the mIoU in windows of this size at native resolution, averaging "
        "overlaps; saved beside the weights, so get_miou.py and predict.py use it too "
        "(default: whole images)",
    )
    flag(
        "--stride",
        type=int,
        default=None,
        metavar="PIXELS",
        help="distance between evaluation windows (default: tile / 2)",
    )

    flag = parser.add_argument_group("loss").add_argument
    flag("--dice-loss", action="store_true", help="add the Dice loss")
    flag("--focal-loss", action="store_true", help="use Focal loss instead of cross entropy")
    flag(
        "--cls-weights",
        type=float,
        nargs="+",
        default=None,
        metavar="W",
        help="one weight per class for CE/Focal (default: all 1)",
    )

    flag = parser.add_argument_group("running").add_argument
    flag(
        "--num-workers",
        type=int,
        default=4,
        help="data-loading processes; 0 loads in the main process (default: %(default)s)",
    )
    flag("--seed", type=int, default=11, help="random seed (default: %(default)s)")
    add_runtime_flags(flag)
    flag(
        "--fp16",
        dest="precision",
        action="store_const",
        const="fp16",
        help="the reference's switch: same as --precision fp16 (default: off)",
    )
    flag(
        "--channels-last",
        action="store_true",
        help="channels-last memory format for the model and batches (faster with bf16)",
    )
    flag(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only, cuDNN without autotuning: a resumed run then "
        "reproduces an uninterrupted one bit for bit on CUDA too, at some speed (see README); "
        "off: cuDNN autotunes for the fixed input shape",
    )
    flag("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes")
    flag(
        "--distributed",
        action="store_true",
        help="the reference's switch; multi-GPU training runs under torchrun, which this "
        "flag only checks for",
    )
    flag(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue from <save-dir>/checkpoint_last.pth with its settings; flags given "
        "with it override them, e.g. a larger --unfreeze-epoch (default: a new run)",
    )
    flag(
        "--benchmark",
        type=int,
        default=0,
        metavar="N",
        help="time N training steps (after 2 warm-up steps), print s/step and img/s, exit",
    )
    return parser  # fmt: skip


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """Only the options present on the command line (their defaults left out)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return vars(probe.parse_args(argv))


def get_args(
    argv: list[str] | None = None, defaults: dict | None = None, description: str | None = None
) -> tuple[argparse.Namespace, dict | None]:
    """Parse and check the flags; with --resume, the checkpoint's settings under the given ones.

    ``defaults`` replaces some flags' defaults and ``description`` the --help text (for
    ``train_medical.py``); such defaults still lose to the command line, and on resume to the
    checkpoint.
    """
    parser = get_parser()
    parser.set_defaults(**(defaults or {}))
    parser.description = description or parser.description
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume:
        checkpoint = read_training_checkpoint(args.resume)
        given = given_flags(parser, argv)
        for key in FIXED_ON_RESUME:
            if key in given and given[key] != checkpoint["args"][key]:
                raise UserError(
                    f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                    f"{checkpoint['args'][key]}; a resumed run keeps the model's shape "
                    "(start a new run with --model-path to change it)."
                )
        args = argparse.Namespace(**{**vars(args), **checkpoint["args"], **given})
    check_args(args, argv if argv is not None else sys.argv[1:])
    return args, checkpoint


def check_args(args: argparse.Namespace, argv: list[str] = ()) -> None:
    """Refuse flag combinations that cannot train, each with the fix (``argv``: the command
    line, quoted back in hints)."""
    if args.min_lr is None:
        args.min_lr = args.init_lr * 0.01
    if args.cls_weights is None:
        args.cls_weights = [1.0] * args.num_classes
    positive = {
        "num_classes": 2, "freeze_batch_size": 1, "unfreeze_batch_size": 1, "save_period": 1,
        "eval_period": 1, "unfreeze_epoch": 1,
    }  # fmt: skip
    for key, lowest in positive.items():
        if getattr(args, key) < lowest:
            raise UserError(f"--{key.replace('_', '-')} must be at least {lowest}.")
    if args.init_epoch < 0 or args.freeze_epoch < 0 or args.num_workers < 0:
        raise UserError("--init-epoch, --freeze-epoch and --num-workers cannot be negative.")
    if args.init_epoch >= args.unfreeze_epoch:
        raise UserError(
            f"--init-epoch {args.init_epoch} leaves nothing to train before --unfreeze-epoch "
            f"{args.unfreeze_epoch} (the total); raise --unfreeze-epoch."
        )
    if args.freeze_train and args.freeze_epoch > args.unfreeze_epoch:
        raise UserError(
            f"--freeze-epoch {args.freeze_epoch} is past --unfreeze-epoch {args.unfreeze_epoch}, "
            "the total number of epochs; lower --freeze-epoch or pass --no-freeze-train."
        )
    if not 0 < args.min_lr <= args.init_lr:
        raise UserError(
            f"--min-lr {args.min_lr} must be above 0 and at most --init-lr {args.init_lr}."
        )
    if args.name_classes is not None and len(args.name_classes) != args.num_classes:
        raise UserError(
            f"--name-classes has {len(args.name_classes)} names but --num-classes is "
            f"{args.num_classes}; give one name per class."
        )
    if args.val_batch_size is not None and args.val_batch_size < 1:
        raise UserError(f"--val-batch-size must be at least 1, not {args.val_batch_size}.")
    if len(args.cls_weights) != args.num_classes:
        raise UserError(
            f"--cls-weights has {len(args.cls_weights)} values but --num-classes is "
            f"{args.num_classes}; give one weight per class."
        )
    if args.distributed and not launched_by_torchrun():
        raise UserError(
            "multi-GPU training runs one process per GPU under torchrun; start it as "
            f"`torchrun --nproc_per_node <GPUs> train.py {shlex.join(argv)}`."
        )
    if args.benchmark and launched_by_torchrun():
        raise UserError("--benchmark times one process; run it without torchrun.")
    if args.sync_bn and not launched_by_torchrun():
        raise UserError("--sync-bn synchronises torchrun processes; run under torchrun or drop it.")
    check_input_shape(args.input_shape[0], args.input_shape[1], args.backbone)
    if args.train_crop:
        check_input_shape(args.train_crop[0], args.train_crop[1], args.backbone)
    check_tile(args.tile, args.stride, args.backbone)
    if args.save_best_by == "miou" and not args.eval_flag:
        raise UserError(
            "--save-best-by miou needs the in-training mIoU, which --no-eval-flag turns off; "
            "drop one of the two."
        )
    if args.save_best_by == "miou" and args.eval_period > args.unfreeze_epoch:
        raise UserError(
            f"--save-best-by miou never gets an mIoU: --eval-period {args.eval_period} is past "
            f"--unfreeze-epoch {args.unfreeze_epoch}; lower --eval-period."
        )
    get_lr_scheduler(args.lr_decay_type, args.init_lr, args.min_lr, args.unfreeze_epoch)


def build_model(args: argparse.Namespace, runtime: Runtime, dist_info: DistInfo) -> Unet:
    model = Unet(num_classes=args.num_classes, pretrained=args.pretrained, backbone=args.backbone)
    if not args.pretrained:
        weights_init(model, init_type=args.init_type)
    if args.model_path:
        report = load_matching_weights(model, args.model_path, args.allow_backbone_mismatch)
        if dist_info.is_main:
            print(f"Weights from {args.model_path}:")
            print("\n".join(report.lines()))
            if report.mismatched and all(k.startswith("final.") for k in report.mismatched):
                print("  (the head follows --num-classes, so it starts fresh: that is expected)")
    if args.sync_bn and dist_info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return runtime.prepare(model)


def build_optimizer(
    args: argparse.Namespace, model: nn.Module, lr: float, runtime: Runtime
) -> torch.optim.Optimizer:
    """Adam with betas (momentum, 0.999), or SGD with Nesterov momentum, as the reference.

    On CUDA the fused implementations: one kernel per step, and with fp16 the GradScaler's
    inf check stays on the GPU instead of waiting for it every step.
    """
    fused = runtime.device.type == "cuda" or None
    if args.optimizer_type == "adam":
        return torch.optim.Adam(
            model.parameters(), lr, betas=(args.momentum, 0.999), weight_decay=args.weight_decay,
            fused=fused,
        )  # fmt: skip
    return torch.optim.SGD(
        model.parameters(), lr, momentum=args.momentum, nesterov=True,
        weight_decay=args.weight_decay, fused=fused,
    )  # fmt: skip


def build_data(args: argparse.Namespace, say=print) -> tuple[UnetDataset, UnetDataset | None]:
    """The train dataset and the val dataset; without a val split (the default one missing or
    empty, as voc_annotation.py --train-percent 1 writes it), training goes on without."""
    common = dict(
        input_shape=args.input_shape,
        num_classes=args.num_classes,
        dataset_path=args.dataset_path,
        dataset_format=args.dataset_format,
        seed=args.seed,
    )
    train = UnetDataset(
        read_split(args.dataset_path, args.train_split, args.dataset_format),
        train=True,
        augment=args.augment,
        crop=bool(args.train_crop),
        **{**common, "input_shape": args.train_crop or args.input_shape},
    )
    val_path = split_path(args.dataset_path, args.val_split, args.dataset_format)
    if args.val_split == "val" and (not val_path.is_file() or not val_path.read_text().split()):
        state = "is empty" if val_path.is_file() else "does not exist"
        say(f"No val split ('{val_path}' {state}): training without validation, so no val loss "
            "or mIoU, and best_epoch_weights.pth follows the train loss.")  # fmt: skip
        return train, None
    val = UnetDataset(
        read_split(args.dataset_path, args.val_split, args.dataset_format), train=False, **common
    )
    return train, val


def check_batch_sizes(train_set, batch_sizes: set[int], dist_info: DistInfo) -> None:
    """Before the first epoch: every phase's batch must fit the train split and the processes
    (the val batch adapts to its split, see :func:`val_batch_size`)."""
    for batch_size in sorted(batch_sizes):
        check_split_size(len(train_set), batch_size, "train")
        if batch_size % dist_info.world_size:
            raise UserError(
                f"batch size {batch_size} cannot be split evenly over {dist_info.world_size} "
                "processes; use a multiple of the process count."
            )


@dataclass(frozen=True)
class Phase:
    """The reference's two phases: a frozen backbone at one batch size, then unfrozen."""

    frozen: bool
    batch_size: int

    @classmethod
    def of(cls, args: argparse.Namespace, epoch: int) -> Phase:
        frozen = args.freeze_train and epoch < args.freeze_epoch
        return cls(frozen, args.freeze_batch_size if frozen else args.unfreeze_batch_size)

    @property
    def name(self) -> str:
        return "Freeze" if self.frozen else "Unfreeze"


def phase_lrs(args: argparse.Namespace, phase: Phase) -> tuple[float, float]:
    return fit_lr(args.init_lr, args.min_lr, phase.batch_size, args.optimizer_type, args.lr_fit)


def val_batch_size(args, phase: Phase, val_set, dist_info: DistInfo) -> int | None:
    """--val-batch-size, else the phase's batch, capped at the val split and a multiple of the
    process count: a small val split is never refused for the batch size."""
    if val_set is None:
        return None
    size = min(args.val_batch_size or phase.batch_size, len(val_set))
    size -= size % dist_info.world_size
    if size == 0:
        raise UserError(
            f"the val split has {len(val_set)} image(s), fewer than the {dist_info.world_size} "
            "processes; add val images or run fewer processes."
        )
    return size


def start_phase(args, phase: Phase, *, model, train_set, val_set, dist_info, runtime, say,
                warned: set[str]):  # fmt: skip
    """Freeze or unfreeze the backbone; the phase's loaders and LR schedule."""
    (model.freeze_backbone if phase.frozen else model.unfreeze_backbone)()
    loaders = Loaders(
        train_set, val_set, batch_size=phase.batch_size,
        val_batch_size=val_batch_size(args, phase, val_set, dist_info),
        num_workers=args.num_workers, seed=args.seed, dist_info=dist_info,
        pin_memory=runtime.device.type == "cuda",
    )  # fmt: skip
    init_lr, min_lr = phase_lrs(args, phase)
    text, warning = describe_lr(args.init_lr, args.min_lr, phase.batch_size,
                                args.optimizer_type, args.lr_fit, phase.name)  # fmt: skip
    say(text)
    if warning and "lr clamp" not in warned:
        say(warning)
        warned.add("lr clamp")
    return loaders, get_lr_scheduler(args.lr_decay_type, init_lr, min_lr, args.unfreeze_epoch)


def benchmark(args: argparse.Namespace, runtime: Runtime) -> None:
    """Time ``args.benchmark`` steps of the training engine at the first epoch's phase, data
    loading included, after 2 warm-up steps; print s/step and img/s."""
    train_set, val_set = build_data(args)
    model = build_model(args, runtime, DistInfo())
    phase = Phase.of(args, args.init_epoch)
    optimizer = build_optimizer(args, model, phase_lrs(args, phase)[0], runtime)
    loaders, scheduler = start_phase(args, phase, model=model, train_set=train_set,
                                     val_set=val_set, dist_info=DistInfo(), runtime=runtime,
                                     say=print, warned=set())  # fmt: skip
    if loaders.train_steps < args.benchmark + 2:
        raise UserError(
            f"--benchmark {args.benchmark} needs {args.benchmark + 2} batches of train data; "
            f"there are {loaders.train_steps}."
        )
    set_optimizer_lr(optimizer, scheduler, args.init_epoch)
    loaders.set_epoch(args.init_epoch)
    step = dict(optimizer=optimizer, scaler=runtime.grad_scaler(), runtime=runtime,
                criterion=SegmentationLoss(args.num_classes, args.cls_weights, args.dice_loss,
                                           args.focal_loss).to(runtime.device))  # fmt: skip
    batches = iter(loaders.train)
    for steps in (2, args.benchmark):  # warm-up, then the timed steps
        start = time.perf_counter()
        train_one_epoch(model, batches, steps=steps, **step)  # reads the loss back: synced
        seconds = (time.perf_counter() - start) / steps
    print(
        f"benchmark: {args.backbone} {args.input_shape[0]}x{args.input_shape[1]}, batch "
        f"{phase.batch_size}, {args.precision}{' + channels_last' if args.channels_last else ''} "
        f"on {runtime.device.type}: {seconds:.3f} s/step, {phase.batch_size / seconds:.2f} img/s "
        f"({args.benchmark} steps)"
    )


def train(
    args: argparse.Namespace, checkpoint: dict | None, runtime: Runtime, dist_info: DistInfo
) -> None:
    say = print if dist_info.is_main else (lambda *a, **k: None)
    # data
    train_set, val_set = build_data(args, say)
    # model and loss
    model = build_model(args, runtime, dist_info)
    model_train = model
    if dist_info.enabled:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model_train = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=True
        )
    criterion = SegmentationLoss(
        args.num_classes, args.cls_weights, args.dice_loss, args.focal_loss
    ).to(runtime.device)
    # optimizer
    optimizer = build_optimizer(
        args, model, phase_lrs(args, Phase.of(args, args.init_epoch))[0], runtime
    )
    scaler = runtime.grad_scaler()
    # resume
    start_epoch, history = args.init_epoch, None
    log_dir = Path(args.save_dir) / f"loss_{datetime.datetime.now():%Y_%m_%d_%H_%M_%S}"
    if checkpoint is not None:
        resumed = load_training_checkpoint(
            checkpoint, model=model, optimizer=optimizer, scaler=scaler
        )
        start_epoch, history, log_dir = resumed.epoch, resumed.history, resumed.log_dir
        say(f"Resuming from {args.resume} at epoch {start_epoch + 1}/{args.unfreeze_epoch}")
    if args.save_best_by == "miou" and val_set is None:
        raise UserError(
            "--save-best-by miou needs the mIoU of a val split, and there is none; give "
            "--val-split or use --save-best-by val_loss."
        )
    if start_epoch >= args.unfreeze_epoch:
        raise UserError(
            f"the checkpoint already finished {start_epoch} epochs; raise --unfreeze-epoch to "
            "train longer."
        )
    # loop
    height, width = args.input_shape
    say(
        f"Training {args.backbone} UNet, {args.num_classes} classes, {len(train_set)} train / "
        f"{len(val_set) if val_set else 0} val images, {height}x{width}, "
        f"{runtime.device.type} {args.precision}, {dist_info.world_size} process(es)"
    )
    epochs = range(start_epoch, args.unfreeze_epoch)
    batch_sizes = {Phase.of(args, epoch).batch_size for epoch in epochs}
    check_batch_sizes(train_set, batch_sizes, dist_info)
    for phase in {Phase.of(args, epoch) for epoch in epochs}:
        val_batch_size(args, phase, val_set, dist_info)  # refused now, not at the phase
    warned = {"lr clamp"} if checkpoint is not None else set()  # said when the run began
    if Phase.of(args, start_epoch).frozen and not args.pretrained and not args.model_path:
        say("warning: the backbone is frozen for the first --freeze-epoch epochs but holds no "
            "trained weights (--model-path '' and no --pretrained), so those epochs train only "
            "the decoder on a random encoder; pass --no-freeze-train, --pretrained or a "
            "--model-path.")  # fmt: skip
    log = TrainingLog(log_dir, history) if dist_info.is_main else None
    phase = loaders = scheduler = None
    epoch = start_epoch
    try:
        for epoch in epochs:
            if phase != Phase.of(args, epoch):
                phase = Phase.of(args, epoch)
                loaders, scheduler = start_phase(
                    args, phase, model=model, train_set=train_set, val_set=val_set,
                    dist_info=dist_info, runtime=runtime, say=say, warned=warned,
                )  # fmt: skip
            set_optimizer_lr(optimizer, scheduler, epoch)
            loaders.set_epoch(epoch)
            loss, _ = train_one_epoch(
                model_train, loaders.train, optimizer=optimizer, scaler=scaler,
                criterion=criterion, runtime=runtime, steps=loaders.train_steps, epoch=epoch,
                total_epochs=args.unfreeze_epoch, dist_info=dist_info,
            )  # fmt: skip
            val_loss = None
            if loaders.val is not None:
                val_loss, _ = evaluate_loss(
                    model, loaders.val, criterion=criterion, runtime=runtime,
                    steps=loaders.val_steps, dist_info=dist_info,
                )  # fmt: skip
            miou = None
            if args.eval_flag and val_set is not None and (epoch + 1) % args.eval_period == 0:
                matrix = evaluate_miou(model, val_set, runtime, dist_info, tile=args.tile,
                                       stride=args.stride)  # fmt: skip
                miou = matrix.miou * 100
            if dist_info.is_main:
                end_of_epoch(
                    args, epoch=epoch, model=model, optimizer=optimizer, scaler=scaler, log=log,
                    loss=loss, val_loss=val_loss, miou=miou,
                )  # fmt: skip
            barrier()
    except KeyboardInterrupt:
        checkpoint_path = Path(args.save_dir) / "checkpoint_last.pth"
        raise TrainingInterruptedError(epoch + 1, checkpoint_path) from None
    finally:
        if log is not None:
            log.close()


class TrainingInterruptedError(Exception):
    """Ctrl-C during training, at 1-based ``epoch``, with the checkpoint to resume from."""

    def __init__(self, epoch: int, checkpoint: Path):
        super().__init__(epoch, checkpoint)
        self.epoch, self.checkpoint = epoch, checkpoint

    def message(self) -> str:
        if self.checkpoint.is_file():
            return (f"interrupted at epoch {self.epoch}; resume with: python train.py --resume "
                    f"{shlex.quote(str(self.checkpoint))}")  # fmt: skip
        return (f"interrupted at epoch {self.epoch}, before the first checkpoint; start again "
                "with the same command")  # fmt: skip


def end_of_epoch(
    args: argparse.Namespace,
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    log: TrainingLog,
    loss: float,
    val_loss: float | None = None,
    miou: float | None = None,
) -> None:
    """Log, save the reference's weights files, then the resumable checkpoint (rank 0)."""
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if args.save_best_by == "miou":  # the highest mIoU so far; epochs without one do not count
        best = miou is not None and all(miou >= m for m in log.history["miou"])
    else:  # the original's rule: the lowest val loss (train loss without a val split) so far
        previous = log.history["val_loss" if val_loss is not None else "loss"]
        current = val_loss if val_loss is not None else loss
        best = not previous or current <= min(previous)
    log.append_loss(epoch + 1, loss, val_loss)
    if miou is not None:
        log.append_miou(epoch + 1, miou, best=best if args.save_best_by == "miou" else None)
        print(f"Epoch {epoch + 1} mIoU: {miou:.2f}")
    done = epoch + 1 == args.unfreeze_epoch
    text = f"Total Loss: {loss:.3f}" + (
        f" || Val Loss: {val_loss:.3f}" if val_loss is not None else ""
    )
    print(f"Epoch:{epoch + 1}/{args.unfreeze_epoch}\n{text}")
    weights = model.state_dict()
    # the settings predict.py, get_miou.py and unet.Unet need, beside each weights file
    settings = {key: getattr(args, key) for key in SETTINGS_KEYS}
    if (epoch + 1) % args.save_period == 0 or done:
        name = f"ep{epoch + 1:03d}-loss{loss:.3f}"
        name += f"-val_loss{val_loss:.3f}.pth" if val_loss is not None else ".pth"
        save_weights(weights, save_dir / name, settings)
    if best:
        print(f"Save best model to best_epoch_weights.pth (by {args.save_best_by})")
        save_weights(weights, save_dir / "best_epoch_weights.pth", settings)
    save_weights(weights, save_dir / "last_epoch_weights.pth", settings)
    save_training_checkpoint(
        save_dir / "checkpoint_last.pth", model=model, optimizer=optimizer, scaler=scaler,
        epoch=epoch + 1, history=log.history, log_dir=log.log_dir,
        args={k: v for k, v in vars(args).items() if k not in ("resume", "benchmark")},
    )  # fmt: skip


@exit_on_user_error
def main(
    argv: list[str] | None = None, defaults: dict | None = None, description: str | None = None
) -> None:
    args, checkpoint = get_args(argv, defaults, description)
    with determinism(args.deterministic):  # before anything starts CUDA
        local_rank = int(os.environ["LOCAL_RANK"]) if launched_by_torchrun() else None
        runtime = resolve_runtime(args.device, args.precision, local_rank, args.channels_last)
        if runtime.device.type == "cuda":
            torch.cuda.set_device(runtime.device)  # --device cuda:N, or this rank's GPU
        dist_info = init_distributed(runtime.device.type)
        seed_everything(args.seed)
        try:
            if args.benchmark:
                benchmark(args, runtime)
            elif args.save_augmented:
                train_set, _ = build_data(args)
                path = Path(args.save_dir) / "augmented.png"
                save_augmented_samples(train_set, args.save_augmented, path, args.init_epoch)
                print(f"Saved {args.save_augmented} augmented training samples to {path}")
            else:
                train(args, checkpoint, runtime, dist_info)
        except TrainingInterruptedError as stop:
            if dist_info.is_main:
                print(f"\n{stop.message()}", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            cleanup_distributed()


if __name__ == "__main__":
    main()
