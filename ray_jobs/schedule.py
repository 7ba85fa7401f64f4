"""Scheduled refreshes: Kubernetes manifests, or a small scheduler for a standing Ray cluster.

- `raycronjob.yaml`: a KubeRay RayCronJob (KubeRay >= 1.6, feature gate RayCronJob=true). Each
  tick creates a RayJob that brings up a fresh Ray cluster from the image, runs
  `distill refresh <config>` and shuts the cluster down.
- `cronjob.yaml`: a plain batch/v1 CronJob for clusters without that feature: a small pod runs
  `distill submit --refresh` against a standing Ray cluster's Jobs API.
- `run_scheduler`: the same without Kubernetes: a loop that sleeps until the next cron time
  and submits; the submission id carries the fire time, so a restarted scheduler (or two of
  them) never starts the same refresh twice.
"""

from __future__ import annotations

import re
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from distill.core.config import RunConfig
from ray_jobs.cron import Cron


def _k8s_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "distill"


def raycronjob(cfg: RunConfig, cron: str, config_in_image: str, image: str,
               ray_version: str, workers: int = 1, time_zone: str | None = None) -> dict[str, Any]:
    """A RayCronJob whose jobTemplate is a RayJob spec running `distill refresh`."""
    Cron.parse(cron)
    container = {"image": image, "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}
    spec: dict[str, Any] = {
        "schedule": cron,
        "concurrencyPolicy": "Forbid",  # one refresh at a time: they share the run dir
        "jobTemplate": {
            # attach every stage to the RayJob's cluster instead of starting a local Ray
            "entrypoint": shlex.join(["distill", "refresh", config_in_image, "--set",
                                      "ray.address=auto", "--set", "ray.num_cpus=null"]),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": {
                "rayVersion": ray_version,
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                    "containers": [{"name": "ray-head", **container}]}}},
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": workers, "minReplicas": workers,
                    "maxReplicas": workers, "rayStartParams": {},
                    "template": {"spec": {"containers": [{"name": "ray-worker", **container}]}},
                }],
            },
        },
    }
    if time_zone:
        spec["timeZone"] = time_zone
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
            "metadata": {"name": f"distill-refresh-{_k8s_name(cfg.run_name)}"}, "spec": spec}


def cronjob(cfg: RunConfig, cron: str, config_in_image: str, image: str, address: str,
            time_zone: str | None = None) -> dict[str, Any]:
    """A plain CronJob: a one-shot pod submits the refresh to a standing Ray cluster."""
    Cron.parse(cron)
    command = ["distill", "submit", config_in_image, "--refresh", "--address", address]
    spec: dict[str, Any] = {
        "schedule": cron,
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "submit", "image": image, "command": command,
                            "env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
                                "name": "ray-auth-token", "key": "token", "optional": True}}}]}],
        }}}},
    }
    if time_zone:
        spec["timeZone"] = time_zone
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": f"distill-submit-{_k8s_name(cfg.run_name)}"}, "spec": spec}


def write_manifests(cfg: RunConfig, cron: str, out: Path, *, config_in_image: str, image: str,
                    address: str, ray_version: str, workers: int = 1,
                    time_zone: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    docs = {
        "raycronjob.yaml": raycronjob(cfg, cron, config_in_image, image, ray_version, workers,
                                      time_zone),
        "cronjob.yaml": cronjob(cfg, cron, config_in_image, image, address, time_zone),
    }
    paths = []
    for name, doc in docs.items():
        path = out / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    return paths


# --- the built-in scheduler ------------------------------------------------------------------


def fire_trigger(t: datetime) -> str:
    """The trigger part of a scheduled submission id: the fire time, to the minute."""
    return t.strftime("%Y%m%dT%H%MZ")


def run_scheduler(cron: str, fire: Callable[[datetime], Any], *, max_fires: int | None = None,
                  until: datetime | None = None,
                  now: Callable[[], datetime] = lambda: datetime.now(timezone.utc).replace(
                      tzinfo=None),
                  sleep: Callable[[float], None] = time.sleep,
                  log: Callable[[str], None] = print) -> int:
    """Sleep until each cron time (UTC) and call `fire(time)`; returns how many fired.

    A fire that raises is logged and the loop goes on: the next tick tries again, and the
    refresh itself resumes where the failed one stopped.
    """
    schedule = Cron.parse(cron)
    fired = 0
    t = now()
    while max_fires is None or fired < max_fires:
        t = schedule.next_after(t)
        if until is not None and t > until:
            break
        log(f"next refresh at {t:%Y-%m-%d %H:%M} UTC")
        while (wait := (t - now()).total_seconds()) > 0:
            sleep(min(wait, 60.0))
        try:
            log(f"fired {t:%Y-%m-%d %H:%M}: {fire(t)}")
        except Exception as exc:  # keep the scheduler alive; the next tick retries
            log(f"fire at {t:%Y-%m-%d %H:%M} failed: {type(exc).__name__}: {exc}")
        fired += 1
    return fired
