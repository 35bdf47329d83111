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
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from nets.unet import BACKBONES, Unet, check_input_shape
from nets.unet_training import INIT_TYPES, get_lr_scheduler, set_optimizer_lr, weights_init
from utils.callbacks import TrainingLog
from utils.checkpoint import atomic_save, load_matching_weights
from utils.dataloader import (
    AUGMENTATIONS,
    DATASET_FORMATS,
    UnetDataset,
    check_split_size,
    read_split,
    split_path,
    unet_dataset_collate,
)
from utils.device import Runtime, add_runtime_flags, resolve_runtime
from utils.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
)
from utils.errors import UserError, exit_on_user_error
from utils.utils_fit import LossConfig, evaluate_loss, evaluate_miou, train_one_epoch

#: The reference's nominal batch size for the batch-size-adaptive learning rate.
NBS = 16
#: (lowest, highest) initial LR after adapting to the batch size, per optimizer.
LR_LIMITS = {"adam": (1e-4, 1e-4), "sgd": (5e-4, 1e-1)}
#: Settings that shape the model; a resumed run cannot change them.
FIXED_ON_RESUME = ("num_classes", "backbone", "input_shape", "dataset_format")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
    )
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
        "jitter; flip = random left-right and up-down flips only; none (default: %(default)s)",
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
        help="the reference's switch: same as --precision fp16",
    )
    flag(
        "--channels-last",
        action="store_true",
        help="channels-last memory format for the model and batches (faster with bf16)",
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
        "with it override them (e.g. a larger --unfreeze-epoch)",
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


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--resume {path} does not exist; point it at <save-dir>/checkpoint_last.pth."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"--resume {path} cannot be read ({error}).") from error
    if not isinstance(state, dict) or "optimizer" not in state or "args" not in state:
        raise UserError(
            f"--resume {path} is a weights file, not a training checkpoint; resume from "
            "checkpoint_last.pth, or start a new run with --model-path."
        )
    return state


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
        checkpoint = read_checkpoint(args.resume)
        given = given_flags(parser, argv)
        for key in FIXED_ON_RESUME:
            if key in given and given[key] != checkpoint["args"][key]:
                raise UserError(
                    f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                    f"{checkpoint['args'][key]}; a resumed run keeps the model's shape "
                    "(start a new run with --model-path to change it)."
                )
        args = argparse.Namespace(**{**vars(args), **checkpoint["args"], **given})
    check_args(args)
    return args, checkpoint


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot train, each with the fix."""
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
    if len(args.cls_weights) != args.num_classes:
        raise UserError(
            f"--cls-weights has {len(args.cls_weights)} values but --num-classes is "
            f"{args.num_classes}; give one weight per class."
        )
    if args.distributed and not launched_by_torchrun():
        raise UserError(
            "multi-GPU training runs one process per GPU under torchrun; start it as "
            f"`torchrun --nproc_per_node <GPUs> train.py {' '.join(sys.argv[1:])}`."
        )
    if args.benchmark and launched_by_torchrun():
        raise UserError("--benchmark times one process; run it without torchrun.")
    if args.sync_bn and not launched_by_torchrun():
        raise UserError("--sync-bn synchronises torchrun processes; run under torchrun or drop it.")
    check_input_shape(args.input_shape[0], args.input_shape[1], args.backbone)
    get_lr_scheduler(args.lr_decay_type, args.init_lr, args.min_lr, args.unfreeze_epoch)


def fit_lr(args: argparse.Namespace, batch_size: int) -> tuple[float, float]:
    """The reference's batch-size-adaptive LR: scale by batch/16, then clamp to the limits."""
    if not args.lr_fit:
        return args.init_lr, args.min_lr
    low, high = LR_LIMITS[args.optimizer_type]
    init_lr = min(max(batch_size / NBS * args.init_lr, low), high)
    min_lr = min(max(batch_size / NBS * args.min_lr, low * 1e-2), high * 1e-2)
    return init_lr, min_lr


def describe_lr(args: argparse.Namespace, batch_size: int, phase: str) -> str:
    init_lr, min_lr = fit_lr(args, batch_size)
    text = f"{phase} phase: batch {batch_size}, LR {init_lr:.3g} -> {min_lr:.3g}"
    asked = batch_size / NBS * args.init_lr
    if args.lr_fit and not np.isclose(asked, init_lr):
        low, high = LR_LIMITS[args.optimizer_type]
        text += (
            f"\nwarning: --init-lr {args.init_lr:g} x batch {batch_size}/{NBS} = {asked:.3g} was "
            f"clamped to {init_lr:.3g}: {args.optimizer_type} keeps the LR in [{low:g}, {high:g}] "
            "as the reference does"
        )
    return text


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


def build_optimizer(args: argparse.Namespace, model: nn.Module, lr: float):
    if args.optimizer_type == "adam":
        return torch.optim.Adam(
            model.parameters(), lr, betas=(args.momentum, 0.999), weight_decay=args.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(), lr, momentum=args.momentum, nesterov=True,
        weight_decay=args.weight_decay,
    )  # fmt: skip


def build_data(args: argparse.Namespace) -> tuple[UnetDataset, UnetDataset | None]:
    """The train dataset and the val dataset (optional in the medical layout)."""
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
        **common,
    )
    val_path = split_path(args.dataset_path, args.val_split, args.dataset_format)
    if args.dataset_format == "medical" and args.val_split == "val" and not val_path.is_file():
        return train, None
    val = UnetDataset(
        read_split(args.dataset_path, args.val_split, args.dataset_format), train=False, **common
    )
    return train, val


