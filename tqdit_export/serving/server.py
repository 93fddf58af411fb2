"""Start and stop `tritonserver` on localhost for a model repository.

Which binary: $TQDIT_TRITONSERVER when set, else a system Triton (`tritonserver` on PATH or
/opt/tritonserver/bin, with its own backends/), else the one inside the nvidia-pytriton wheel
(installed normally, or by `make setup` unpacked into .venv/tritonserver without its
dependencies: the wheel pins numpy < 2, which the rest of this project does not use). The
wheel's binary needs glibc >= 2.35 and carries only the Python backend; like PyTriton we give
it a backend folder holding the Python backend plus the stub built for this interpreter's
Python version, put a Python environment's bin/ first on PATH (the stub's embedded Python
finds its environment from the `python3` there) and this interpreter's libpython on
LD_LIBRARY_PATH.

That environment is not this venv itself: the wheel's stubs are built against numpy 1.x, and
under numpy 2 their tensors carry wrong bytes (a float tensor read back as other values, an
output of 0 bytes, a BYTES input that kills the stub: seen with tritonserver 2.51 /
nvidia-pytriton 0.7.0, which pins numpy < 2 for this). `make_stub_environment` makes a small
venv beside this one holding only numpy 1.26, whose .pth file then adds this venv's
site-packages (torch, onnxruntime, this package) behind it: extensions built against numpy 2
run on numpy 1.x, the reverse does not hold.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TRITONSERVER_ENV = "TQDIT_TRITONSERVER"
SYSTEM_TRITON = Path("/opt/tritonserver")


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary, the folder of its backends, the folder of its bundled libraries (the
    wheel's), and where it came from ("env", "system", "pytriton-wheel")."""

    binary: Path
    backends: Path
    libs: Path | None
    kind: str


def _wheel_roots() -> list[Path]:
    roots = [Path(sys.prefix) / "tritonserver"]  # `make setup`: pip install --no-deps --target .venv/tritonserver
    try:
        import importlib.util

        found = importlib.util.find_spec("pytriton")
        if found is not None and found.origin:
            roots.insert(0, Path(found.origin).parent.parent)
    except (ImportError, ValueError):
        pass
    return roots


def find_tritonserver() -> TritonInstall:
    """The tritonserver this machine has (see the module docstring), or an error saying how to get one."""
    env = os.environ.get(TRITONSERVER_ENV)
    if env:
        binary = Path(env)
        if not binary.is_file():
            raise FileNotFoundError(f"${TRITONSERVER_ENV}={env}: no such file; point it at a tritonserver binary")
        return TritonInstall(binary, binary.parent.parent / "backends", None, "env")
    system = shutil.which("tritonserver") or (str(SYSTEM_TRITON / "bin" / "tritonserver")
                                              if (SYSTEM_TRITON / "bin" / "tritonserver").is_file() else None)
    if system:
        binary = Path(system).resolve()
        return TritonInstall(binary, binary.parent.parent / "backends", None, "system")
    for root in _wheel_roots():
        binary = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            return TritonInstall(binary, binary.parent.parent / "backends", root / "nvidia_pytriton.libs",
                                 "pytriton-wheel")
    raise FileNotFoundError(
        "no tritonserver found: install Triton (NGC container or /opt/tritonserver), or the binary of the "
        "nvidia-pytriton wheel: `make setup` (pip install --no-deps --target .venv/tritonserver "
        f"nvidia-pytriton==0.7.0), or set ${TRITONSERVER_ENV}")


