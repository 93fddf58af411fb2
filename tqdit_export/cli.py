"""`tqdit` command line: sample, evaluate, calibrate, export, lint, check, build, triton-repo, serve, doctor, demo.

    tqdit sample --model dit-digits --steps 100 --cfg 1.5 --num 500 --out grid.png --save-npz s.npz
    tqdit eval --samples s.npz --json eval.json
    tqdit build --model dit-digits --bits W8A8 --target h100 --out out/build
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from calibration.search import METHODS

from .api import SampleSettings, balanced_labels, model_pipeline, open_backend
from .diffusion import SAMPLERS
from .errors import UsageError, run_command
from .onnx.manifest import LAYOUTS
from .io import atomic_folder, check_output_file, check_output_folder, load_samples, save_samples, write_json
from .targets import ENGINE_TARGETS, TARGETS, record_forms_note, target

DEMO_JSON = "demo.json"  # the marker of a demo folder, written last


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    return name


# What each count flag counts, for the message that refuses a value below 1.
COUNT_FLAGS = {
    "num": "samples to draw",
    "steps": "sampling steps",
    "groups": "time groups on [0, 1000); default 10",
    "samples_per_group": "calibration samples per time group; default 32",
    "rounds": "alternating weight/activation search rounds; default 3",
    "trajectory_steps": "DDPM steps of the calibration trajectories; default 100",
}


def check_counts(args: argparse.Namespace, *names: str) -> None:
    """Refuse a count flag below 1 (or --groups above the 1000 training timesteps), naming the flag."""
    from .diffusion import NUM_TRAIN_TIMESTEPS

    for name in names:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1 ({COUNT_FLAGS[name]})")
        if name == "groups" and value > NUM_TRAIN_TIMESTEPS:
            raise UsageError(f"{flag} {value}: at most {NUM_TRAIN_TIMESTEPS}, one time group per training timestep")


def add_mrq_form_arguments(parser: argparse.ArgumentParser) -> None:
    """--target / --softmax-mrq / --gelu-mrq: which MRQ forms a calibration searches (calibration/forms.py)."""
    parser.add_argument("--target", choices=list(TARGETS), default=None,
                        help="calibrate with the MRQ forms this deployment target runs best (tqdit_export/targets.py)")
    parser.add_argument("--softmax-mrq", choices=["paper", "saturate"], default=None,
                        help="MRQ form of the post-softmax A of A·V: paper (two regions split by a compare) or "
                             "saturate (a saturating Q/DQ plus Relu(A - r), no compare); default: the target's, "
                             "else paper")
    parser.add_argument("--gelu-mrq", choices=["paper", "shift"], default=None,
                        help="MRQ form of the post-GELU fc2 input: paper (two regions, two fc2 GEMMs) or shift "
                             "(one GEMM over [GELU min, max], the shift folded into the bias); default: the "
                             "target's, else paper")


def mrq_forms(args: argparse.Namespace) -> dict[str, str]:
    """CalibrationConfig's softmax_mrq / gelu_mrq: the flags, else the --target's forms, else the paper's."""
    spec = TARGETS[args.target] if args.target else None
    return {"softmax_mrq": args.softmax_mrq or (spec.softmax_mrq if spec else "paper"),
            "gelu_mrq": args.gelu_mrq or (spec.gelu_mrq if spec else "paper")}


