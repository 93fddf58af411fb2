"""Train the bundled class-conditional DiT on the digits; resumable across runs.

    python -m tqdit_export.training.train_dit --steps 6000 [--max-minutes 50]

Every `--save-every` steps the full state (model, EMA, optimizer, step, accumulated wall
time, hardware used) is written atomically to `--state`; a later run with the same
`--state` continues from there, so training can span several sessions. Each step draws
its batch, timesteps and noise from a generator seeded by (seed, step), so a resumed run
follows the same data order as an uninterrupted one. At the end the EMA weights are
exported to `--out` as a tqdit checkpoint (safetensors, config inside).
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

from ..data import digits_split
from ..hardware import cpu_name
from ..io import atomic_output
from ..diffusion import NUM_TRAIN_TIMESTEPS, GaussianDiffusion, linear_betas
from ..models.checkpoint import save_dit
from ..models.dit import DiT, dit_config

DEFAULT_STATE = Path("runs/dit-digits/state.pt")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / "weights" / "dit-digits.safetensors"


def hardware_name(device: torch.device) -> str:
    """A human-readable name of what trained (GPU model, or CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, constant, then a linear decay to 10% over the last `decay_steps` steps.

    The schedule depends only on (step, total steps), so a run resumed with the same
    --steps follows it exactly.
    """
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    decay_start = args.steps - args.decay_steps
    decay = 1.0 if step < decay_start else 1.0 - 0.9 * (step - decay_start) / max(1, args.decay_steps)
    return args.lr * warm * decay


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="DiT-digits", help="DiT config name (default DiT-digits)")
    p.add_argument("--steps", type=int, default=6000, help="total optimizer steps (default 6000)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=6e-4, help="AdamW learning rate (default 6e-4)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps (default 200)")
    p.add_argument("--decay-steps", type=int, default=1000,
                   help="the last N steps decay the learning rate linearly to 10%% (default 1000)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and noise (default 0)")
    p.add_argument("--save-every", type=int, default=250, help="steps between state saves (default 250)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (after saving) once this much time passed")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"resumable state file (default {DEFAULT_STATE})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="exported EMA checkpoint (safetensors)")
    p.add_argument("--export-only", action="store_true", help="only export the EMA weights of --state to --out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    config = dit_config(args.config)
    torch.manual_seed(args.seed)  # the initial weights, so a fresh run is reproducible
    model = DiT(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step, wall, hardware = 0, 0.0, []
    if args.state.exists():
        state = torch.load(args.state, map_location=device, weights_only=False)
        if state["config"] != config.to_json():
            raise SystemExit(f"{args.state} was trained with another config; pass a new --state to start over")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, wall, hardware = state["step"], state["wall_seconds"], state["hardware"]
        print(f"resumed {args.state} at step {step} ({wall / 60:.1f} min so far)")
    elif args.export_only:
        raise SystemExit(f"--export-only: no state at {args.state}")
    hw = hardware_name(device)
    if hw not in hardware:
        hardware.append(hw)

    def save_state() -> None:
        with atomic_output(args.state) as tmp:
            torch.save({"config": config.to_json(), "model": model.state_dict(), "ema": ema.state_dict(),
                        "opt": opt.state_dict(), "step": step, "wall_seconds": wall, "hardware": hardware,
                        "args": {k: str(v) for k, v in vars(args).items()}}, tmp)

    if not args.export_only:
        split = digits_split()
        images = torch.from_numpy(split.train_images).to(device)
        labels = torch.from_numpy(split.train_labels).to(device)
        diffusion = GaussianDiffusion(linear_betas(NUM_TRAIN_TIMESTEPS))
        model.train()
        # `start` moves to each save (the wall time is accumulated there); `run_start` bounds --max-minutes
        start, last_log, losses = time.time(), time.time(), []
        run_start = start
        while step < args.steps:
            gen = torch.Generator(device="cpu").manual_seed(args.seed * 1_000_003 + step)
            torch.manual_seed(args.seed * 1_000_003 + step)  # label dropout inside the model
            idx = torch.randint(len(images), (args.batch,), generator=gen).to(device)
            t = torch.randint(NUM_TRAIN_TIMESTEPS, (args.batch,), generator=gen).to(device)
            noise = torch.randn((args.batch, *images.shape[1:]), generator=gen).to(device)
            x0, y = images[idx], labels[idx]
            x_t = diffusion.q_sample(x0, t, noise).float()
            loss = diffusion.training_loss(model(x_t, t, y), x0, x_t, t, noise).mean()
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(args.ema).add_(pm.detach(), alpha=1 - args.ema)
            step += 1
            losses.append(loss.item())
            now = time.time()
            if step % 100 == 0:
                print(f"step {step}/{args.steps} loss {sum(losses) / len(losses):.4f} "
                      f"{100 / (now - last_log):.2f} steps/s", flush=True)
                losses, last_log = [], now
            out_of_time = args.max_minutes is not None and (now - run_start) / 60 >= args.max_minutes
            if step % args.save_every == 0 or step == args.steps or out_of_time:
                wall += now - start
                start = now
                save_state()
            if out_of_time:
                print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached; run again to resume")
                break
    info = {"steps": step, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "decay_steps": args.decay_steps,
            "ema": args.ema, "seed": args.seed,
            "train_wall_minutes": round(wall / 60, 2), "hardware": hardware, "torch": torch.__version__,
            "data": "sklearn digits, stratified 80/20 split seed 0 (train part)"}
    save_dit(ema.cpu().eval(), args.out, info=info)
    print(f"wrote EMA weights at step {step} to {args.out}")


if __name__ == "__main__":
    main()
