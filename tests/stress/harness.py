"""Shared helpers of the reliability tests (tests/test_reliability.py) and their long versions
(tests/stress/): a real ``infomax serve`` process on 127.0.0.1 that can be killed with SIGKILL
and restarted, index folders to serve, unique test images, and memory readings from /proc.

Nothing here is mocked: the server is the console script a user runs, the index folder is written
by ``infomax.index.EmbeddingIndex`` and ``infomax.imagestore.ImageStore``, the artifact by
``DeepInfoMax.export`` (random weights: no training needed).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:  # `import conftest` / `import hostile` from any entry point
    sys.path.insert(0, str(TESTS_DIR))

API_KEY_HEADER = "X-API-Key"


# ----------------------------------------------------------------------------- artifacts and indexes


def make_artifact(path: Path, *, z_dim: int = 32, seed: int = 0) -> Path:
    """A real serving artifact of a random-init encoder (tests/conftest.py's helper)."""
    from conftest import make_artifact as _make

    return _make(Path(path), z_dim=z_dim, seed=seed)


def data_dir() -> Path:
    """The shared data folder with CIFAR-10 in it. Missing data is an error naming the folder, not
    a reason to index random pictures: the harness measures the product on real images."""
    path = Path(os.environ.get("INFOMAX_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 not found: no cifar-10-batches-py/ in {path}; set INFOMAX_DATA_DIR to the shared data folder"
        )
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG")
    return buf.getvalue()


def unique_png(seed: int, size: int = 32) -> bytes:
    """A random RGB picture, different for every seed (so its top-1 search hit is itself)."""
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_index(folder: Path, artifact: Path, n: int = 200) -> dict:
    """An index folder bound to ``artifact`` holding ``n`` items (ids 0..n-1) with their PNGs: the
    first CIFAR-10 test images (missing data fails, naming the folder)."""
    from infomax.artifact import load_encoder
    from infomax.imagestore import ImageStore
    from infomax.index import EmbeddingIndex

    enc = load_encoder(artifact)
    from infomax.data import load_cifar10

    images, labels = load_cifar10(data_dir(), "test")
    images, labels = images[:n], labels[:n].tolist()
    pngs = [png_bytes(t.permute(1, 2, 0).numpy()) for t in images]
    sources = [f"cifar10:test:{i}" for i in range(n)]
    import torch
    from PIL import Image

    pixels = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(p)).convert("RGB"))).permute(2, 0, 1) for p in pngs])
    index = EmbeddingIndex.create(enc.z_dim, path=folder, artifact={"id": enc.id, "path": str(artifact), "z_dim": enc.z_dim})
    store = ImageStore(folder)
    try:
        store.put_many((i, pngs[i], "image/png") for i in range(n))
        index.add(
            enc.embed(pixels).numpy(),
            ids=np.arange(n),
            metadata=[{"source": sources[i], "label": int(labels[i])} for i in range(n)],
        )
        index.save()
    finally:
        index.close()
        store.close()
    return {"folder": Path(folder), "pngs": pngs, "model": enc.id, "z_dim": enc.z_dim}


def copy_index(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ----------------------------------------------------------------------------- /proc readings


def proc_status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS: resident now; VmHWM: peak resident)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def infomax_command() -> list[str]:
    """The ``infomax`` console script of this interpreter's environment (``python -m infomax.cli``
    where it is not installed)."""
    script = Path(sys.executable).parent / "infomax"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "infomax.cli"]


def infomax_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """``infomax ARGS`` in this process, through the console script's own ``main``: its exit code
    (argparse's 2 too) and what it prints to stdout and stderr (Python-level streams), without the
    ~10 s a new interpreter spends importing torch and Lightning."""
    import contextlib

    from infomax.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["infomax", *args], rc, out.getvalue(), err.getvalue())


# ----------------------------------------------------------------------------- the server process


class ServerProcess:
    """A real ``infomax serve --model ARTIFACT --index INDEX`` on 127.0.0.1 and a free port.

    ``with ServerProcess(...) as srv:`` starts it and waits for /readyz; ``srv.kill9()`` sends
    SIGKILL (no clean-up of any kind runs in the server); ``srv.restart()`` starts it again on the
    same port and folder. Everything the process writes to stdout and stderr goes to ``log_path``
    (appended across restarts), read back with ``srv.log()``.
    """

    def __init__(
        self,
        artifact: Path,
        index: Path,
        log_path: Path,
        *,
        args: list[str] = (),
        api_key: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.artifact, self.index, self.log_path = Path(artifact), Path(index), Path(log_path)
        self.args = list(args)
        self.api_key = api_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
        if api_key is not None:
            self.env["INFOMAX_API_KEY"] = api_key  # the environment, as the docs advise (not argv)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.ready_s: float | None = None  # seconds from spawn to a 200 from /readyz, last start

    # -- lifecycle

    def command(self) -> list[str]:
        return [
            *infomax_command(),
            "serve",
            "--model",
            str(self.artifact),
            "--index",
            str(self.index),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> subprocess.Popen:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        self.starts += 1
        return self.proc

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infomax serve exited with {self.proc.returncode} before it was ready:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    self.ready_s = time.monotonic() - self._t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"infomax serve not ready after {timeout} s:\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, then reap it: the port is free again when this returns."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def restart(self, timeout: float = 120.0) -> ServerProcess:
        self.kill9()
        return self.start(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL if it hangs. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- observation

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmHWM")

    def headers(self) -> dict[str, str]:
        return {API_KEY_HEADER: self.api_key} if self.api_key else {}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60.0), headers=self.headers(), **kw)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def machine() -> str:
    """One line: CPU model and count (lscpu), for the figures."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", "?").strip()
        cpus = fields.get("CPU(s)", "?").strip()
        return f"{model}, {cpus} CPUs"
    except (OSError, subprocess.SubprocessError):
        return f"{os.cpu_count()} CPUs"