def cmd_sample(args: argparse.Namespace) -> int:
    from .models import resolve_model

    check_counts(args, "num", "steps")
    SampleSettings(args.sampler, args.steps, args.cfg, args.eta, args.cfg_channels)  # refused before any loading
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1 (or leave it out: all at once)")
    if args.out is None and args.save_npz is None:
        raise UsageError("nothing to write: give --out grid.png and/or --save-npz samples.npz")
    for path in (args.out, args.save_npz):
        if path is not None:
            check_output_file(path)
    device = _device(args.device)
    resolved = resolve_model(args.model, device=device)
    cfg = resolved.model.config
    if args.out is not None and cfg.in_channels not in (1, 3):
        raise UsageError(
            f"--out: {resolved.name} makes {cfg.in_channels}-channel latents, not images; decode them with "
            "the model's VAE, or write them with --save-npz"
        )
    backend = open_backend(resolved.model, args.record, args.backend, args.onnx, device)
    pipeline = model_pipeline(resolved, backend, args.cfg_channels)
    cfg_channels = pipeline.spec.cfg_channels
    labels = balanced_labels(args.num, cfg.num_classes, args.classes)
    shape = pipeline.spec.shape
    batch = args.batch_size or args.num
    start = time.perf_counter()
    x = pipeline.sample(labels, seed=args.seed, steps=args.steps, sampler=args.sampler, guidance=args.cfg,
                        eta=args.eta, batch_size=batch, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    calls = args.steps * ((args.num + batch - 1) // batch)
    print(f"sampled {args.num} x {shape} with {args.sampler} {args.steps} steps, cfg {args.cfg}: "
          f"{elapsed:.1f} s ({1000 * elapsed / calls:.1f} ms per denoiser call, batch {batch})")
    meta = {"model": resolved.name, "dataset": resolved.dataset, "sampler": args.sampler, "steps": args.steps,
            "cfg": args.cfg, "seed": args.seed, "batch_size": batch, "backend": backend.name,
            "seconds": round(elapsed, 3), "record": str(args.record) if args.record else None,
            "cfg_channels": cfg_channels}
    if args.save_npz is not None:
        print(f"wrote {save_samples(args.save_npz, x, labels, meta)}")
    if args.out is not None:
        from .eval import save_image_grid

        print(f"wrote {save_image_grid(x, labels, args.out)}")
    return 0


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    Linux's VmHWM starts afresh at exec; getrusage's ru_maxrss does not (a process started
    from a large parent reports the parent's peak), so it is only the fallback.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checkpoint_folder(out: Path) -> Path:
    """Where `tqdit calibrate --out DIR` keeps what an interrupted run finished: DIR.partial beside DIR."""
    return out.with_name(out.name + ".partial")


def cmd_calibrate(args: argparse.Namespace) -> int:
    import shutil
    import signal

    from calibration import heap
    from calibration.calibrate import CalibrationConfig, CalibrationCost
    from calibration.record import RECORD_JSON
    from calibration.workdir import RUN_JSON, WorkFolder

    from .errors import EXIT_INTERRUPTED
    from .models import resolve_model
    from .quant import calibrate_dit, parse_bits

    w_bits, a_bits = parse_bits(args.bits)
    check_counts(args, "groups", "samples_per_group", "rounds", "trajectory_steps")
    check_output_folder(args.out, RECORD_JSON)  # before minutes of calibration, not after
    work = checkpoint_folder(args.out)
    WorkFolder.check_foreign(work)
    if args.resume and not (work / RUN_JSON).is_file():
        raise UsageError(f"--resume: there is no checkpoint to continue at {work}; run without --resume to start")
    if args.cost_json is not None:
        check_output_file(args.cost_json)
    config = CalibrationConfig(weight_bits=w_bits, activation_bits=a_bits, num_groups=args.groups,
                               method=args.method, tgq=not args.no_tgq, mrq=not args.no_mrq, ho=not args.no_ho,
                               rounds=args.rounds, seed=args.seed, **mrq_forms(args))
    device = _device(args.device)
    resolved = resolve_model(args.model, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if (work / RUN_JSON).is_file() and not args.quiet:
        done = len(list((work / "blocks").glob("block-*.safetensors")))
        print(f"resuming from {work} ({done} finished blocks)", file=sys.stderr)
    cost = CalibrationCost()
    heap.manage()  # capture passes give their activations back; the rest keeps glibc's fast heap
    # SIGTERM (a scheduler, `kill`) ends the run as Ctrl-C does: the finished blocks stay in `work`.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    try:
        record = calibrate_dit(resolved.model, config, samples_per_group=args.samples_per_group, cfg_scale=args.cfg,
                               trajectory_steps=args.trajectory_steps, clip_denoised=resolved.pixel_space,
                               exclude=args.exclude, device=device, progress=not args.quiet, work_dir=work,
                               cost=cost)
    except KeyboardInterrupt:
        done = len(list((work / "blocks").glob("block-*.safetensors"))) if work.is_dir() else 0
        print(f"tqdit calibrate: interrupted; no record was written. {done} of {len(cost.blocks) or '?'} blocks "
              f"are kept in {work}: run the same command again (or add --resume) to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    elapsed = time.perf_counter() - start
    record.method.update({"model": resolved.name, "wall_seconds": round(elapsed, 2)})
    record.save(args.out)
    shutil.rmtree(work, ignore_errors=True)  # the record holds everything now
    peak_rss_mb = peak_rss_mib()
    gpu = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.startswith("cuda") else ""
    if args.cost_json is not None:
        cost.extra.update({"model": resolved.name, "bits": args.bits, "groups": config.groups,
                           "samples_per_group": args.samples_per_group, "rounds": config.rounds,
                           "method": config.method, "device": device, "sites": len(record.sites),
                           "wall_seconds": round(elapsed, 3), "torch_threads": torch.get_num_threads()})
        write_json(args.cost_json, cost.to_json(device))
    print(f"calibrated {resolved.name} {args.bits} ({config.method}, tgq={config.tgq}, mrq={config.use_mrq}, "
          f"ho={config.use_ho}, G={config.groups}, {args.samples_per_group} samples/group, "
          f"{len(record.sites)} sites): {elapsed:.1f} s, peak RSS {peak_rss_mb:.0f} MiB{gpu}")
    print(f"wrote {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from calibration.record import CalibrationRecord

    from .models import resolve_model
    from .onnx import export_dit
    from .onnx.manifest import MANIFEST

    check_output_folder(args.out, MANIFEST)
    resolved = resolve_model(args.model)
    record = CalibrationRecord.load(args.record, resolved.model)
    spec = target(args.target)
    note = record_forms_note(record, spec, args.target)
    if note:
        print(f"tqdit export: note: {note}", file=sys.stderr)
    # auto: the target's choice (the CPU target detects VNNI); TensorRT targets keep 8-bit codes
    reduce = {"auto": spec.reduce_range, "on": True, "off": False}[args.reduce_range]
    attention = spec.attention if args.attention is None else args.attention == "int8"
    float_precision = args.float_precision or spec.float_precision
    fused = spec.fused_attention if args.fused_attention is None else args.fused_attention == "on"
    start = time.perf_counter()
    manifest = export_dit(resolved.model, record, args.out, layout=args.layout or spec.layout, fp32=args.fp32,
                          weight_reduce_range=reduce, precision=args.precision, attention=attention,
                          target=args.target, float_precision=float_precision, fused_attention=fused,
                          sampling=resolved.sampling())
    size = sum((Path(args.out) / g["file"]).stat().st_size for g in manifest["graphs"])
    print(f"exported {len(manifest['graphs'])} {manifest['layout']} graph(s)"
          f"{' + fp32' if args.fp32 else ''} ({size / 2**20:.2f} MiB quantized, weights in graph "
          f"{manifest['bits']['weights_dtype']}, {manifest['bits']['weights_in_graph']}-bit codes, float ops "
          f"{manifest['float_precision']}) in "
          f"{time.perf_counter() - start:.1f} s to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on one model: calibrate -> export -> lint -> sample FP32 and INT8 on ORT -> compare.

    The output folder is one artifact folder (marker demo.json): complete, or not written.
    """
    from calibration.calibrate import CalibrationConfig

    from .api import open_pipeline
    from .eval import evaluate_digits, paired_psnr, save_side_by_side
    from .models import resolve_model
    from .onnx import export_dit, lint_file
    from .quant import calibrate_dit, parse_bits

    out = Path(args.out)
    w_bits, a_bits = parse_bits(args.bits)
    check_counts(args, "num", "steps", "samples_per_group")
    check_output_folder(out, DEMO_JSON)
    resolved = resolve_model(args.model)
    if resolved.dataset != "digits":
        raise UsageError(f"--model {args.model}: the demo evaluates digits models; use the step commands otherwise")
    with atomic_folder(out, DEMO_JSON) as tmp:  # printed paths name `out`, where the files will be
        start = time.perf_counter()
        record = calibrate_dit(resolved.model, CalibrationConfig(w_bits, a_bits, seed=args.seed),
                               samples_per_group=args.samples_per_group, clip_denoised=True, progress=not args.quiet)
        record.save(tmp / "record")
        print(f"[1/4] calibrated {args.bits} (TQ-DiT, G={record.time_groups.num_groups}) in "
              f"{time.perf_counter() - start:.1f} s -> {out / 'record'}")
        start = time.perf_counter()
        manifest = export_dit(resolved.model, record, tmp / "onnx", layout="per-group", fp32=True,
                              sampling=resolved.sampling())
        files = [tmp / "onnx" / g["file"] for g in manifest["graphs"]] + [tmp / "onnx" / "fp32.onnx"]
        findings = sum(len(lint_file(f)) for f in files)
        print(f"[2/4] exported {len(files) - 1} per-group Q/DQ graphs + fp32 in {time.perf_counter() - start:.1f} s; "
              f"TensorRT lint: {findings} finding(s)")
        labels = balanced_labels(args.num, resolved.model.config.num_classes)
        rows = {}
        pipelines = {"ORT FP32": open_pipeline(tmp / "onnx", fp32=True), f"ORT {args.bits}": open_pipeline(tmp / "onnx")}
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            x = pipeline.sample(labels, seed=args.seed, steps=args.steps, guidance=args.cfg, progress=not args.quiet)
            ms = 1000 * (time.perf_counter() - start) / args.steps
            rows[name] = {"images": x, "ms_per_step": ms, **evaluate_digits(x, labels, seed=args.seed)}
            print(f"[3/4] sampled {args.num} digits with {name}: {ms:.0f} ms per step (batch {2 * args.num} with CFG)")
        fp, q = rows["ORT FP32"], rows[f"ORT {args.bits}"]
        q["psnr_vs_fp"] = paired_psnr(q["images"], fp["images"])
        grid = save_side_by_side([(name, r["images"], labels) for name, r in rows.items()],
                                 tmp / "fp32_vs_int8.png")
        write_json(tmp / DEMO_JSON,
                   {name: {k: v for k, v in r.items() if k != "images"} for name, r in rows.items()})
    print(f"[4/4] wrote {out / grid.name} and {out / DEMO_JSON}\n")
    print("| backend | FD | FD reference | accuracy | PSNR vs FP32 (dB) | ms per step |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        psnr = f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "—"
        print(f"| {name} | {r['fd']:.3f} | {r['fd_reference']:.3f} | {r['accuracy']:.3f} | {psnr} | "
              f"{r['ms_per_step']:.0f} |")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """checkpoint (+ record) -> export -> lint -> engines; exits ENGINES_MISSING without TensorRT or a GPU."""
    import shlex
    import tempfile

    from calibration.calibrate import CalibrationConfig
    from calibration.record import CalibrationRecord

    from .build import ENGINES_MISSING, build
    from .edge.trt_runtime import BUILD_MANIFEST
    from .models import resolve_model
    from .quant import calibrate_dit, parse_bits

    if args.record is None:  # calibrating: its flags are checked before any output or work
        parse_bits(args.bits)
        check_counts(args, "groups", "samples_per_group", "rounds", "trajectory_steps")
    check_output_folder(args.out, BUILD_MANIFEST)
    check_plugin_choice(args)
    if args.triton is not None:  # its options and folder are refused before any work, too
        from .serving.repository import REPOSITORY_MARKER, check_max_images

        triton_options = repository_options(args)
        check_output_folder(args.triton, REPOSITORY_MARKER)
        # The target's engine profile is known before any work: refuse too many images now.
        check_max_images(triton_options.max_images, target(args.target).max_batch)
    resolved = resolve_model(args.model)
    command = "tqdit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["build"] else ""
    with tempfile.TemporaryDirectory() as scratch:
        if args.record is not None:
            record_dir = args.record
            record = CalibrationRecord.load(record_dir, resolved.model)
        else:
            w_bits, a_bits = parse_bits(args.bits)
            start = time.perf_counter()
            spec = target(args.target)
            record = calibrate_dit(resolved.model, CalibrationConfig(w_bits, a_bits, num_groups=args.groups,
                                                                     rounds=args.rounds, softmax_mrq=spec.softmax_mrq,
                                                                     gelu_mrq=spec.gelu_mrq),
                                   samples_per_group=args.samples_per_group, clip_denoised=resolved.pixel_space,
                                   trajectory_steps=args.trajectory_steps, progress=not args.quiet)
            record.method.update({"model": resolved.name, "wall_seconds": round(time.perf_counter() - start, 2)})
            record_dir = Path(scratch) / "record"
            record.save(record_dir)
            print(f"calibrated {args.bits} (G={args.groups}) in {time.perf_counter() - start:.1f} s")
        info, status = build(resolved.model, resolved.name, record, Path(record_dir), args.out, args.target,
                             layout=args.layout, plugin_library=args.plugin_library, command=command,
                             precision=args.precision, float_precision=args.float_precision,
                             sampling=resolved.sampling())
    onnx_mib = sum(info["sizes_bytes"]["onnx"].values()) / 2**20
    print(f"exported {len(info['sizes_bytes']['onnx'])} {info['layout']} graph(s) ({onnx_mib:.2f} MiB), "
          f"lint findings: {info['lint']['findings']} -> {args.out}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    if status == ENGINES_MISSING:
        if args.triton is not None:
            print(f"tqdit build: --triton {args.triton}: not written, there are no engines to serve (the CPU "
                  f"graphs serve with `tqdit triton-repo --from {args.out}/onnx --out {args.triton}`)",
                  file=sys.stderr)
        print(f"tqdit build: engines not built: {info['reason']}\n"
              f"  the ONNX graphs, lint.json and build.json (status onnx-only) are in {args.out}; rerun on a "
              f"machine with TensorRT and a GPU, e.g. with --record {args.out}/record", file=sys.stderr)
        return status
    print(f"built {len(info['engines'])} engine(s) with TensorRT {info['tensorrt']} on {info['gpu']}")
    if args.triton is not None:
        from .serving.repository import write_repository

        return _report_repository(write_repository(args.out, args.triton, triton_options), args.triton)
    return 0


def check_plugin_choice(args: argparse.Namespace) -> None:
    """Before any work: the plugin layout's C++ library exists (--plugin-library, else
    $TQDIT_TRT_PLUGIN_LIB), and engines meant for Triton are not built with the Python plugin,
    which Triton's C++ TensorRT backend cannot run."""
    from .build import build_layout
    from .edge.trt_runtime import chosen_plugin_library
    from .onnx.manifest import Layout
    from .serving.repository import PLUGIN_FOR_TRITON

    layout = build_layout(args.target, args.layout)
    if layout is not Layout.PLUGIN:
        if args.plugin_library is not None:
            print(f"tqdit build: note: --plugin-library {args.plugin_library} is not used: the {layout.value} "
                  "layout's engines need no plugin", file=sys.stderr)
        return
    if chosen_plugin_library(args.plugin_library) is None and args.triton is not None:
        raise UsageError(f"--triton {args.triton} with --layout plugin and no --plugin-library (the Python "
                         f"plugin): {PLUGIN_FOR_TRITON}")


def add_repository_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a Triton repository, shared by `triton-repo` and `build --triton`."""
    parser.add_argument("--max-images", type=int, default=None,
                        help="images per sampler batch (default 64 on the CPU; TensorRT: half the engines' "
                             "profile maximum, as guidance doubles every batch)")
    parser.add_argument("--sampler-instances", type=int, default=2, help="sampler model instances (default 2)")
    parser.add_argument("--denoiser-instances", type=int, default=1, help="instances per denoiser (default 1)")
    parser.add_argument("--no-dynamic-batching", action="store_true",
                        help="one request per model call (default: Triton's dynamic batcher, 2 ms queue delay)")
    parser.add_argument("--queue-delay-us", type=int, default=2000,
                        help="dynamic batcher's max queue delay in microseconds (default 2000); a denoiser "
                             "pays it at every step of a loop that runs alone")
    parser.add_argument("--sampler-queue-delay-us", type=int, default=None,
                        help="the sampler model's queue delay, paid once per request: a longer one gathers "
                             "more requests into one loop (default: --queue-delay-us)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per CPU denoiser instance (default 0: ORT's, the "
                             "physical cores)")
    parser.add_argument("--cfg-channels", type=int, default=None,
                        help="epsilon channels guidance acts on (default: what the export recorded, 3 for "
                             "facebookresearch/DiT checkpoints, else all)")
    parser.add_argument("--latent", action="store_true",
                        help="a latent model: x0 is not clipped (default: what the export recorded, else pixel "
                             "space for the digits architecture only)")


def repository_options(args: argparse.Namespace):
    from .serving.repository import RepositoryOptions

    return RepositoryOptions(max_images=args.max_images, sampler_instances=args.sampler_instances,
                             denoiser_instances=args.denoiser_instances,
                             dynamic_batching=not args.no_dynamic_batching, queue_delay_us=args.queue_delay_us,
                             sampler_queue_delay_us=args.sampler_queue_delay_us,
                             threads=args.threads, pixel_space=False if args.latent else None,
                             cfg_channels=args.cfg_channels)


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from .serving.repository import REPOSITORY_MARKER, write_repository

    options = repository_options(args)
    check_output_folder(args.out, REPOSITORY_MARKER)
    return _report_repository(write_repository(args.source, args.out, options), args.out)


def _report_repository(info: dict, repo: Path) -> int:
    """What `write_repository` wrote, the server flags it needs, and the config linter's findings."""
    from .serving.repository import backend_config_args, lint_repository

    print(f"wrote a Triton repository ({info['runtime']}, {info['layout']} layout, models "
          f"{', '.join(info['models'])}; up to {info['max_images']} images per request) to {repo}")
    for flag in backend_config_args(repo, info):  # the flags of a repository alone
        print(f"  its engines need the TimeGroupQuantize plugin: start tritonserver with {flag} "
              "(`tqdit serve` adds it)")
    return _lint_report(repo, lint_repository)


def _lint_report(repo: Path, lint) -> int:
    try:
        findings = lint(repo)
    except RuntimeError as err:  # no tritonclient: the repository stands, unchecked
        print(f"tqdit: note: config.pbtxt not checked: {err}", file=sys.stderr)
        return 0
    for f in findings:
        print(f"  {f}", file=sys.stderr)
    print(f"Triton config schema: {'ok' if not findings else f'{len(findings)} finding(s)'}")
    return 1 if findings else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run tritonserver over --repo until SIGINT / SIGTERM, then stop it and wait for it."""
    import signal

    from .serving.server import StartCancelled, TritonServer, make_stub_environment

    if args.setup:
        print(f"stub environment: {make_stub_environment()}")
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, host=args.host,
                          log=args.log or "-", exit_timeout=args.exit_timeout,
                          extra_args=tuple(f"--backend-config={c}" for c in args.backend_config))
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    # SIGHUP too: a closed terminal must stop the server, which runs in its own session. A signal
    # the caller ignores stays ignored (`nohup tqdit serve` keeps serving after a hangup).
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        print(f"tqdit serve: starting {server.install.binary} ({server.install.kind}) over {args.repo}", flush=True)
        try:
            server.start(timeout=args.timeout, should_stop=lambda: stop["signal"] is not None)
        except StartCancelled as done:
            print(f"tqdit serve: {signal.Signals(stop['signal']).name}: {done}")
            return 0
        print(f"tqdit serve: ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics "
              f"{server.metrics_url}/metrics; Ctrl-C stops", flush=True)
        while stop["signal"] is None and server.alive():
            time.sleep(0.2)
        if stop["signal"] is None:
            print(f"tqdit serve: tritonserver exited by itself (status {server.process.returncode})", file=sys.stderr)
            return 1
        status = server.stop()
        print(f"tqdit serve: stopped ({signal.Signals(stop['signal']).name}; tritonserver exit status {status})")
        return 0
    finally:
        server.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from .doctor import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from calibration.record import CalibrationRecord

    from .check import check_export
    from .models import resolve_model

    if args.json is not None:
        check_output_file(args.json)
    resolved = resolve_model(args.model)
    record = CalibrationRecord.load(args.record, resolved.model)
    results = check_export(resolved.model, record, args.onnx, samples=args.samples, tolerance=args.tolerance,
                           clip_denoised=resolved.pixel_space, record_dir=args.record)
    print("| group | rel L2 (ORT vs torch fake-quant) | max abs | mean abs | Polygraphy median check |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r.group} | {r.rel_l2:.2e} | {r.max_abs:.2e} | {r.mean_abs:.2e} | "
              f"{'pass' if r.polygraphy_pass else 'FAIL'} |")
    worst = max(r.rel_l2 for r in results)
    ok = worst <= args.tolerance
    print(f"{'PASS' if ok else 'FAIL'}: worst relative L2 {worst:.2e} (tolerance {args.tolerance:g})")
    if args.json is not None:
        write_json(args.json, {"tolerance": args.tolerance, "pass": ok, "groups": [vars(r) for r in results]})
    return 0 if ok else 1


def cmd_lint(args: argparse.Namespace) -> int:
    from .onnx.lint import lint_file

    errors = 0
    for path in args.files:
        findings = lint_file(path)
        errors += sum(f.severity == "error" for f in findings)
        print(f"{path}: {'ok' if not findings else f'{len(findings)} finding(s)'}")
        for f in findings:
            print(f"  {f}")
    return 1 if errors else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_digits

    if args.json is not None:
        check_output_file(args.json)
    images, labels, meta = load_samples(args.samples)
    if meta.get("dataset") not in (None, "digits"):
        raise UsageError(
            f"--samples {args.samples}: samples of {meta.get('model')} ({meta.get('dataset')}); the bundled "
            "metrics cover the digits models only"
        )
    result = evaluate_digits(images, labels, seed=args.seed)
    result["samples"] = str(args.samples)
    result["sampling"] = meta
    print(f"{'num':>6} {'accuracy':>9} {'FD':>8} {'FD reference (real train vs held-out)':>40}")
    print(f"{result['num']:>6} {result['accuracy']:>9.4f} {result['fd']:>8.3f} {result['fd_reference']:>40.3f}")
    t = result["fd_terms"]  # where the FD comes from: a shifted mean, or a narrower/wider spread
    print(f"FD terms: mean shift {t['mean']:.3f}, feature variance samples {t['trace_samples']:.2f} "
          f"vs held-out {t['trace_heldout']:.2f}, cross {t['cross']:.2f}")
    c = result["class_terms"]  # guidance narrows each class and pushes the classes apart
    if c is not None:
        print(f"class terms: within-class variance {c['within_samples']:.2f} vs held-out {c['within_heldout']:.2f}, "
              f"between-class {c['between_samples']:.2f} vs {c['between_heldout']:.2f}, "
              f"class-mean shift {c['class_mean_shift']:.3f}")
    if args.json is not None:
        print(f"wrote {write_json(args.json, result)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tqdit", description="TQ-DiT quantization and deployment toolchain")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of the one-line error message")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw class-conditional samples from a DiT")
    s.add_argument("--model", default="dit-digits", help="bundled model name or checkpoint path (default dit-digits)")
    s.add_argument("--steps", type=int, default=100, help="sampling steps (default 100)")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="default ddpm")
    s.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale, 1 = off (default 1.5)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0, deterministic)")
    s.add_argument("--cfg-channels", type=int, default=None,
                   help="guide only the first N epsilon channels (default: 3 for facebookresearch/DiT .pt "
                        "checkpoints, as its sampler does; all channels otherwise)")
    s.add_argument("--num", type=int, default=100, help="number of samples, balanced over classes (default 100)")
    s.add_argument("--class", dest="classes", type=int, action="append", help="only this class (repeatable)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: all at once)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    s.add_argument("--out", type=Path, default=None, help="PNG grid, one row per class")
    s.add_argument("--save-npz", type=Path, default=None, help="write samples + labels for `tqdit eval`")
    s.add_argument("--record", type=Path, default=None,
                   help="calibration record folder: sample the quantized model (torch: fake-quant)")
    s.add_argument("--backend", choices=("torch", "ort", "trt"), default="torch",
                   help="torch (FP, or fake-quant with --record), ort (ONNX Runtime over --onnx), "
                        "trt (TensorRT engines built from --onnx; needs TensorRT and a GPU)")
    s.add_argument("--onnx", type=Path, default=None,
                   help="export folder for --backend ort (its Q/DQ graphs with --record, else its fp32 graph)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("calibrate", help="TQ-DiT post-training quantization -> calibration record")
    c.add_argument("--model", default="dit-digits", help="bundled model name or checkpoint path (default dit-digits)")
    c.add_argument("--bits", default="W8A8", help="weight/activation widths: W8A8, W6A6, W4A8, ... (default W8A8)")
    c.add_argument("--groups", type=int, default=10, help="time groups G on [0, 1000) (default 10)")
    c.add_argument("--samples-per-group", type=int, default=32, help="calibration samples per group (default 32)")
    c.add_argument("--method", choices=METHODS, default="tqdit", help="scale search (default tqdit)")
    c.add_argument("--no-tgq", action="store_true", help="one scale set for all timesteps")
    c.add_argument("--no-mrq", action="store_true", help="no two-region quantizers (post-softmax, post-GELU)")
    add_mrq_form_arguments(c)
    c.add_argument("--no-ho", action="store_true", help="unweighted (MSE) search instead of Hessian-guided")
    c.add_argument("--rounds", type=int, default=3, help="alternating weight/activation rounds (default 3)")
    c.add_argument("--exclude", default=None, help="regex of site names to keep in float")
    c.add_argument("--cfg", type=float, default=1.5, help="guidance scale of the calibration trajectories")
    c.add_argument("--trajectory-steps", type=int, default=100, help="DDPM steps of the FP trajectories")
    c.add_argument("--seed", type=int, default=0, help="seed of trajectories and row sampling (default 0)")
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    c.add_argument("--out", type=Path, required=True, help="record folder to write")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--resume", action="store_true",
                   help="continue the interrupted run kept in OUT.partial (rerunning the same command does too; "
                        "with --resume a missing checkpoint is an error)")
    c.add_argument("--cost-json", type=Path, default=None,
                   help="write the run's cost (seconds per phase, group and block; peak memory) as JSON")
    c.set_defaults(func=cmd_calibrate)

    x = sub.add_parser("export", help="calibrated model + record -> Q/DQ ONNX graphs + manifest")
    x.add_argument("--model", default="dit-digits", help="the calibrated model (default dit-digits)")
    x.add_argument("--record", type=Path, required=True, help="calibration record folder")
    x.add_argument("--out", type=Path, required=True, help="export folder to write")
    x.add_argument("--target", choices=list(TARGETS), default="cpu",
                   help="what the graphs are for: sets the layout, attention and weight-code defaults "
                        "(tqdit_export/targets.py; default cpu: ONNX Runtime on this CPU)")
    x.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="per-group (one graph per time group), single (rescale table), plugin (TensorRT "
                        "TimeGroupQuantize plugin); default: the target's")
    x.add_argument("--attention", choices=("int8", "float"), default=None,
                   help="quantize Q·Kᵀ and A·V (int8) or keep them float MatMuls; default: the target's (int8)")
    x.add_argument("--fp32", action="store_true", help="also write the unquantized graph (speed/quality baseline)")
    x.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weight codes for ONNX Runtime on CPUs without VNNI (auto: the target's; "
                        "--target cpu detects VNNI; int8 only)")
    x.add_argument("--precision", choices=("int8", "fp8"), default="int8",
                   help="int8 Q/DQ (default), or fp8: float8e4m3fn Q/DQ at opset 19 over the record's clipping "
                        "ranges, for TensorRT on Ada/Hopper (ONNX Runtime runs it in float on the CPU)")
    x.add_argument("--fused-attention", choices=("on", "off"), default=None,
                   help="TensorRT's fused INT8 attention placement (A as one uniform Q/DQ, a Q/DQ on A·V's output) "
                        "where the head size is 16/32/64 and tokens <= 512, per-group layout; default: on for the "
                        "TensorRT targets, off for cpu")
    x.add_argument("--float-precision", choices=("fp16", "fp32"), default=None,
                   help="type of the non-quantized ops and Q/DQ scales; default: the target's (fp16 for the "
                        "strongly typed TensorRT targets h100, a100, l40s; fp32 for cpu, orin, orin-nano)")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="the whole pipeline on the bundled model, FP32 vs INT8 side by side")
    d.add_argument("--model", default="dit-digits", help="a digits model (default dit-digits)")
    d.add_argument("--bits", default="W8A8", help="default W8A8")
    d.add_argument("--num", type=int, default=100, help="samples per backend (default 100, 10 per class)")
    d.add_argument("--steps", type=int, default=100, help="DDPM steps (default 100)")
    d.add_argument("--cfg", type=float, default=1.5, help="guidance scale (default 1.5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--samples-per-group", type=int, default=32, help="calibration samples per group (default 32)")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    ch = sub.add_parser("check", help="Polygraphy parity: ORT export vs torch fake-quant, per time group")
    ch.add_argument("--model", default="dit-digits", help="the calibrated model (default dit-digits)")
    ch.add_argument("--record", type=Path, required=True, help="calibration record folder")
    ch.add_argument("--onnx", type=Path, required=True, help="export folder (`tqdit export`)")
    ch.add_argument("--samples", type=int, default=8, help="trajectory points per group (x2 with CFG; default 8)")
    ch.add_argument("--tolerance", type=float, default=1e-2, help="largest relative L2 error (default 1e-2)")
    ch.add_argument("--json", type=Path, default=None, help="also write the statistics as JSON")
    ch.set_defaults(func=cmd_check)

    b = sub.add_parser("build", help="checkpoint (+ record) -> export -> lint -> TensorRT engines + build.json (CI)")
    b.add_argument("--model", default="dit-digits", help="bundled model name or checkpoint path (default dit-digits)")
    b.add_argument("--record", type=Path, default=None, help="calibration record (default: calibrate with --bits)")
    b.add_argument("--bits", default="W8A8", help="calibration widths when no --record (default W8A8)")
    b.add_argument("--groups", type=int, default=10, help="time groups when calibrating (default 10)")
    b.add_argument("--samples-per-group", type=int, default=32, help="when calibrating (default 32)")
    b.add_argument("--trajectory-steps", type=int, default=100, help="when calibrating: DDPM steps of the FP "
                   "trajectories (default 100)")
    b.add_argument("--rounds", type=int, default=3, help="when calibrating: weight/activation rounds (default 3)")
    b.add_argument("--target", choices=ENGINE_TARGETS, default="h100",
                   help="layout, MRQ forms, attention and TensorRT network typing defaults: " +
                        "; ".join(f"{k}: {TARGETS[k].description}, {TARGETS[k].layout}" for k in ENGINE_TARGETS) +
                        " (default h100)")
    b.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="override the target's layout")
    b.add_argument("--precision", choices=("int8", "fp8"), default="int8",
                   help="int8 (default) or fp8 (E4M3; targets h100 and l40s only)")
    b.add_argument("--float-precision", choices=("fp16", "fp32"), default=None,
                   help="type of the non-quantized ops; default: fp16 where the network is strongly typed "
                        "(h100, a100, l40s, and every target on TensorRT 11), fp32 on orin/orin-nano with 10.x")
    b.add_argument("--plugin-library", type=Path, default=None,
                   help="libtqdit_trt_plugins.so for the plugin layout, copied into the build (default: "
                        "$TQDIT_TRT_PLUGIN_LIB, else the Python plugin, which Triton cannot run)")
    b.add_argument("--out", type=Path, required=True, help="build folder to write")
    b.add_argument("--triton", type=Path, default=None, metavar="DIR",
                   help="also write a Triton model repository of the engines to DIR (see `tqdit triton-repo`)")
    add_repository_arguments(b)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_build)

    tr = sub.add_parser("triton-repo", help="export or build folder -> Triton Inference Server model repository")
    tr.add_argument("--from", dest="source", type=Path, required=True,
                    help="an export folder (ONNX Runtime on the CPU) or a `tqdit build` folder with engines (TensorRT)")
    tr.add_argument("--out", type=Path, required=True, help="repository folder to write")
    add_repository_arguments(tr)
    tr.set_defaults(func=cmd_triton_repo)

    sv = sub.add_parser("serve", help="run tritonserver over a repository on localhost until Ctrl-C / SIGTERM")
    sv.add_argument("--repo", type=Path, required=True, help="a repository written by `tqdit triton-repo`")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--http-port", type=int, default=8000, help="default 8000")
    sv.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    sv.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (default 8002)")
    sv.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for ready (default 180)")
    sv.add_argument("--exit-timeout", type=int, default=10,
                    help="seconds Triton waits for in-flight requests when stopping (default 10)")
    sv.add_argument("--log", type=Path, default=None, help="write the server's log here (default: this terminal)")
    sv.add_argument("--setup", action="store_true",
                    help="first create the Python environment of the backend stubs (make setup does it)")
    sv.add_argument("--backend-config", action="append", default=[], metavar="BACKEND,KEY=VALUE",
                    help="passed to tritonserver as --backend-config (repeatable); the repository's own "
                         "plugin library (plugin-layout engines) is added to a tensorrt,plugins=... given here")
    sv.set_defaults(func=cmd_serve)

    dr = sub.add_parser("doctor", help="report what this machine can run (torch, ORT, VNNI, GPU, TensorRT, pycuda)")
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    dr.set_defaults(func=cmd_doctor)

    li = sub.add_parser("lint", help="report Q/DQ nodes TensorRT would reject or fail to fuse")
    li.add_argument("files", nargs="+", type=Path, help="ONNX files")
    li.set_defaults(func=cmd_lint)

    e = sub.add_parser("eval", help="class accuracy and Fréchet distance of digits samples")
    e.add_argument("--samples", type=Path, required=True, help=".npz from `tqdit sample --save-npz`")
    e.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    e.add_argument("--seed", type=int, default=0, help="seed of the real-digit draw for the reference FD")
    e.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 done, 1 a failed check, 2 bad input (a message, no traceback), 130 Ctrl-C."""
    args = build_parser().parse_args(argv)
    return run_command(f"tqdit {args.command}", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
