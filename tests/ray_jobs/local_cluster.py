"""A real two-node Ray cluster on 127.0.0.1 for the Jobs API tests: `ray start --head` with the
dashboard (the Jobs API lives there) plus one worker node, 1 CPU each, every port chosen free.

Each node runs `ray start --block` in its own process group under a private --temp-dir, so the
cluster is stopped by signalling exactly the processes this fixture started (never `ray stop`,
which would also stop the Ray of every other test on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class LocalCluster:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, args: list[str], log_name: str, **env_vars: str) -> None:
        log = self.temp_dir / log_name
        self.logs.append(log)
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # no Serve here: stop at once
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env_vars)
        env.pop("RAY_ADDRESS", None)
        self.procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True))

    def _node_ports(self) -> list[str]:
        agent, grpc, runtime_env, metrics, manager, objects = free_ports(6)
        return ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                str(grpc), "--runtime-env-agent-port", str(runtime_env),
                "--metrics-export-port", str(metrics), "--node-manager-port", str(manager),
                "--object-manager-port", str(objects)]

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        # Token authentication, as Ray 2.60 clusters default to: every node, the probe, the
        # job drivers and the Jobs API client (ray_jobs.jobs) use ~/.ray/auth_token. Set
        # explicitly, so the result does not depend on whether another test made that file.
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True,
                       capture_output=True, env=dict(os.environ, RAY_AUTH_MODE="token"))
        client_port = free_ports(1)[0]
        self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                     "--num-cpus", "1", "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(client_port),
                     "--temp-dir", str(self.temp_dir), *self._node_ports()], "head.log",
                    RAY_AUTH_MODE="token")
        self._wait_http(timeout_s)
        self._start(["--address", self.gcs_address, "--node-ip-address", "127.0.0.1",
                     "--num-cpus", "1", *self._node_ports()], "worker.log",
                    RAY_AUTH_MODE="token")
        self._wait_nodes(2, timeout_s)
        return self

    def _check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                raise RuntimeError(f"ray start exited ({p.returncode}):\n{log.read_text()[-3000:]}")

    def _wait_http(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (401 when token authentication is on: the default)
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dashboard at {self.address} not up after {timeout_s}s")

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        """Ask the GCS (as the Jobs API would, with the cluster's auth token) for alive nodes."""
        script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                  "print(sum(x['Alive'] for x in ray.nodes()))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                out = subprocess.run([sys.executable, "-c", script, self.gcs_address],
                                     capture_output=True, text=True, timeout=60,
                                     env=dict(os.environ, RAY_AUTH_MODE="token"))
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0 and int(out.stdout.split()[-1]) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"{n} nodes not alive after {timeout_s}s")

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it shuts its node down), then its process group."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stragglers of this node only
            except ProcessLookupError:
                pass
        self._kill_leftovers()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Any process still naming this cluster's private temp dir (raylet, GCS, workers)."""
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or ()):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue


def start_cluster() -> LocalCluster:
    # A short path: Ray's unix sockets live under --temp-dir and paths are limited to 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="dray", dir="/tmp"))
    gcs, dash = free_ports(2)
    cluster = LocalCluster(temp, gcs, dash)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
