"""Load on a real Triton server: the bundled model on the CPU (ONNX Runtime INT8 denoisers behind the
BLS sampler), N concurrent clients on loopback, with and without dynamic batching.

    python benchmarks/serve_load.py                    # 4 clients x 8 requests x 4 images, DDPM 50 steps
    python benchmarks/serve_load.py --clients 8 --requests 4 --protocol grpc

For each repository (dynamic batching on, then off): start tritonserver, warm up (--warmup
rounds of every client sending one request at once, so the batches the load will form have been
run and their memory allocated), take the server's RSS (tritonserver + its Python-backend
stubs), run the clients in two halves (each sends its requests one after another; bounded by
--requests and --max-seconds) taking the RSS after each half, stop the server. Growth past
warm-up shows as the RSS after the second half above the RSS after the first. Reports requests/s, images/s, latency p50/p95/p99 and errors, and checks one
served request against the API's draw of the same seed (bit for bit). Writes
benchmarks/results/serve_load.{json,md}. Run alone on the machine: figures are wall-clock.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from tqdit_export.api import open_pipeline
from tqdit_export.cli import main as tqdit
from tqdit_export.hardware import cpu_description
from tqdit_export.io import atomic_output, write_json
from tqdit_export.serving.repository import RepositoryOptions, write_repository
from tqdit_export.serving.server import TritonServer, find_tritonserver, free_port

RESULTS = Path(__file__).resolve().parent / "results"


def make_export(folder: Path, groups: int) -> Path:
    """The bundled model, W8A8 TQ-DiT with the CPU target's MRQ forms (a short search: 4 samples per
    group, 1 round; the speed does not depend on how well the scales were searched), per-group layout."""
    record, export = folder / "record", folder / "onnx"
    assert tqdit(["calibrate", "--model", "dit-digits", "--target", "cpu", "--groups",
                  str(groups), "--samples-per-group", "4", "--trajectory-steps", "20", "--rounds", "1", "--out",
                  str(record), "--quiet", "--device", "cpu"]) == 0
    assert tqdit(["export", "--model", "dit-digits", "--record", str(record), "--target", "cpu",
                  "--out", str(export)]) == 0
    return export


def _client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def _inputs(module, labels: list[int], seed: int, steps: int) -> list:
    n = len(labels)
    arrays = [("class_label", np.asarray(labels, dtype=np.int64).reshape(n, 1), "INT64"),
              ("seed", np.full((n, 1), seed, dtype=np.int64), "INT64"),
              ("steps", np.full((n, 1), steps, dtype=np.int32), "INT32")]
    out = []
    for name, a, dtype in arrays:
        i = module.InferInput(name, list(a.shape), dtype)
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def _client(module, url: str, client: int, requests: range, args: argparse.Namespace,
            deadline: float) -> list[tuple[float, str | None]]:
    """One client: its requests (numbered `requests`) one after another; (latency s, error or None) each."""
    results = []
    kwargs = {"network_timeout": 600.0} if module.__name__.endswith("http") else {}
    with module.InferenceServerClient(url, **kwargs) as c:
        for r in requests:
            if time.monotonic() > deadline:
                break
            labels = [(client + r + k) % 10 for k in range(args.images)]
            start = time.perf_counter()
            try:
                out = c.infer("tqdit_sampler", _inputs(module, labels, seed=1000 * client + r, steps=args.steps),
                              outputs=[module.InferRequestedOutput("images")])
                ok = out.as_numpy("images").shape == (args.images, 8, 8, 1)
                results.append((time.perf_counter() - start, None if ok else "wrong output shape"))
            except Exception as err:  # noqa: BLE001 - counted, reported
                results.append((time.perf_counter() - start, str(err)[:200]))
    return results


def run_config(export: Path, name: str, options: RepositoryOptions, args: argparse.Namespace, scratch: Path) -> dict:
    repo = scratch / f"repo_{name.replace(' ', '_')}"  # no spaces: see TritonServer
    write_repository(export, repo, options)
    module = _client_module(args.protocol)
    with TritonServer(repo, free_port(), free_port(), free_port(), exit_timeout=5) as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        # Warm-up: every time group's session runs once, and one request is checked against the API.
        with module.InferenceServerClient(url) as c:
            served = c.infer("tqdit_sampler", _inputs(module, [3, 1], seed=5, steps=args.steps)).as_numpy("samples")
        with urllib.request.urlopen(f"http://{server.http_url}/v2") as r:
            version = json.loads(r.read())["version"]
        exact = bool(np.array_equal(served, open_pipeline(export).sample([3, 1], seed=5, steps=args.steps)))
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            def load(requests: range, deadline: float) -> list[tuple[float, str | None]]:
                per_client = pool.map(lambda i: _client(module, url, i, requests, args, deadline), range(args.clients))
                return [r for rs in per_client for r in rs]

            warmup = load(range(args.requests, args.requests + args.warmup),  # seeds the load does not use
                          time.monotonic() + args.max_seconds)
            rss = [server.rss_mib()]
            deadline = time.monotonic() + args.max_seconds
            half = (args.requests + 1) // 2
            results = []
            start = time.perf_counter()
            for requests in (range(half), range(half, args.requests)):
                results += load(requests, deadline)
                rss.append(server.rss_mib())
            wall = time.perf_counter() - start
    results += [(lat, f"warm-up: {err}") for lat, err in warmup if err is not None]
    ok = [lat for lat, err in results if err is None]
    errors = [err for _, err in results if err is not None]
    lat_ms = np.array(ok) * 1000 if ok else np.array([np.nan])
    return {"config": name, "dynamic_batching": options.dynamic_batching, "sampler_instances": options.sampler_instances,
            "denoiser_instances": options.denoiser_instances, "queue_delay_us": options.queue_delay_us,
            "requests": len(results), "errors": len(errors), "first_errors": errors[:3],
            "wall_s": round(wall, 2), "requests_per_s": round(len(ok) / wall, 3),
            "images_per_s": round(len(ok) * args.images / wall, 2),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 1), "p95_ms": round(float(np.percentile(lat_ms, 95)), 1),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
            "rss_before_mib": round(rss[0], 1), "rss_half_mib": round(rss[1], 1), "rss_after_mib": round(rss[2], 1),
            "served_equals_api": exact, "server_version": version}


def write_markdown(path: Path, data: dict) -> None:
    m = data["machine"]
    s = data["settings"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu"]["flags"].items())
    lines = [
        "# Serving load: Triton over the bundled model on the CPU", "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['cpu']['name']}, {m['cores']} cores, CPU flags: {flags}; tritonserver {m['tritonserver']}, "
        f"{m['python']}  ",
        f"Load: {s['clients']} concurrent clients on loopback ({s['protocol']}), each sending up to {s['requests']} "
        f"requests one after another (at most {s['max_seconds']} s), {s['images']} images per request "
        f"(one class each), DDPM {s['steps']} steps, guidance 1.5; the bundled dit-digits, W8A8 per-group INT8 graphs "
        f"({s['groups']} time groups) on ONNX Runtime in Python-backend denoisers, the BLS sampler with "
        f"{data['rows'][0]['sampler_instances']} instances. Warm-up: {s['warmup']} round(s) of every client sending one "
        "request at once, before the RSS 'before'; the load runs in two halves, the RSS taken after each.",
        "",
        "| config | requests | errors | wall s | requests/s | images/s | p50 ms | p95 ms | p99 ms | "
        "server RSS after warm-up (MiB) | after half the load | after all | served = API (bit for bit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['config']} | {r['requests']} | {r['errors']} | {r['wall_s']} | {r['requests_per_s']} | "
                     f"{r['images_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['rss_before_mib']} | "
                     f"{r['rss_half_mib']} | {r['rss_after_mib']} | {'yes' if r['served_equals_api'] else 'NO'} |")
    lines.append("")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--requests", type=int, default=8, help="requests per client (default 8)")
    p.add_argument("--images", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--steps", type=int, default=50, help="DDPM steps (default 50)")
    p.add_argument("--groups", type=int, default=10, help="time groups of the export (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds, every client at once (default 1)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="no new request after this (default 300)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--export", type=Path, default=None, help="an export folder to serve (default: make one)")
    p.add_argument("--out", type=Path, default=RESULTS / "serve_load", help="results path without suffix")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 64:
        raise SystemExit("--clients: 1..64 (loopback load on this machine)")
    command = "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        export = args.export or make_export(scratch, args.groups)
        configs = [("dynamic batching", RepositoryOptions(dynamic_batching=True)),
                   ("no dynamic batching", RepositoryOptions(dynamic_batching=False))]
        rows = []
        for name, options in configs:
            rows.append(run_config(export, name, options, args, scratch))
            if len(rows) > 1:
                rows[-1].pop("server_version")
            print(json.dumps(rows[-1]), flush=True)
    import importlib.metadata

    data = {"command": command.strip(),
            "machine": {"cpu": cpu_description(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "tritonserver": f"{rows[0].pop('server_version')} ({find_tritonserver().kind})",
                        "tritonclient": importlib.metadata.version("tritonclient")},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows}
    write_json(args.out.with_suffix(".json"), data)
    write_markdown(args.out.with_suffix(".md"), data)
    print(Path(args.out.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
