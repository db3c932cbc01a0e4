"""Start or join Ray once per process, dashboard on loopback unless configured otherwise."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class RayConnectError(RuntimeError):
    pass


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init waits minutes on a dead GCS address; a TCP connect says the same in milliseconds."""
    if address == "auto":
        return  # ray.init finds (or fails to find) the local cluster by itself, quickly
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(f"ray.address {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayConnectError(f"cannot reach the Ray cluster at {address!r}: {e}. Start one with "
                              f"`ray start --head`, or leave ray.address empty for a local instance.") from e


def init_ray(cfg) -> None:
    """cfg: RayConfig. address None -> a local instance; otherwise join that cluster or fail clearly."""
    import ray  # pipeline/__init__.py has set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before this import

    if ray.is_initialized():
        return
    # Inside `ray job submit` the job's driver is told its cluster through RAY_ADDRESS.
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=True, configure_logging=False)
    if address:
        check_reachable(address)
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
