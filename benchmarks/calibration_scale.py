"""What TQ-DiT calibration costs at the sizes users bring: DiT-S/2 .. XL/2, random weights, on this CPU.

    flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py                     # every row
    flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --rows DiT-S/2:10:8 # one row (name:G:n)
    flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --full DiT-S/2:10:8 # `tqdit calibrate` end to end
    flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --probe DiT-B/2:8    # this machine's speed now
    python benchmarks/calibration_scale.py --report                                        # tables + plot only

Writes benchmarks/results/calibration_scale.{json,md,png} (rows accumulate across runs, keyed
by model, G and samples per group). Random weights (a seeded perturbation of DiT's
initialisation): the cost of calibration does not depend on the weights' values, so these are
costs, not quality results.

A whole XL/2 run takes hours on 2 cores, so every row measures the parts of one run, each in a
fresh process, and adds them up:
- trajectories: one denoiser call (after a warm-up) at the calibration batch (2n, CFG-doubled) timed, x 100 DDPM steps;
- capture: the first two time groups' passes timed (the first holds the shape probe), x G;
- search: every site of the first block and of the final layer searched (W8A8, TQ-DiT) on G
  groups' captures for one round, x 3 rounds (every round repeats the same work), the block x depth.
The parts are the code paths `tqdit calibrate` runs (`calibration.calibrate._capture` and
`_SiteSearch`), so a full run differs by the file I/O of its checkpoints only. Peak RSS is the
worker's, with the heap settings `tqdit calibrate` uses in each phase (`calibration.heap`), taken
for the capture passes and for the search separately; it holds two groups' captures of every site
at once, which a full run never does.
A fitted model (seconds = FLOPs / effective rate, one rate per phase) predicts the rest.

The machine is shared, and its speed differs between days (a DiT-B/2 call took 5.4 s when its
row was taken, 9.1 s on 2026-12-03): a full run therefore times the rows' denoiser call just
before it starts (`probe_call_s`), and is compared with the extrapolation scaled by that speed.
`--probe` records the call alone, to tell whether rows of another day still describe the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "calibration_scale"
SIZE_ROWS = [("DiT-S/2", 10, 8), ("DiT-B/2", 10, 8), ("DiT-L/2", 10, 8), ("DiT-XL/2", 10, 8)]
SWEEP_ROWS = [("DiT-S/2", 10, 16), ("DiT-S/2", 10, 32), ("DiT-S/2", 1, 8), ("DiT-S/2", 5, 8)]
ROUNDS = 3
TRAJECTORY_STEPS = 100


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start VmHWM again from the current resident size (Linux: clear_refs 5), to measure a phase's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def work_flops(cfg, groups: int, n: int) -> dict[str, float]:
    """FLOPs of each phase, counted from the config: what the cost model scales with.

    Forward per sample: the block GEMMs (12 D^2 per token), attention (2 T^2 D) and adaLN (6 D^2).
    Search per block and round: 101 candidates (20 for the softmax boundary) of every site's GEMM
    on the kept rows (256 per group; the weight search min(256, 2048 // G) per group)."""
    d, t, depth = cfg.hidden_size, cfg.num_tokens, cfg.depth
    forward = 2 * depth * (12 * d * d * t + 2 * t * t * d + 6 * d * d)
    linear = 12 * d * d  # MACs per row over qkv, proj, fc1, fc2
    act = 101 * 2 * 256 * linear * groups
    attn = (101 + 101 + 20 + 101) * 2 * t * t * d * groups  # Q.K^T a and b, A.V a (softmax) and b: one sample each
    weight = 101 * 2 * groups * min(256, 2048 // groups) * linear
    return {"trajectory": TRAJECTORY_STEPS * 2 * n * forward, "capture": groups * 2 * n * 3 * forward,
            "search": depth * ROUNDS * (act + attn + weight)}


def _key(row: dict) -> tuple:
    """What identifies a row (measured parts or full run) across runs: model, G and samples per group."""
    return row["model"], row["groups"], row["samples_per_group"]


def _replace(rows: list[dict], new: dict) -> list[dict]:
    """`rows` with `new` in place of the row of its key (appended last)."""
    return [r for r in rows if _key(r) != _key(new)] + [new]


def random_model(name: str):
    """The named DiT config with seeded random weights (what every row of this benchmark calibrates)."""
    from tqdit_export.models import DiT, dit_config

    torch.manual_seed(0)
    model = DiT(dit_config(name)).eval()
    with torch.no_grad():  # DiT zero-initialises adaLN and the output: perturb so every path computes
        for pname, p in model.named_parameters():
            if pname != "pos_embed":
                p.add_(torch.randn_like(p) * 0.02)
    return model


def time_calls(model, inputs: tuple, repeats: int) -> list[float]:
    """Seconds of `repeats` denoiser calls on `inputs`, after a warm-up call."""
    seconds = []
    with torch.no_grad():
        model(*inputs)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            seconds.append(time.perf_counter() - start)
    return seconds


def probe(model, name: str, n: int, repeats: int = 5) -> dict:
    """`repeats` warm calls of `model` (the random `name`) at the rows' calibration batch (2n),
    with the heap settings of the rows' worker: this machine's speed now."""
    from calibration import heap

    heap.manage()
    cfg = model.config
    inputs = (torch.randn(2 * n, cfg.in_channels, cfg.input_size, cfg.input_size), torch.randint(1000, (2 * n,)),
              torch.randint(cfg.num_classes, (2 * n,)))
    seconds = [round(s, 3) for s in time_calls(model, inputs, repeats)]
    return {"model": name, "samples_per_group": n, "call_s": seconds, "median_s": sorted(seconds)[len(seconds) // 2],
            "date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(),
            "command": f"flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --probe {name}:{n}"}


def full_run(name: str, groups: int, n: int) -> dict:
    """Run `tqdit calibrate` end to end on the random-weight model (saved as a checkpoint), as a
    user would: the check on the extrapolated rows. Peak RSS is the calibrate process's own."""
    import tempfile

    from tqdit_export.models.checkpoint import save_dit

    model = random_model(name)
    speed = probe(model, name, n, repeats=3)  # the machine's speed at the start of the run
    with tempfile.TemporaryDirectory(prefix="tqdit-full-") as tmp:
        ckpt, cost_json = Path(tmp) / "model.safetensors", Path(tmp) / "cost.json"
        save_dit(model, ckpt)
        del model  # the calibrate process loads its own copy
        cmd = [sys.executable, "-m", "tqdit_export.cli", "calibrate", "--model", str(ckpt), "--bits", "W8A8",
               "--groups", str(groups), "--samples-per-group", str(n), "--rounds", str(ROUNDS),
               "--trajectory-steps", str(TRAJECTORY_STEPS), "--device", "cpu", "--quiet",
               "--cost-json", str(cost_json), "--out", str(Path(tmp) / "record")]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"full run {name} G={groups} n={n} failed:\n{proc.stderr[-3000:]}")
        cost = json.loads(cost_json.read_text())
    calibrate_s = cost["wall_seconds"]
    return {"model": name, "groups": groups, "samples_per_group": n, "rounds": ROUNDS,
            "wall_s": round(wall, 1),  # the process: start-up, loading, calibrate, saving the record
            "seconds": {"trajectory": round(calibrate_s - cost["capture_seconds"] - cost["search_seconds"], 1),
                        "capture": round(cost["capture_seconds"], 1), "search": round(cost["search_seconds"], 1),
                        "total": round(calibrate_s, 1)},
            "peak_rss_mib": round(cost["peak_rss_mib"]), "torch_threads": cost["torch_threads"],
            "probe_call_s": speed["median_s"], "date": speed["date"],
            "command": f"flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --full {name}:{groups}:{n}"}


def worker(name: str, groups: int, n: int) -> dict:
    """Measure one row in this process (see the module docstring)."""
    from calibration import heap
    from calibration.calibrate import CalibrationConfig, GroupData, _capture, _SiteSearch, site_blocks
    from calibration.sites import Site
    from tqdit_export.quant import denoising_loss, dit_sites

    managed = heap.manage()  # the heap settings `tqdit calibrate` uses, phase by phase
    model = random_model(name)
    cfg = model.config
    config = CalibrationConfig(num_groups=groups, rounds=ROUNDS)
    sites = dit_sites(model)
    span = 1000 // groups
    data = []
    for g in range(groups):
        x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size)
        t = torch.randint(g * span, (g + 1) * span, (n,))
        y = torch.randint(cfg.num_classes, (n,))
        inputs = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, model.null_class)]))
        eps, x0 = torch.randn_like(inputs[0]), torch.randn_like(inputs[0])
        data.append(GroupData(inputs, (eps, x0, inputs[0], inputs[1])))

    (call,) = time_calls(model, data[0].inputs, 1)
    gen = torch.Generator().manual_seed(0)
    names = {s.name for s in sites}
    recompute = [b for b, _ in site_blocks(sites) if b not in names and any(p.isdigit() for p in b.split("."))]
    caps, capture_s = [], []
    heap.phase("capture")
    for g in range(min(2, groups)):
        start = time.perf_counter()
        caps.append(_capture(model, sites, data[g], denoising_loss, config, gen, recompute))
        capture_s.append(time.perf_counter() - start)
    heap.phase("compute")
    per_group = capture_s[-1]
    capture_peak = peak_rss_mib()
    reset_peak_rss()
    # What one group's capture spills to the work folder (the search reads it back block by block).
    spill = sum(t.numel() * t.element_size() for c in caps[0].values() for t in
                (c.grad2, *c.operands.values(), *c.absmax.values(), *c.percentile.values()))
    resolved = [Site(s.name, s.kind, {op: r for op, reg in s.regions.items()
                                      if (r := config.region(reg)) != "uniform"}) for s in sites]
    blocks = site_blocks(resolved)
    search_s = {}
    one_round = CalibrationConfig(num_groups=groups, rounds=1)
    for block, bsites in (blocks[0], blocks[-1]):
        start = time.perf_counter()
        for s in bsites:
            search = _SiteSearch(model, s, [caps[g % len(caps)][s.name] for g in range(groups)], one_round)
            search.run()
        search_s[block] = time.perf_counter() - start
    # One round measured: each of the ROUNDS rounds searches the same candidates on the same rows.
    block_s, final_s = search_s[blocks[0][0]] * ROUNDS, search_s[blocks[-1][0]] * ROUNDS
    seconds = {
        "trajectory": call * TRAJECTORY_STEPS,
        "capture": capture_s[0] + per_group * (groups - 1),
        "search": block_s * cfg.depth + final_s,
    }
    seconds["total"] = sum(seconds.values())
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name, "weights": "random (seeded perturbation of the initialisation)", "params_m": round(params / 1e6, 1),
        "depth": cfg.depth, "hidden": cfg.hidden_size, "tokens": cfg.num_tokens, "groups": groups,
        "samples_per_group": n, "rounds": ROUNDS, "bits": "W8A8", "method": "tqdit",
        "measured": {"denoiser_call_s": round(call, 3), "capture_group_s": [round(s, 2) for s in capture_s],
                     "search_first_block_one_round_s": round(block_s / ROUNDS, 2),
                     "search_final_layer_one_round_s": round(final_s / ROUNDS, 2)},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "extrapolated": True,
        "peak_rss_mib": round(max(capture_peak, peak_rss_mib())),
        "peak_rss_capture_mib": round(capture_peak), "peak_rss_search_mib": round(peak_rss_mib()),
        "heap_managed": managed,
        "spill_mib": round(spill * groups / 2**20),
        "flops": work_flops(cfg, groups, n),
        "torch_threads": torch.get_num_threads(),
    }


