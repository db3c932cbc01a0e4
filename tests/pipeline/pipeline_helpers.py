"""Helpers shared by the data-pipeline tests (a plain module: `conftest` is ambiguous when
tests/ has its own conftest.py)."""
import os
import socket
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def free_ports(n: int) -> list:
    """n distinct free ports: all held open together, so the OS cannot hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Corpus:
    def __init__(self, url, rows, urls_csv, qa):
        self.url, self.rows, self.urls_csv, self.qa = url, rows, urls_csv, qa  # qa: path -> JSON pairs

    def uid_of(self, path: str) -> int:
        return next(i for i, r in enumerate(self.rows) if r[0] == path)


def config_dict(urls_csv, out_dir, model, ray_address=None, **sections):
    """The demo settings (configs/data/demo_tiny.yaml) with test paths; the corpus' qa column
    travels with each sample."""
    with open(os.path.join(REPO, "configs", "data", "demo_tiny.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg.update(input=urls_csv, output_dir=out_dir, extra_columns=["qa"])
    cfg["recaption"]["model"] = model
    cfg["ray"] = {"address": ray_address}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_config(path, cfg) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)