def check_batch_sizes(train_set, val_set, batch_sizes: set[int], dist_info: DistInfo) -> None:
    """Before the first epoch: every phase's batch must fit the splits and the processes."""
    for batch_size in sorted(batch_sizes):
        check_split_size(len(train_set), batch_size, "train")
        if val_set is not None:
            check_split_size(len(val_set), batch_size, "val")
        if batch_size % dist_info.world_size:
            raise UserError(
                f"batch size {batch_size} cannot be split evenly over {dist_info.world_size} "
                "processes; use a multiple of the process count."
            )


class Loaders:
    """The DataLoaders of one phase (batch size), rebuilt when the phase changes."""

    def __init__(self, args, train_set, val_set, batch_size: int, dist_info: DistInfo, runtime):
        self.train_steps = len(train_set) // batch_size
        self.val_steps = len(val_set) // batch_size if val_set is not None else 0
        per_rank = batch_size // dist_info.world_size
        self.generator = torch.Generator()
        self.train_sampler = None
        options = dict(
            batch_size=per_rank,
            num_workers=args.num_workers,
            pin_memory=runtime.device.type == "cuda",
            drop_last=True,
            collate_fn=unet_dataset_collate,
        )
        if dist_info.enabled:
            self.train_sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
            self.train = DataLoader(train_set, sampler=self.train_sampler, **options)
        else:
            self.train = DataLoader(train_set, shuffle=True, generator=self.generator, **options)
        self.val = None
        if val_set is not None:
            sampler = DistributedSampler(val_set, shuffle=False) if dist_info.enabled else None
            self.val = DataLoader(val_set, shuffle=False, sampler=sampler, **options)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Shuffle order and augmentation depend on (seed, epoch) only: resumable, repeatable."""
        self.train.dataset.set_epoch(epoch)
        self.generator.manual_seed(seed + epoch)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    numpy_state = np.random.get_state()
    state["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def benchmark(args, model, optimizer, scaler, loaders, criterion, runtime) -> None:
    """Time ``args.benchmark`` steps of the training engine, data loading included."""
    loaders.set_epoch(0, args.seed)
    if loaders.train_steps < args.benchmark + 2:
        raise UserError(
            f"--benchmark {args.benchmark} needs {args.benchmark + 2} batches of train data; "
            f"there are {loaders.train_steps}."
        )
    batches = iter(loaders.train)
    for steps in (2, args.benchmark):  # warm-up, then the timed steps
        start = time.perf_counter()
        train_one_epoch(model, optimizer, scaler, batches, steps, criterion, runtime, 0, 1)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    batch = loaders.train.batch_size
    print(
        f"benchmark: {args.backbone} {args.input_shape[0]}x{args.input_shape[1]}, batch {batch}, "
        f"{args.precision}{' + channels_last' if args.channels_last else ''} on "
        f"{runtime.device.type}: {seconds:.3f} s/step, {batch / seconds:.2f} img/s "
        f"({args.benchmark} steps)"
    )


def train(args: argparse.Namespace, checkpoint: dict | None) -> None:
    local_rank = int(os.environ["LOCAL_RANK"]) if launched_by_torchrun() else None
    runtime = resolve_runtime(args.device, args.precision, local_rank, args.channels_last)
    dist_info = init_distributed(runtime.device.type)
    seed_everything(args.seed)
    say = print if dist_info.is_main else (lambda *a, **k: None)

    train_set, val_set = build_data(args)
    model = build_model(args, runtime, dist_info)
    model_train = model
    if dist_info.enabled:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model_train = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=True
        )
    criterion = LossConfig(
        args.num_classes,
        torch.tensor(args.cls_weights, dtype=torch.float32, device=runtime.device),
        args.dice_loss,
        args.focal_loss,
    )

    def frozen(epoch: int) -> bool:
        return args.freeze_train and epoch < args.freeze_epoch

    def batch_of(epoch: int) -> int:
        return args.freeze_batch_size if frozen(epoch) else args.unfreeze_batch_size

    start_epoch = args.init_epoch
    optimizer = build_optimizer(args, model, fit_lr(args, batch_of(start_epoch))[0])
    scaler = runtime.grad_scaler()
    save_dir = Path(args.save_dir)
    log_dir = save_dir / f"loss_{datetime.datetime.now().strftime('%Y_%m_%d_%H_%M_%S')}"
    history = None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"]
        history = checkpoint["history"]
        log_dir = Path(checkpoint["log_dir"])
        restore_rng(checkpoint["rng"])
        say(f"Resuming from {args.resume} at epoch {start_epoch + 1}/{args.unfreeze_epoch}")
    if start_epoch >= args.unfreeze_epoch:
        raise UserError(
            f"the checkpoint already finished {start_epoch} epochs; raise --unfreeze-epoch to "
            "train longer."
        )

    height, width = args.input_shape
    say(
        f"Training {args.backbone} UNet, {args.num_classes} classes, {len(train_set)} train / "
        f"{len(val_set) if val_set else 0} val images, {height}x{width}, "
        f"{runtime.device.type} {args.precision}, {dist_info.world_size} process(es)"
    )
    epochs = range(start_epoch, args.unfreeze_epoch)
    check_batch_sizes(train_set, val_set, {batch_of(e) for e in epochs}, dist_info)
    log = TrainingLog(log_dir, history) if dist_info.is_main else None
    phase = loaders = scheduler = None
    try:
        for epoch in epochs:
            if phase != frozen(epoch):
                phase = frozen(epoch)
                (model.freeze_backbone if phase else model.unfreeze_backbone)()
                loaders = Loaders(args, train_set, val_set, batch_of(epoch), dist_info, runtime)
                init_lr, min_lr = fit_lr(args, batch_of(epoch))
                scheduler = get_lr_scheduler(
                    args.lr_decay_type, init_lr, min_lr, args.unfreeze_epoch
                )
                say(describe_lr(args, batch_of(epoch), "Freeze" if phase else "Unfreeze"))
                if args.benchmark:
                    set_optimizer_lr(optimizer, scheduler, epoch)
                    benchmark(args, model, optimizer, scaler, loaders, criterion, runtime)
                    return
            set_optimizer_lr(optimizer, scheduler, epoch)
            loaders.set_epoch(epoch, args.seed)
            loss, _ = train_one_epoch(
                model_train, optimizer, scaler, loaders.train, loaders.train_steps, criterion,
                runtime, epoch, args.unfreeze_epoch, dist_info,
            )  # fmt: skip
            val_loss = None
            if loaders.val is not None:
                val_loss, _ = evaluate_loss(
                    model, loaders.val, loaders.val_steps, criterion, runtime, dist_info
                )
            miou = None
            if args.eval_flag and val_set is not None and (epoch + 1) % args.eval_period == 0:
                miou = evaluate_miou(model, val_set, runtime, dist_info).miou * 100
            if dist_info.is_main:
                end_of_epoch(
                    args, epoch, model, optimizer, scaler, log, loss, val_loss, miou, phase
                )
            barrier()
    finally:
        if log is not None:
            log.close()


def end_of_epoch(args, epoch, model, optimizer, scaler, log, loss, val_loss, miou, phase) -> None:
    """Log, save the reference's weights files, then the resumable checkpoint (rank 0)."""
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    previous = log.history["val_loss" if val_loss is not None else "loss"][:]
    log.append_loss(epoch + 1, loss, val_loss)
    if miou is not None:
        log.append_miou(epoch + 1, miou)
        print(f"Epoch {epoch + 1} mIoU: {miou:.2f}")
    done = epoch + 1 == args.unfreeze_epoch
    text = f"Total Loss: {loss:.3f}" + (
        f" || Val Loss: {val_loss:.3f}" if val_loss is not None else ""
    )
    print(f"Epoch:{epoch + 1}/{args.unfreeze_epoch}\n{text}")
    weights = model.state_dict()
    if (epoch + 1) % args.save_period == 0 or done:
        name = f"ep{epoch + 1:03d}-loss{loss:.3f}"
        name += f"-val_loss{val_loss:.3f}.pth" if val_loss is not None else ".pth"
        atomic_save(weights, save_dir / name)
    current = val_loss if val_loss is not None else loss
    if not previous or current <= min(previous):
        print("Save best model to best_epoch_weights.pth")
        atomic_save(weights, save_dir / "best_epoch_weights.pth")
    atomic_save(weights, save_dir / "last_epoch_weights.pth")
    atomic_save(
        {
            "model": weights,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "frozen": phase,
            "best": min(previous + [current]),
            "history": log.history,
            "log_dir": str(log.log_dir),
            "rng": capture_rng(),
            "args": {k: v for k, v in vars(args).items() if k not in ("resume", "benchmark")},
        },
        save_dir / "checkpoint_last.pth",
    )


@exit_on_user_error
def main(
    argv: list[str] | None = None, defaults: dict | None = None, description: str | None = None
) -> None:
    args, checkpoint = get_args(argv, defaults, description)
    try:
        train(args, checkpoint)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
