"""Where a digits FD comes from: its terms and the class structure behind them.

    python benchmarks/fd_anatomy.py SAMPLES.npz [SAMPLES.npz ...]

Each file is a `tqdit sample --save-npz` output (its metadata names model, steps, cfg and
seed). One row per file plus a row of real train digits (as many as the largest sample set,
drawn with --seed), all scored against the held-out split with the bundled classifier's
features: FD, its mean term, total feature variance, within-class variance, spread of the
class means (between-class) and the class-mean shift (`tqdit_export.eval.metrics`). Writes
benchmarks/results/fd_anatomy.{json,md}; the table is rebuilt from the files given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tqdit_export.data import digits_split
from tqdit_export.eval import evaluate_digits
from tqdit_export.io import atomic_output, load_samples, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _row(source: str, meta: dict, r: dict) -> dict:
    t, c = r["fd_terms"], r["class_terms"]
    return {"source": source, "model": meta.get("model"), "record": meta.get("record"),
            "sampler": meta.get("sampler"), "steps": meta.get("steps"), "cfg": meta.get("cfg"),
            "seed": meta.get("seed"), "num": r["num"], "fd": r["fd"], "fd_reference": r["fd_reference"],
            "accuracy": r["accuracy"], "fd_terms": t, "class_terms": c}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", nargs="+", type=Path, help=".npz files from `tqdit sample --save-npz`")
    p.add_argument("--seed", type=int, default=0, help="draw of the real train digits (and of each FD reference)")
    p.add_argument("--out", type=Path, default=RESULTS / "fd_anatomy")
    args = p.parse_args(argv)
    missing = [str(s) for s in args.samples if not s.is_file()]
    if missing:
        raise SystemExit(f"sample files not found: {', '.join(missing)} (make them with `tqdit sample --save-npz`)")

    rows = []
    for path in args.samples:
        images, labels, meta = load_samples(path)
        rows.append(_row(path.name, meta, evaluate_digits(images, labels, seed=args.seed)))
    split = digits_split()
    n = min(max(r["num"] for r in rows), len(split.train_images))
    idx = np.random.default_rng(args.seed).choice(len(split.train_images), size=n, replace=False)
    real = evaluate_digits(split.train_images[idx], split.train_labels[idx], seed=args.seed)
    rows.append(_row(f"real train digits ({n})", {}, real))

    command = "python benchmarks/fd_anatomy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.out.with_suffix(".json"), {"command": command, "rows": rows})
    ho = rows[-1]["fd_terms"]["trace_heldout"], rows[-1]["class_terms"]["within_heldout"], \
        rows[-1]["class_terms"]["between_heldout"]
    lines = ["# FD anatomy: digits samples against the held-out split", "",
             f"Command: `{command}`", "",
             "Held-out digits: total feature variance "
             f"{ho[0]:.1f}, within-class {ho[1]:.1f}, between-class {ho[2]:.1f}. "
             "FD = mean term + Tr S + Tr S_ho − cross; within/between: mean variance inside a class / "
             "spread of the 10 class means; class-mean shift: per-class squared distance of the means "
             "to the held-out ones.", "",
             "| samples | model | steps | cfg | seed | N | FD | FD ref | accuracy | mean term | total var | "
             "within-class var | between-class var | class-mean shift |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, c = r["fd_terms"], r["class_terms"]
        model = Path(r["model"]).parent.name if r["model"] and "/" in r["model"] else (r["model"] or "—")
        lines.append(f"| {r['source']} | {model} | {r['steps'] or '—'} | {r['cfg'] or '—'} | "
                     f"{'—' if r['seed'] is None else r['seed']} | {r['num']} | {r['fd']:.3f} | "
                     f"{r['fd_reference']:.3f} | {r['accuracy']:.3f} | {t['mean']:.3f} | {t['trace_samples']:.1f} | "
                     f"{c['within_samples']:.1f} | {c['between_samples']:.1f} | {c['class_mean_shift']:.2f} |")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
