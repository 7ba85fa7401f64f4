"""Join the configured Ray cluster, or start a local one; shared by every Ray stage."""

from __future__ import annotations

from distill.core.config import RunConfig


def ensure_ray(cfg: RunConfig):
    """Use the running Ray if this process already has one (tests, notebooks), else connect
    to `ray.address` (a cluster) or start a local Ray with `ray.num_cpus`. Returns the module.

    Workers' output stays in Ray's session logs instead of the console (log_to_driver=False):
    engines inside actors are chatty, and their failures reach the driver as exceptions."""
    import ray

    if not ray.is_initialized():
        if cfg.ray.address:  # a cluster has its own resources; num_cpus is for a local Ray
            ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray
