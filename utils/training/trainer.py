"""The training loop behind train.py: data, model, optimizer, the original's two phases, and an
epoch's training, validation, mIoU, logs and saved files.

Every function here takes the typed sections of :class:`~utils.settings.config.TrainConfig` or plain
keywords; the command line stops in train.py's ``main``.
"""

from __future__ import annotations

import contextlib
import datetime
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.distributed as dist
from torch import nn

from nets.losses import needs_pixel_weights
from utils.data.classes import class_colors, default_class_names, mapping_lines
from utils.data.datasets import Loaders
from utils.device import Runtime, bf16_note
from utils.distributed import SINGLE_PROCESS, DistInfo, all_reduce_sum, barrier
from utils.drawing import comparison_strip, grid
from utils.errors import UserError
from utils.settings.config import TrainConfig
from utils.settings.recipes import write_config
from utils.training.budget import EpochBudget
from utils.training.build import build_criterion, build_data, build_model
from utils.training.checkpoint import (
    CheckpointSaver,
    load_training_checkpoint,
)
from utils.training.epochs import evaluate_loss, evaluate_miou, train_one_epoch
from utils.training.log import TrainingLog
from utils.training.lr_schedule import describe_lr, get_lr_scheduler, set_optimizer_lr
from utils.training.optimizers import build_optimizer
from utils.training.phases import Phase, check_batches, phase_lrs, val_batch_size
from utils.training.stopping import StopSignal, TrainingInterruptedError
from utils.training.timing import TimedBatches, TimeSplit
from utils.training.writer import BackgroundWriter, WriteError, check_writable, remove_leftovers
from utils.utils_metrics import never_found, per_class_iu

Say = Callable[..., None]


def _silent(*_args, **_kwargs) -> None:
    pass


