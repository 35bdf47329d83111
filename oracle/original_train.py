"""The original's training script end to end, for timing a whole run against train.py's:

    python -m oracle.original_train --dataset-path VOCdevkit --num-classes 4 --input-shape 256 \
        --epochs 2 --batch-size 2 --dice-loss

As its train_medical.py (every listed image trains, none validates): a VGG UNet from scratch
(N(0, 0.02) init), its LossHistory (TensorBoard with the model's graph traced at start,
``epoch_loss.txt``, a pyplot figure smoothed by scipy at every epoch), its
``fit_one_epoch_no_val`` (float64 one-hot samples, CE + Dice on the one-hot, both losses read
back every step, Adam at the batch-fitted LR) and its three ``torch.save`` calls per epoch.
The benchmarks run it in its own process; the project never imports it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from oracle.original import RefVggUnet, ref_ce_loss, ref_collate, ref_dice_loss, ref_getitem


class RefDataset(Dataset):
    def __init__(self, root: Path, names: list[str], size: int, num_classes: int):
        self.root, self.names, self.size, self.num_classes = root, names, size, num_classes

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        voc = self.root / "VOC2007"
        name = self.names[index]
        rng = np.random.default_rng()
        return ref_getitem(voc / "JPEGImages" / f"{name}.jpg",
                           voc / "SegmentationClass" / f"{name}.png",
                           (self.size, self.size), self.num_classes, True, rng)  # fmt: skip


class LossHistory:
    """The original's: TensorBoard (the graph traced once), the loss text file and figure."""

    def __init__(self, log_dir: Path, model: torch.nn.Module, size: int):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.losses = log_dir, []
        log_dir.mkdir(parents=True)
        self.writer = SummaryWriter(str(log_dir))
        try:
            self.writer.add_graph(model, torch.randn(2, 3, size, size))
        except Exception:  # noqa: BLE001 - as the original
            pass

    def append_loss(self, epoch: int, loss: float) -> None:
        self.losses.append(loss)
        with open(self.log_dir / "epoch_loss.txt", "a") as f:
            f.write(f"{loss}\n")
        self.writer.add_scalar("loss", loss, epoch)
        self.loss_plot()

    def loss_plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import scipy.signal
        from matplotlib import pyplot as plt

        iters = range(len(self.losses))
        plt.figure()
        plt.plot(iters, self.losses, "red", linewidth=2, label="train loss")
        try:
            num = 5 if len(self.losses) < 25 else 15
            smooth = scipy.signal.savgol_filter(self.losses, num, 3)
            plt.plot(iters, smooth, "green", linestyle="--", linewidth=2, label="smooth train loss")
        except Exception:  # noqa: BLE001 - as the original
            pass
        plt.grid(True)
        plt.xlabel("Epoch")
        plt.ylabel("Loss")
        plt.legend(loc="upper right")
        plt.savefig(self.log_dir / "epoch_loss.png")
        plt.cla()
        plt.close("all")


def weights_init(net: torch.nn.Module, gain: float = 0.02) -> None:
    for m in net.modules():
        if hasattr(m, "weight") and "Conv" in type(m).__name__:
            torch.nn.init.normal_(m.weight.data, 0.0, gain)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-path", type=Path, required=True)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--input-shape", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--dice-loss", action="store_true")
    parser.add_argument("--save-period", type=int, default=5)
    parser.add_argument("--save-dir", type=Path, default=Path("logs_original"))
    args = parser.parse_args(argv)
    classes, size = args.num_classes, args.input_shape
    model = RefVggUnet(num_classes=classes).train()
    weights_init(model)
    names = (args.dataset_path / "VOC2007/ImageSets/Segmentation/train.txt").read_text().split()
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
    history = LossHistory(args.save_dir / f"loss_{stamp}", model, size)
    lr = min(max(args.batch_size / 16 * 1e-4, 1e-4), 1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr, betas=(0.9, 0.999), weight_decay=0)
    loader = DataLoader(RefDataset(args.dataset_path, names, size, classes), shuffle=True,
                        batch_size=args.batch_size, num_workers=args.num_workers,
                        pin_memory=True, drop_last=True, collate_fn=ref_collate)  # fmt: skip
    steps = len(names) // args.batch_size
    weights = torch.from_numpy(np.ones(classes, np.float32))
    for epoch in range(args.epochs):
        total_loss = total_f_score = 0.0
        for step, (images, pngs, labels) in enumerate(loader):
            if step >= steps:
                break
            optimizer.zero_grad()
            outputs = model(images)
            loss = ref_ce_loss(outputs, pngs, weights, classes)
            if args.dice_loss:
                loss = loss + ref_dice_loss(outputs, labels)
            with torch.no_grad():
                score = ref_dice_loss(outputs, labels, hard_threshold=0.5)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            total_f_score += score.item()
        loss = total_loss / steps
        history.append_loss(epoch + 1, loss)
        print(f"Epoch:{epoch + 1}/{args.epochs}\nTotal Loss: {loss:.3f}")
        if (epoch + 1) % args.save_period == 0 or epoch + 1 == args.epochs:
            torch.save(model.state_dict(), args.save_dir / f"ep{epoch + 1:03d}-loss{loss:.3f}.pth")
        if len(history.losses) <= 1 or loss <= min(history.losses):
            torch.save(model.state_dict(), args.save_dir / "best_epoch_weights.pth")
        torch.save(model.state_dict(), args.save_dir / "last_epoch_weights.pth")


if __name__ == "__main__":
    main()
