"""Train the bundled digits classifier (metrics feature space) on the train split only.

    python -m tqdit_export.training.train_classifier [--epochs 40] [--seed 0]

Light augmentation (random shifts of up to one pixel, random Gaussian noise, small
contrast jitter) keeps it robust on generated samples, which are never quite on the data
manifold. CPU, one thread, about a minute. Reports the held-out accuracy and writes
`tqdit_export/eval/weights/digits-classifier.safetensors` atomically, with the training
info (held-out accuracy, epochs, seed, torch version, wall time) in its metadata.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..io import atomic_output

from ..data import digits_split
from ..eval.classifier import DEFAULT_WEIGHTS, FORMAT, DigitsClassifier


def augment(x: torch.Tensor, gen: torch.Generator, noise_max: float = 0.15) -> torch.Tensor:
    """Random integer shift in {-1, 0, 1}^2 (background -1 filled in), contrast jitter, noise."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    oy = torch.randint(0, 3, (n,), generator=gen)
    ox = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(x)
    for dy in range(3):
        for dx in range(3):
            m = (oy == dy) & (ox == dx)
            if m.any():
                out[m] = padded[m, :, dy : dy + 8, dx : dx + 8]
    # contrast jitter around the background level: -1 + (x + 1) * s, s in [0.85, 1.15]
    s = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    out = -1.0 + (out + 1.0) * s
    sigma = noise_max * torch.rand(n, 1, 1, 1, generator=gen)
    out = out + sigma * torch.randn(out.shape, generator=gen)
    return out.clamp(-1.2, 1.2)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def save_classifier(model: DigitsClassifier, path: Path, info: dict) -> None:
    """Weights + info to `path` atomically (temp file, then rename)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "info": json.dumps(info)}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def train(epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 2e-3, threads: int = 1):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    split = digits_split()
    x_tr, y_tr = torch.from_numpy(split.train_images), torch.from_numpy(split.train_labels)
    x_ho, y_ho = torch.from_numpy(split.heldout_images), torch.from_numpy(split.heldout_labels)
    gen = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_tr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i : i + batch_size]
            xb = augment(x_tr[idx], gen)
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_tr):.4f}  held-out acc {accuracy(model, x_ho, y_ho):.4f}")
    wall = time.perf_counter() - t0
    info = {
        "heldout_accuracy": round(accuracy(model, x_ho, y_ho), 6),
        "train_accuracy": round(accuracy(model, x_tr, y_tr), 6),
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": threads,
        "wall_time_s": round(wall, 2),
        "data": "sklearn digits, tqdit_export.data.digits_split() train split (1437)",
    }
    return model.eval(), info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    a = p.parse_args(argv)
    model, info = train(a.epochs, a.seed, a.batch_size, a.lr, a.threads)
    save_classifier(model, a.out, info)
    print(f"held-out accuracy {info['heldout_accuracy']:.4f}  (train {info['train_accuracy']:.4f}), "
          f"{info['wall_time_s']:.1f} s -> {a.out} ({a.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