class Trainer:
    """One training run: built from a :class:`TrainConfig`, optionally resumed, then
    :meth:`fit` runs its epochs.

    Rank 0 logs and saves; every rank trains its share of each batch.
    """

    def __init__(self, config: TrainConfig, runtime: Runtime, dist_info: DistInfo = SINGLE_PROCESS):
        self.config, self.runtime, self.dist_info = config, runtime, dist_info
        self.say = print if dist_info.is_main else _silent
        border_weights = needs_pixel_weights(config.loss.terms)  # a map per label: border_ce
        self.train_set, self.val_set = build_data(
            config.data, config.runtime.seed, self.say, border_weights
        )
        model = build_model(config.data, runtime, self.say)
        if config.runtime.sync_bn and dist_info.enabled:
            if runtime.device.type != "cuda":
                raise UserError(
                    "sync_bn (--sync-bn) synchronises BatchNorm across GPUs and needs CUDA; "
                    "drop it on the CPU."
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.model_train: nn.Module = model  # wrapped in DDP per phase (see start_phase)
        self.criterion = build_criterion(config, runtime.device)
        first = Phase.at(config.schedule, config.schedule.init_epoch)
        self.optimizer = build_optimizer(
            model, config.optimizer, phase_lrs(config.optimizer, first)[0]
        )
        self.scaler = runtime.grad_scaler()
        self.start_epoch, self.history = config.schedule.init_epoch, None
        self.log_dir = (
            Path(config.output.save_dir) / f"loss_{datetime.datetime.now():%Y_%m_%d_%H_%M_%S}"
        )
        self.saver = CheckpointSaver(config)
        # rank 0's files, written behind the steps: an epoch's job may wait behind another
        self.writer = BackgroundWriter(depth=len(self.saver.snapshots))
        self.clock = TimeSplit()
        evaluation = config.evaluation
        self.budget = EpochBudget(
            config.schedule.time_budget,
            evaluation.eval_period,
            evaluation.eval_flag and self.val_set is not None,
        )
        #: the run's epochs: --unfreeze-epoch, or as many as --time-budget last fitted
        self.total_epochs = config.schedule.unfreeze_epoch
        self._epoch_ends = 0.0  # the clock's "epoch ends" when the budget last looked
        data = config.data
        self.class_names = data.name_classes or default_class_names(data.num_classes)
        self._warned: set[str] = set()  # warnings given once per run

    def resume(self, checkpoint: dict, path: str) -> None:
        """Continue where ``checkpoint`` stopped: weights, optimizer, scaler, RNG and logs."""
        resumed = load_training_checkpoint(
            checkpoint,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            device=self.runtime.device,
        )
        self.start_epoch, self.history = resumed.epoch, resumed.history
        if self.budget.seconds and resumed.total_epochs:  # the schedule the LR was following
            self.total_epochs = min(resumed.total_epochs, self.config.schedule.unfreeze_epoch)
            self.saver.total_epochs = self.total_epochs
        self.log_dir = Path(self.config.output.save_dir) / resumed.log_dir.name  # beside it
        for note in resumed.notes:
            self.say(f"note: {note}")
        self._warned.add("lr clamp")  # said when the run began
        total = self.total_epochs
        if self.start_epoch >= self.config.schedule.unfreeze_epoch:
            raise UserError(
                f"the checkpoint already finished {self.start_epoch} epochs; raise "
                "--unfreeze-epoch to train longer."
            )
        self.say(f"Resuming from {path} at epoch {self.start_epoch + 1}/{total}")

    def fit(self) -> None:
        """Run the epochs from the start (or resumed) epoch to ``unfreeze_epoch``; rank 0's
        files are written behind them, and the writes in flight always finish before it
        returns or raises (Ctrl-C and SIGTERM included)."""
        config, dist_info = self.config, self.dist_info
        check_batches(config, self.train_set, self.val_set, self.start_epoch, dist_info)
        self._announce()
        log = None
        if dist_info.is_main:
            check_writable(config.output.save_dir)  # now, not at the first epoch's end
            remove_leftovers(config.output.save_dir)
            log = TrainingLog(self.log_dir, self.history, self.class_names)
            path = Path(config.output.save_dir) / "config.yaml"
            self.writer.submit(lambda: write_config(config, path))
            print(f"Settings saved to {path}; train them again with --config {path}")
        phase = loaders = None
        epoch = self.start_epoch
        try:
            while True:
                if phase != Phase.at(config.schedule, epoch):
                    if loaders is not None:
                        loaders.close()
                    phase = Phase.at(config.schedule, epoch)
                    loaders = self.start_phase(phase)
                    self.budget.new_phase()  # another batch size: epochs timed afresh
                set_optimizer_lr(self.optimizer, self.lr_schedule(phase), epoch)
                loaders.set_epoch(epoch)
                self.run_epoch(epoch, loaders, log)
                barrier()
                if epoch + 1 >= self.total_epochs:
                    break
                epoch += 1
        except KeyboardInterrupt as stop:
            self._finish(log, loaders, epoch - self.start_epoch)
            path = Path(config.output.save_dir) / "checkpoint_last.pth"
            signum = stop.signum if isinstance(stop, StopSignal) else signal.SIGINT
            raise TrainingInterruptedError(epoch + 1, path, signum) from None
        except BaseException:
            self._finish(log, loaders, epoch - self.start_epoch)
            raise
        self._finish(log, loaders, epoch + 1 - self.start_epoch)
        if dist_info.is_main:
            print(self.clock.line())

    def _finish(self, log: TrainingLog | None, loaders: Loaders | None, epochs: int) -> None:
        """End the loaders' workers, then wait for the last writes (the curves drawn for the
        last time, TensorBoard closed); a write that failed is raised here."""
        self.clock.loop_end(epochs)
        if loaders is not None:
            loaders.close()
        with self.clock.part("final writes"):
            if log is not None and not log.closed and not self.writer.failed:
                with contextlib.suppress(KeyboardInterrupt):  # on the way out: queued anyway
                    self.writer.submit(log.writer(final=True))
            try:
                self.writer.close()
            except WriteError as error:
                path = Path(self.config.output.save_dir) / "checkpoint_last.pth"
                then = f"resume with python train.py --resume {shlex.quote(str(path))}"
                then = then if path.is_file() else "start again"
                raise WriteError(f"{error}; the files written before stay whole: {then}.") from None

    def _announce(self) -> None:
        config, runtime = self.config, self.runtime
        data = config.data
        height, width = data.input_shape
        processes = f"{self.dist_info.world_size} process(es)"
        if self.dist_info.enabled:
            processes += f" under torchrun (DDP over {dist.get_backend()})"
        self.say(
            f"Training {data.backbone} UNet, {data.num_classes} classes, {len(self.train_set)} "
            f"train / {len(self.val_set) if self.val_set else 0} val images, {height}x{width}, "
            f"{runtime.device.type} {runtime.precision}, {processes}"
        )
        if bf16_note(runtime):
            self.say(bf16_note(runtime))
        counts = self.train_set.label_counts
        counts = counts[:2] if data.dataset_format == "medical" else counts
        self.say(
            f"Classes (label value -> class -> name, share of the pixels in the "
            f"{self.train_set.checked} train labels, all checked in "
            f"{self.train_set.check_seconds:.1f} s):"
        )
        self.say("\n".join(mapping_lines(counts, self.class_names, data.dataset_format)))
        frozen = Phase.at(config.schedule, self.start_epoch).frozen
        if frozen and not data.pretrained and not data.model_path:
            self.say(
                "warning: the backbone is frozen for the first --freeze-epoch epochs but "
                "holds no trained weights (--model-path '' and no --pretrained), so those "
                "epochs train only the decoder on a random encoder; pass --no-freeze-train, "
                "--pretrained or a --model-path."
            )

    def start_phase(self, phase: Phase) -> Loaders:
        """Freeze or unfreeze the backbone, say the phase's LRs; its loaders."""
        config = self.config
        (self.model.freeze_backbone if phase.frozen else self.model.unfreeze_backbone)()
        if self.dist_info.enabled:
            self.model_train = self._distributed()
        loaders = Loaders(
            self.train_set,
            self.val_set,
            batch_size=phase.batch_size,
            val_batch_size=val_batch_size(
                config.schedule.val_batch_size, phase, self.val_set, self.dist_info
            ),
            num_workers=config.runtime.num_workers,
            seed=config.runtime.seed,
            dist_info=self.dist_info,
            pin_memory=self.runtime.device.type == "cuda",
        )
        opt = config.optimizer
        init_lr, min_lr = phase_lrs(opt, phase)
        text, warning = describe_lr(
            opt.init_lr, opt.final_lr, phase.batch_size, opt.optimizer_type, opt.lr_fit, phase.name
        )
        self.say(text)
        if warning and "lr clamp" not in self._warned:
            self.say(warning)
            self._warned.add("lr clamp")
        return loaders

    def lr_schedule(self, phase: Phase) -> Callable[[int], float]:
        """The phase's LR per epoch, over the run's epochs (as --time-budget last fitted them)."""
        opt = self.config.optimizer
        init_lr, min_lr = phase_lrs(opt, phase)
        return get_lr_scheduler(opt.lr_decay_type, init_lr, min_lr, self.total_epochs)

    def fit_to_budget(self, epoch: int, started: float) -> None:
        """With --time-budget, once ``epoch`` has trained (its mIoU apart): the run's total
        refitted to the time left, by rank 0's measure, so that every rank stops at the same
        epoch. The epoch's time includes the end of the epoch before (its saving)."""
        if not self.budget.seconds:
            return
        ends = self.clock.seconds["epoch ends"]
        self.budget.record(time.perf_counter() - started + ends - self._epoch_ends)
        self._epoch_ends = ends
        most = self.config.schedule.unfreeze_epoch
        total = self.budget.total(epoch + 1, self.clock.elapsed(), most)
        if self.dist_info.enabled:
            mine = total if self.dist_info.is_main else 0
            total = int(all_reduce_sum([mine], self.runtime.device)[0])
        self.total_epochs = self.saver.total_epochs = total

    def _distributed(self) -> nn.Module:
        """The model under DistributedDataParallel for this phase, as torchvision wraps it: DDP
        takes the parameters that train when it is built, so the frozen phase synchronises the
        decoder's gradients only, and no step searches the graph for unused parameters."""
        cuda = self.runtime.device.type == "cuda"
        device_ids = [self.runtime.device.index] if cuda else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def train_steps(self, batches, steps: int, epoch: int = 0) -> tuple[float, float]:
        """``steps`` training steps on ``batches``: the mean loss and f-score over the ranks."""
        clock = self.clock
        clock.steps_start()
        waited = clock.seconds["waiting for data"]
        start = time.perf_counter()
        result = train_one_epoch(
            self.model_train,
            batches,
            optimizer=self.optimizer,
            scaler=self.scaler,
            criterion=self.criterion,
            runtime=self.runtime,
            steps=steps,
            epoch=epoch,
            total_epochs=self.total_epochs,
            dist_info=self.dist_info,
        )
        waited = clock.seconds["waiting for data"] - waited
        clock.add("train steps", time.perf_counter() - start - waited)
        return result

    def run_epoch(self, epoch: int, loaders: Loaders, log: TrainingLog | None) -> None:
        """Train one epoch, then the val loss, the mIoU when due, and (rank 0) save."""
        config, runtime = self.config, self.runtime
        started = time.perf_counter()
        batches = TimedBatches(loaders.train, self.clock)
        loss, _ = self.train_steps(batches, loaders.train_steps, epoch)
        val_loss, scores = None, {}
        evaluation = config.evaluation
        with self.clock.part("evaluation"):
            if loaders.val is not None:
                val_loss, _ = evaluate_loss(
                    self.model,
                    loaders.val,
                    criterion=self.criterion,
                    runtime=runtime,
                    steps=loaders.val_steps,
                    dist_info=self.dist_info,
                )
        self.fit_to_budget(epoch, started)
        due = evaluation.eval_flag and (epoch + 1) % evaluation.eval_period == 0
        # a budget's last epoch is evaluated too: its mIoU, and a best_epoch_weights.pth by it
        due |= bool(evaluation.eval_flag and self.budget.seconds and epoch + 1 == self.total_epochs)
        if due and self.val_set is not None:
            with self.clock.part("evaluation"):
                eval_start = time.perf_counter()
                scores = self.evaluate()
                self.budget.record_evaluation(time.perf_counter() - eval_start)
        if log is not None:
            self.end_of_epoch(epoch, log, loss=loss, val_loss=val_loss, **scores)

    #: Fixed val images shown in TensorBoard beside their label and prediction at every mIoU.
    SAMPLES = 3

    def evaluate(self) -> dict:
        """The val mIoU as get_miou.py computes it, each class's IoU and (rank 0) a picture of
        a few fixed val images: image, label and prediction side by side."""
        evaluation, val_set = self.config.evaluation, self.val_set
        shown = list(range(0, len(val_set), self.dist_info.world_size))[: self.SAMPLES]
        predictions = dict.fromkeys(shown) if self.dist_info.is_main else None
        matrix = evaluate_miou(
            self.model,
            val_set,
            self.runtime,
            self.dist_info,
            tile=evaluation.tile,
            stride=evaluation.stride,
            samples=predictions,
        )
        hist = matrix.hist
        scores = {
            "miou": matrix.miou * 100,
            "class_iou": per_class_iu(hist),
            "never_found": never_found(hist, self.class_names),
        }
        if predictions:
            colors = class_colors(self.config.data.num_classes)
            strips = []
            for index, prediction in predictions.items():
                image, label = val_set.read_pair(index)
                strips.append([comparison_strip(np.asarray(image), label, prediction, colors)])
            scores["samples"] = grid(strips)
        return scores

    def end_of_epoch(
        self,
        epoch: int,
        log: TrainingLog,
        *,
        loss: float,
        val_loss: float | None = None,
        miou: float | None = None,
        class_iou: np.ndarray | None = None,
        never_found: Sequence[str] = (),
        samples: np.ndarray | None = None,
    ) -> None:
        """Rank 0: log the epoch, and hand its files (the logs, the original's weights files and
        the checkpoint) to the background writer, once those of the epoch before are written."""
        best = self.saver.is_best(log.history, loss=loss, val_loss=val_loss, miou=miou)
        log.append_loss(epoch + 1, loss, val_loss, lr=self.optimizer.param_groups[0]["lr"])
        if miou is not None:
            by_miou = self.config.evaluation.save_best_by == "miou"
            log.append_miou(epoch + 1, miou, best=best if by_miou else None, class_iou=class_iou)
            print(f"Epoch {epoch + 1} mIoU: {miou:.2f}")
            for line in never_found:
                print(line)
            log.add_text(epoch + 1, "\n".join(never_found))
        if samples is not None:
            log.add_samples(epoch + 1, samples)
        text = f"Total Loss: {loss:.3f}"
        text += f" || Val Loss: {val_loss:.3f}" if val_loss is not None else ""
        print(f"Epoch:{epoch + 1}/{self.total_epochs}\n{text}")
        # the files of the epoch before last are whole, and the buffers they used are free
        self.writer.wait(keep=len(self.saver.snapshots) - 1)
        write_checkpoint = self.saver.save(
            epoch + 1,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            history=log.history,
            log_dir=log.log_dir,
            loss=loss,
            val_loss=val_loss,
            best=best,
        )
        last = epoch + 1 == self.total_epochs
        self.writer.submit(log.writer(final=last), write_checkpoint)


def benchmark(config: TrainConfig, runtime: Runtime, steps: int) -> str:
    """Time ``steps`` training steps at the first epoch's phase, data loading included, after 2
    warm-up steps; return the line that says s/step and img/s."""
    trainer = Trainer(config, runtime)
    phase = Phase.at(config.schedule, config.schedule.init_epoch)
    loaders = trainer.start_phase(phase)
    if loaders.train_steps < steps + 2:
        raise UserError(
            f"--benchmark {steps} needs {steps + 2} batches of train data; there are "
            f"{loaders.train_steps}."
        )
    set_optimizer_lr(trainer.optimizer, trainer.lr_schedule(phase), config.schedule.init_epoch)
    loaders.set_epoch(config.schedule.init_epoch)
    batches = iter(loaders.train)
    for count in (2, steps):  # warm-up, then the timed steps
        start = time.perf_counter()
        trainer.train_steps(batches, count)  # reads the loss back: synced
        seconds = (time.perf_counter() - start) / count
    data = config.data
    layout = " + channels_last" if runtime.channels_last else ""
    return (
        f"benchmark: {data.backbone} {data.input_shape[0]}x{data.input_shape[1]}, batch "
        f"{phase.batch_size}, {runtime.precision}{layout} on {runtime.device.type}: "
        f"{seconds:.3f} s/step, {phase.batch_size / seconds:.2f} img/s ({steps} steps)"
    )