def _wheel_backends(install: TritonInstall, folder: Path) -> Path:
    """A backend folder for the wheel's binary: the Python backend + the stub of this Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.binary.parent.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"{stub}: the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    target = folder / "backends"
    shutil.copytree(install.backends, target)
    shutil.copy2(stub, target / "python" / "triton_python_backend_stub")
    return target


STUB_NUMPY = "numpy==1.26.4"


def stub_environment_path() -> Path:
    """Where `make_stub_environment` puts the Python environment of the Python-backend stubs."""
    return Path(sys.prefix) / "triton-python"


def make_stub_environment(path: str | Path | None = None) -> Path:
    """Create the stubs' environment (see the module docstring): a venv with numpy 1.26 only and a
    .pth that adds this interpreter's site-packages after its own. Needs pip's registry once."""
    import venv

    path = Path(path) if path else stub_environment_path()
    marker = path / ".tqdit-stub-env"
    if marker.is_file():
        return path
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = path / "bin" / "python3"
    subprocess.run([str(python), "-m", "pip", "install", "-q", STUB_NUMPY], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    # addsitedir (not a plain path line) so the editable install's own .pth files run too.
    (Path(site) / "zz_tqdit_main_environment.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    marker.write_text(STUB_NUMPY + "\n")
    return path


def free_port() -> int:
    """A TCP port free on localhost now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse ports that are taken or given twice, before a server starts: a clear error naming the
    flag, instead of a tritonserver that exits on its bind failure."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ValueError(f"{flag} {port}: the same port as {seen[port]}; give each endpoint its own port")
        seen[port] = flag
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no obstacle
            try:
                s.bind((host, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise ValueError(f"{flag} {port}: {host}:{port} is in use; another server holds it: stop it "
                                     "or pick another port") from err
                raise ValueError(f"{flag} {port} on --host {host}: cannot listen there "
                                 f"({err.strerror or err}); give an address of this machine") from err


# The sampler answers each request through its response sender and returns None from execute(): the
# Python backend takes that from non-decoupled models since Triton 24.06 (server 2.47,
# triton-inference-server/python_backend#364). An older server would leave every request unanswered.
MIN_TRITON_VERSION = (2, 47)


def check_server_version(version: str | None, binary: str | Path) -> None:
    """Refuse a tritonserver older than MIN_TRITON_VERSION (its /v2 `version`, e.g. "2.51.0")."""
    try:
        numbers = tuple(int(p) for p in str(version).split(".")[:2])
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) < 2:
        raise RuntimeError(f"tritonserver {binary} reports version {version!r}, not MAJOR.MINOR[.PATCH]; tqdit serve "
                           f"needs {'.'.join(map(str, MIN_TRITON_VERSION))} (Triton 24.06) or newer")
    if numbers < MIN_TRITON_VERSION:
        raise RuntimeError(f"tritonserver {binary} is version {version}: its Python backend cannot answer through "
                           "response senders in a non-decoupled model, as tqdit_sampler does, so every request "
                           f"would go unanswered; use {'.'.join(map(str, MIN_TRITON_VERSION))} (Triton 24.06) or "
                           f"newer (${TRITONSERVER_ENV}, a system Triton, or `make setup`'s)")


class StartCancelled(Exception):
    """The server was asked to stop before it was ready (it has been stopped)."""


SHM_DIR = Path("/dev/shm")
SHM_PREFIX_FLAG = "--backend-config=python,shm-region-prefix-name"
# The same setting given to every backend at once (tritonserver's global --backend-config form)
SHM_PREFIX_FLAGS = (SHM_PREFIX_FLAG, "--backend-config=shm-region-prefix-name")


class TritonServer:
    """tritonserver over `repo` on `host` (default 127.0.0.1) and the given ports; a context manager.

    `start` returns once the server is ready (every model loaded) or raises with the end of its
    log; `stop` sends SIGTERM (Triton waits for in-flight requests, up to `exit_timeout` s) and
    kills it after that. `log` (default: a temporary file; "-": this process's own output) collects the server's output.
    """

    def __init__(self, repo: str | Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 host: str = "127.0.0.1", log: str | Path | None = None, install: TritonInstall | None = None,
                 exit_timeout: int = 10, extra_args: tuple[str, ...] = (), stub_env: str | Path | None = None) -> None:
        from .repository import backend_config_args, read_repository

        marker = read_repository(repo, verify=True)  # a clear error before any process starts, for a changed file too
        self.repo = Path(repo).resolve()
        if any(c.isspace() for c in str(self.repo)):
            # The Python backend starts its stubs with a command line split on spaces: each stub then
            # dies parsing a piece of the path as a number (std::invalid_argument: stol), and the
            # server never becomes ready.
            raise ValueError(f"--repo {self.repo}: Triton's Python backend cannot load models from a path with "
                             "spaces; move or copy the repository to a path without them")
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.install = install or find_tritonserver()
        self.exit_timeout = exit_timeout
        self.extra_args = tuple(backend_config_args(self.repo, marker, tuple(extra_args)))  # + its plugins
        self.stub_env = Path(stub_env) if stub_env else stub_environment_path()
        if not (self.stub_env / "bin" / "python3").is_file():
            raise FileNotFoundError(f"{self.stub_env}: no Python environment for Triton's Python-backend stubs; "
                                    "create it with `make setup` or `tqdit serve --setup`")
        self._scratch = tempfile.TemporaryDirectory(prefix="tqdit-triton-")
        self.inherit_output = log == "-"  # the server writes to this process's stdout/stderr
        self.log_path = Path(log) if log and log != "-" else Path(self._scratch.name) / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self._stopped = False  # stop() has killed this process's group and cleaned up after it
        self.version: str | None = None  # what the server reports at /v2 once it answers as ours
        # Passed as --id and read back from /v2: the readiness check answers for this server only,
        # not for another one that took the port between the port check and tritonserver's bind.
        self.server_id = f"tqdit-{uuid.uuid4().hex[:12]}"
        # The Python backend's shared-memory regions (/dev/shm, 1 MiB and up each) outlive a server that
        # is killed; under a prefix of this server's own, stop() removes what it left. A prefix the user
        # chose (--backend-config python,shm-region-prefix-name=...) may be shared: left to them.
        user_prefix = any(a.startswith(SHM_PREFIX_FLAGS) for a in self.extra_args)
        self.shm_prefix = None if user_prefix else f"{self.server_id}_"

    @property
    def http_url(self) -> str:
        return f"{self._url_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._url_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self._url_host}:{self.metrics_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in a URL is bracketed

    def command(self, backends: Path) -> list[str]:
        return [str(self.install.binary), "--model-repository", str(self.repo), "--backend-directory", str(backends),
                "--http-address", self.host, "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
                "--exit-timeout-secs", str(self.exit_timeout), "--log-verbose", "0", "--id", self.server_id,
                *([f"{SHM_PREFIX_FLAG}={self.shm_prefix}"] if self.shm_prefix else []), *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub embeds libpython: this interpreter's, and its environment through bin/python3 on PATH.
        env["PATH"] = f"{self.stub_env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [p for p in (sysconfig.get_config_var("LIBDIR"), self.install.libs) if p]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in libs)
        return env

    def start(self, timeout: float = 180.0, should_stop: Callable[[], bool] | None = None) -> "TritonServer":
        """Start the server and wait until it is ready, at most `timeout` seconds (default 180).
        `should_stop()` true while it loads (e.g. a signal came): stop it and raise StartCancelled."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this server is already running")
        check_ports_free(self.host, {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                                     "--metrics-port": self.metrics_port})
        backends = self.install.backends
        if self.install.kind == "pytriton-wheel":
            backends = Path(self._scratch.name) / "backends"
            if not backends.exists():
                _wheel_backends(self.install, Path(self._scratch.name))
        log = None if self.inherit_output else open(self.log_path, "ab")
        try:
            # Its own process group: a Ctrl-C in the terminal reaches `tqdit serve`, which stops it in order.
            self._stopped = False
            self.process = subprocess.Popen(self.command(backends), stdout=log, stderr=subprocess.STDOUT if log else None,
                                            stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True)
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # its stubs and shared memory go too
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode} before it was "
                                   f"ready; {self.where_the_log_is()}")
            if should_stop is not None and should_stop():
                status = self.stop()
                raise StartCancelled(f"stopped while its models loaded (tritonserver exit status {status})")
            if self.ready():  # ours: ready() reads this server's --id back (and its version)
                try:
                    check_server_version(self.version, self.install.binary)
                except RuntimeError:
                    self.stop()
                    raise
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"tritonserver was not ready within {timeout:.0f} s; {self.where_the_log_is()}")

    def where_the_log_is(self) -> str:
        """Where to read why it failed: the end of its log file, or its output above (`log="-"`)."""
        if self.inherit_output:
            return "see its output above"
        return f"the end of its log ({self.log_path}):\n{self.log_tail()}"

    def ready(self) -> bool:
        """Whether this server (its --id at /v2) answers /v2/health/ready with 200 (every model loaded);
        keeps the version /v2 reports in `version`."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=2) as r:
                metadata = json.loads(r.read())
                if metadata.get("name") != self.server_id:
                    return False
                self.version = metadata.get("version")
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait up to exit_timeout + 5 s, then SIGKILL; returns the exit status (None: not started).
        Once done, a second call (close() after a failed start) only returns the status: the group's
        id may belong to another process by then."""
        if self.process is None:
            return None
        if self._stopped:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.exit_timeout + 5)
            except subprocess.TimeoutExpired:
                pass
        # Whatever of its group is left (the server past its timeout, stubs of a server that died) goes too.
        self._kill_group()
        self.process.wait()
        self._remove_shared_memory()
        self._stopped = True
        return self.process.returncode

    def shared_memory_regions(self) -> list[Path]:
        """This server's Python-backend regions in /dev/shm (empty when the prefix is the user's)."""
        if self.shm_prefix is None or not SHM_DIR.is_dir():
            return []
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def _remove_shared_memory(self) -> None:
        """Unlink the regions a server that did not exit cleanly left (a clean exit leaves none);
        the memory is freed once the last stub has unmapped it."""
        for region in self.shared_memory_regions():
            try:
                region.unlink()
            except OSError:
                pass

    def _kill_group(self) -> None:
        """SIGKILL the server and its backend stubs (its own process group), not the server alone."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            if self.process.poll() is None:
                self.process.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss_mib(self) -> float:
        """Resident memory of the server and its backend stubs (its process group) in MiB (Linux)."""
        if not self.alive():
            return 0.0
        total = 0
        pgid = os.getpgid(self.process.pid)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != pgid:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ValueError, ProcessLookupError):
                continue
        return total / 1024

    def close(self) -> None:
        self.stop()
        self._scratch.cleanup()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
