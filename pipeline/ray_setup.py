"""Start or join Ray once per process, dashboard on loopback unless configured otherwise."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class RayConnectError(RuntimeError):
    pass


def init_ray(cfg) -> None:
    """cfg: RayConfig. address None -> a local instance; otherwise join that cluster or fail clearly."""
    # Read when ray is imported: keeps a local instance on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit` the job's driver is told its cluster through RAY_ADDRESS.
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=True, configure_logging=False)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # ConnectionError, TimeoutError, ValueError depending on the address form
            raise RayConnectError(f"cannot reach the Ray cluster at {address!r}: {e}. Start one with "
                                  f"`ray start --head`, or leave ray.address empty for a local instance.") from e
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=cfg.include_dashboard,
                 dashboard_host=cfg.dashboard_host, _node_ip_address="127.0.0.1", **kwargs)
        log.info("started a local Ray instance: %s", ray.cluster_resources())
