"""Manual check of serve.backend: ray_serve: tests/serving/test_serve.py's whole flow (two
versions answering differently, the task's name following promoted.json, a third version made
after the start loaded on its first request, streaming, capture) on Ray Serve LLM with 2
replicas (a local Ray with 3 CPUs). Not in CI: the start alone takes minutes on 2 cores.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/ray_serve_check.py
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "serving")]

import serve_helpers  # noqa: E402
import test_serve  # noqa: E402


def ray_config(run_dir, **sections):
    sections["serve"] = {**sections.get("serve", {}), "backend": "ray_serve", "replicas": 2}
    sections["ray"] = {"num_cpus": 3}  # an engine CPU per replica, one for Serve's ingress
    return serve_helpers.serve_config(run_dir, **sections)


if __name__ == "__main__":
    test_serve.serve_config = ray_config  # the test's config, on the other backend
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ray-serve-check-") as tmp:
        test_serve.test_serve_two_versions_capture_and_live_promotion(Path(tmp))
    print(f"PASSED in {time.perf_counter() - t0:.0f}s")
