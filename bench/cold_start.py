"""Cold-start benchmark: process start -> first HTTP answer, ours vs a hello-world function.

Run from the repository root:

    .venv/bin/python bench/cold_start.py [--runs 7] [--functions list_flavors,selfcheck_ping]

Every function of serverless.yaml (or the ones named) is started with
`python -m functions_framework --source SRC --target TGT` (default gunicorn server, no --debug)
on a fresh port, against a temporary SQLite database that is migrated once. The time runs
from just before `subprocess.Popen` to the first HTTP status of any kind (a 400/405 still
proves the process is serving). Runs are interleaved round by round, so a slow moment of
the machine affects the baseline and our functions alike. Prints the median per function
and its ratio to the hello-world median.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

START_TIMEOUT_S = 30.0
POLL_TIMEOUT_S = 0.25
HELLO = "hello_world"
HELLO_SOURCE = '''import functions_framework


@functions_framework.http
def hello(request):
    return "ok"
'''
_PATH_PARAM = re.compile(r"\{[^}]+\}")


class StartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    source: Path
    target: str
    method: str
    path: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_targets(only: list[str] | None) -> list[Target]:
    from infra.spec import load_spec

    spec = load_spec()
    names = list(spec.functions)
    if only:
        unknown = [n for n in only if n not in spec.functions]
        if unknown:
            raise SystemExit(f"unknown function(s): {', '.join(unknown)}; known: {', '.join(names)}")
        names = only
    targets = []
    for name in names:
        fn = spec.functions[name]
        http = fn.trigger.http
        if http is not None:
            method, path = http.method, _PATH_PARAM.sub("x", http.path)
        else:
            method, path = "POST", "/"
        targets.append(Target(name, spec.source_path(name), fn.target, method, path))
    return targets


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the process we started (its own session: gunicorn workers go with it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    try:  # leftover gunicorn workers in the group led by our PID, if any
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no stderr)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty stderr)"


def measure_once(target: Target, env: dict[str, str], workdir: Path) -> float:
    """Seconds from just before Popen to the first HTTP status of any kind."""
    port = free_port()
    url = f"http://127.0.0.1:{port}{target.path}"
    cmd = [
        sys.executable, "-m", "functions_framework",
        "--source", str(target.source), "--target", target.target,
        "--port", str(port), "--host", "127.0.0.1",
    ]
    stderr_path = workdir / f"{target.name}.{port}.stderr"
    with open(stderr_path, "wb") as stderr, httpx.Client(timeout=POLL_TIMEOUT_S) as client:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )
        try:
            deadline = started + START_TIMEOUT_S
            while True:
                try:
                    client.request(target.method, url, content=b"" if target.method != "GET" else None)
                    return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise StartError(
                        f"{target.name} exited with code {proc.returncode} before answering.\n"
                        f"command: {' '.join(cmd)}\nstderr tail:\n{_tail(stderr_path)}"
                    )
                if time.perf_counter() > deadline:
                    raise StartError(
                        f"{target.name} did not answer {target.method} {url} within "
                        f"{START_TIMEOUT_S:.0f}s.\nstderr tail:\n{_tail(stderr_path)}"
                    )
                time.sleep(0.002)
        finally:
            _stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="starts per function (default 7)")
    parser.add_argument("--functions", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    only = [n.strip() for n in args.functions.split(",") if n.strip()] or None

    targets = load_targets(only)
    workdir = Path(tempfile.mkdtemp(prefix="troveless-coldstart-"))
    try:
        hello_path = workdir / "hello.py"
        hello_path.write_text(HELLO_SOURCE, encoding="utf-8")
        baseline = Target(HELLO, hello_path, "hello", "GET", "/")

        from functions.core.migrate import upgrade

        data_dir = workdir / "data"
        data_dir.mkdir()
        db_url = f"sqlite:///{data_dir / 'troveless.db'}"
        upgrade(db_url)
        env = {k: v for k, v in os.environ.items() if k not in ("K_SINK", "TROVELESS_BROKER_URL")}
        env.update(TROVELESS_DATA_DIR=str(data_dir), TROVELESS_DATABASE_URL=db_url,
                   PYTHONDONTWRITEBYTECODE="1")

        everything = [baseline, *targets]
        samples: dict[str, list[float]] = {t.name: [] for t in everything}
        failed: dict[str, str] = {}
        print(f"cold start: {len(targets)} function(s) + hello-world, {args.runs} run(s) each, "
              f"python {sys.version.split()[0]}", flush=True)
        for run in range(args.runs):
            for target in everything:
                if target.name in failed:
                    continue
                try:
                    samples[target.name].append(measure_once(target, env, workdir))
                except StartError as exc:
                    failed[target.name] = str(exc)
                    print(f"\nERROR: {exc}\n", file=sys.stderr, flush=True)
            print(f"  round {run + 1}/{args.runs} done", flush=True)

        if HELLO in failed:
            print("the hello-world baseline failed to start; no ratios", file=sys.stderr)
            return 2
        base_ms = statistics.median(samples[HELLO]) * 1000
        width = max(len(t.name) for t in everything)
        print(f"\n{'function':<{width}}  {'median ms':>9}  {'min ms':>7}  {'max ms':>7}  {'ratio':>6}")
        print("-" * (width + 38))
        worst: tuple[float, str] | None = None
        for target in everything:
            if target.name in failed:
                print(f"{target.name:<{width}}  {'FAILED':>9}")
                continue
            values = [s * 1000 for s in samples[target.name]]
            med = statistics.median(values)
            ratio = med / base_ms
            print(f"{target.name:<{width}}  {med:>9.0f}  {min(values):>7.0f}  {max(values):>7.0f}  "
                  f"{ratio:>5.2f}x")
            if target.name != HELLO and (worst is None or ratio > worst[0]):
                worst = (ratio, target.name)
        print()
        if worst is not None:
            print(f"worst ratio: {worst[0]:.2f}x ({worst[1]}) vs hello-world median {base_ms:.0f} ms")
        if failed:
            print(f"failed to start: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