def fit(rows: list[dict]) -> dict[str, float]:
    """Effective FLOP/s per phase: least squares of seconds = flops / rate through the origin."""
    rates = {}
    for phase in ("trajectory", "capture", "search"):
        xs = [r["flops"][phase] for r in rows]
        ys = [r["seconds"][phase] for r in rows]
        k = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)  # seconds per FLOP
        rates[phase] = 1 / k
    return rates


def predict(rates: dict[str, float], flops: dict[str, float]) -> dict[str, float]:
    out = {p: flops[p] / rates[p] for p in rates}
    out["total"] = sum(out.values())
    return out


def report(rows: list[dict], cpu: dict, full: list[dict] = (), probes: list[dict] = ()) -> None:
    from tqdit_export.io import atomic_output, write_json
    from tqdit_export.models import dit_config

    rates = fit(rows)
    xl32 = predict(rates, work_flops(dit_config("DiT-XL/2"), 10, 32))
    write_json(OUT.with_suffix(".json"), {"cpu": cpu, "rows": rows, "full_runs": list(full), "probes": list(probes),
                                          "fit_gflops_per_s": {k: round(v / 1e9, 1) for k, v in rates.items()},
                                          "predicted_xl2_g10_n32_s": {k: round(v) for k, v in xl32.items()}})
    h = lambda s: f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"  # noqa: E731
    xl = [r["seconds"]["total"] for r in rows if r["model"] == "DiT-XL/2" and r["groups"] == 10]
    xl_total = h(xl[0]) if xl else "not measured"
    lines = [
        "# Calibration cost at DiT sizes (W8A8 TQ-DiT: TGQ + MRQ + HO, 3 rounds), CPU",
        "",
        f"CPU: {cpu['name']} ({cpu['kind']}; AVX2 {cpu['flags'].get('avx2')}, AVX-512 {cpu['flags'].get('avx512f')}, "
        f"VNNI {cpu['flags'].get('avx512_vnni') or cpu['flags'].get('avx_vnni')}), {rows[0]['torch_threads']} torch "
        "threads, a machine shared with other jobs (runs serialised with a lock, other processes not stopped).",
        "Weights: random (cost does not depend on their values). Every total is **extrapolated** from measured "
        "parts of the run (module docstring of `benchmarks/calibration_scale.py`): one denoiser call x 100 "
        "trajectory steps, 2 groups' capture passes x G, one round of the first block's search x 3 rounds x "
        "depth, + the final layer.",
        "",
        "| model | params | G | n/group | trajectories | capture | search | total (extrapolated) | "
        "peak RSS MiB: capture / search | spilled captures MiB | measured: call s / capture s per group / first block, 1 round s | model predicts | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, m = r["seconds"], r["measured"]
        pred = predict(rates, r["flops"])["total"]
        lines.append(
            f"| {r['model']} (random) | {r['params_m']}M | {r['groups']} | {r['samples_per_group']} | "
            f"{h(s['trajectory'])} | {h(s['capture'])} | {h(s['search'])} | **{h(s['total'])}** | {r.get('peak_rss_capture_mib', r['peak_rss_mib'])} / {r.get('peak_rss_search_mib', '—')} | {r.get('spill_mib', '—')} | "
            f"{m['denoiser_call_s']} / {m['capture_group_s'][-1]} / {m['search_first_block_one_round_s']} | {h(pred)} | "
            f"`{r['command']}` |")
    extrapolated = {_key(r): r for r in rows}
    if full:
        lines += ["", "## Full runs: `tqdit calibrate` end to end, against the extrapolation", "",
                  "| model | G | n/group | trajectories | capture | search | total (measured) | extrapolated total "
                  "(table above) | measured / extrapolated | denoiser call s: the row's / at the run | "
                  "measured / extrapolated at the run's speed | peak RSS MiB (the run) | command |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in full:
            s, row = f["seconds"], extrapolated.get(_key(f))
            ext = row["seconds"]["total"] if row else None
            ratio = f"{s['total'] / ext:.2f}" if ext else "—"
            then, now = (row["measured"]["denoiser_call_s"] if row else None), f.get("probe_call_s")
            scaled = f"{s['total'] / (ext * now / then):.2f}" if ext and now else "— (no probe)"
            lines.append(f"| {f['model']} (random) | {f['groups']} | {f['samples_per_group']} | {h(s['trajectory'])} | "
                         f"{h(s['capture'])} | {h(s['search'])} | **{h(s['total'])}** | "
                         f"{h(ext) if ext else '—'} | {ratio} | {then or '—'} / {now or 'not probed'} | {scaled} | "
                         f"{f['peak_rss_mib']} | `{f['command']}` |")
    if probes:
        calls = {(r["model"], r["samples_per_group"]): r["measured"]["denoiser_call_s"] for r in rows if r["groups"] == 10}
        lines += ["", "## The machine's speed on other days: one denoiser call at the rows' batch (2n)", "",
                  "| model | n/group | date | call s (median of repeats) | the row's call s | command |",
                  "|---|---|---|---|---|---|"]
        for pr in probes:
            lines.append(f"| {pr['model']} | {pr['samples_per_group']} | {pr['date']} | {pr['median_s']} "
                         f"({', '.join(map(str, pr['call_s']))}) | {calls.get((pr['model'], pr['samples_per_group']), '—')} | "
                         f"`{pr['command']}` |")
    lines += [
        "",
        "## Cost model",
        "",
        "seconds = FLOPs / rate, one rate per phase fitted (least squares) over the rows above; FLOPs from the "
        "config (`work_flops`): trajectories 100 x 2n x forward, capture G x 2n x 3 forwards (forward, "
        "recomputation, backward), search depth x rounds x 101 candidates x the sites' GEMMs on the kept rows "
        "(256 per group; the weight search 2048 rows over all groups). The search does not grow with n: it "
        "keeps 256 rows per site and group whatever the samples.",
        "",
        "| phase | effective rate (GFLOP/s) |",
        "|---|---|",
        *[f"| {k} | {v / 1e9:.1f} |" for k, v in rates.items()],
        "",
        f"Predicted DiT-XL/2, G = 10, 32 samples per group: trajectories {h(xl32['trajectory'])}, capture "
        f"{h(xl32['capture'])}, search {h(xl32['search'])}, **total {h(xl32['total'])}** on this CPU.",
        "",
        "![cost](calibration_scale.png)",
        "",
        "## Notes",
        "",
        "- Peak RSS: the worker's during its two capture passes, and during the search (the peak counted again "
        "from the end of the captures), with the heap settings `tqdit calibrate` uses in each phase "
        "(`calibration.heap`: a 128 KiB mmap threshold while capturing, so freed activations leave the heap; "
        "glibc's 32 MiB ceiling and a trimmed heap for the trajectories and the search, which a small threshold "
        "slows 3x). The worker holds two groups' captures of every site in memory; a run spills them to disk. "
        "One capture pass alone: `python benchmarks/calibration_memory.py --model M --samples-per-group N "
        "--return-freed`.",
        "- The search keeps 256 rows per site and group whatever n, so n changes the trajectories and the capture "
        "only; G multiplies the activation search and the capture.",
        "- Spilled captures: what `OUT.partial/capture/` holds on disk during a run (G groups).",
        f"- No full XL/2 run was made ({xl_total} by this table); the parts are the code paths of a run, and the "
        "full-run path is tested for bit-identical records on small models.",
        "- The machine is shared and its speed differs between days (the probes above): a full run compared with "
        "rows of another day mixes the model's error with the machine's. Runs made before the probe existed "
        "show '— (no probe)'; the probe table says how far the machine had moved.",
        "- GPU: not measured (no GPU in this session).",
    ]
    with atomic_output(OUT.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, rates, xl32)


def plot(rows: list[dict], rates: dict[str, float], xl32: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tqdit_export.io import atomic_output

    sizes = sorted([r for r in rows if r["groups"] == 10 and r["samples_per_group"] == 8], key=lambda r: r["params_m"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = [r["params_m"] for r in sizes]
    for phase, marker in (("trajectory", "s"), ("capture", "^"), ("search", "o"), ("total", "D")):
        ax.plot(x, [r["seconds"][phase] / 3600 for r in sizes], marker=marker, label=f"{phase} (measured parts)")
        if phase != "total":
            ax.plot(x, [predict(rates, r["flops"])[phase] / 3600 for r in sizes], ls=":", color="gray")
    ax.plot([675], [xl32["total"] / 3600], "r*", ms=12, label="XL/2, n=32: predicted")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("parameters (M): S/2, B/2, L/2, XL/2"), ax.set_ylabel("hours (2 CPU threads)")
    ax.set_title("TQ-DiT W8A8 calibration, G=10, 8 samples/group (dotted: cost model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(OUT.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", default=None, help="rows to measure, as MODEL:G:N (default all)")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and the plot")
    # nargs "+": a bare --full or --probe is refused by argparse (an empty list would have run every row, for hours)
    p.add_argument("--full", nargs="+", default=None,
                   help="instead: run `tqdit calibrate` end to end for these MODEL:G:N (checks the extrapolation)")
    p.add_argument("--probe", nargs="+", default=None,
                   help="instead: time 5 warm denoiser calls for these MODEL:N, to see the machine's speed now")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        name, g, n = args.worker.split(":")
        print(json.dumps(worker(name, int(g), int(n))))
        return
    from tqdit_export.hardware import cpu_description

    path = OUT.with_suffix(".json")
    saved = json.loads(path.read_text()) if path.exists() else {}
    rows, full, probes = saved.get("rows", []), saved.get("full_runs", []), saved.get("probes", [])
    for spec in args.probe or []:
        name, n = spec.split(":")
        probes.append(probe(random_model(name), name, int(n)))
        print(json.dumps(probes[-1]), flush=True)
        report(rows, cpu_description(), full, probes)
    for spec in args.full or []:
        name, g, n = spec.split(":")
        run = full_run(name, int(g), int(n))
        print(json.dumps(run), flush=True)
        full = _replace(full, run)
        report(rows, cpu_description(), full, probes)
    todo = [] if args.report or args.full or args.probe else ([tuple(r.split(":")) for r in args.rows] if args.rows
                                   else [(m, str(g), str(n)) for m, g, n in SIZE_ROWS + SWEEP_ROWS])
    for name, g, n in todo:
        cmd = [sys.executable, __file__, "--worker", f"{name}:{g}:{n}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} G={g} n={n} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["command"] = f"flock /tmp/tqdit-cores.lock python benchmarks/calibration_scale.py --rows {name}:{g}:{n}"
        print(json.dumps(row), flush=True)
        rows = _replace(rows, row)
        report(rows, cpu_description(), full, probes)
    if args.report and rows:
        report(rows, cpu_description(), full, probes)


if __name__ == "__main__":
    main()
