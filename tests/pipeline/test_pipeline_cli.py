"""The stage scripts as users run them: one clear line for a missing input, an unreachable Ray
address, a missing captioner checkpoint or a bad config; and `ray job submit` on a local head."""
import filecmp
import glob
import os
import shutil
import subprocess

import pytest

from pipeline_helpers import PY, REPO, config_dict, write_config


def _run(args, timeout=120, env=None):
    return subprocess.run([PY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture
def cfg_file(corpus, tiny_captioner, tmp_path):
    def make(**sections):
        return write_config(tmp_path / "c.yaml", config_dict(corpus.urls_csv, str(tmp_path / "run"),
                                                             tiny_captioner, None, **sections))
    return make


def test_missing_input(cfg_file, tmp_path):
    r = _run(["pipeline/run.py", "--config", cfg_file(), "--set", f"input={tmp_path}/nope.csv"])
    assert r.returncode == 1
    assert r.stderr.strip().endswith(f"error: input URL list not found: '{tmp_path}/nope.csv' "
                                     "(expected a .parquet or .csv file)")


def test_unreachable_ray_address(cfg_file):
    r = _run(["pipeline/run.py", "--config", cfg_file(), "--stages", "download", "--set", "ray.address=127.0.0.1:9"])
    assert r.returncode == 1
    assert "error: cannot reach the Ray cluster at '127.0.0.1:9'" in r.stderr


def test_missing_captioner_checkpoint(cfg_file):
    r = _run(["pipeline/recaption.py", "--config", cfg_file(), "--set", "recaption.model=/no/such/qwen"])
    assert r.returncode == 2  # a config value to change (issue 15: 2 for config, 1 for data)
    assert "error: recaption.model: captioner checkpoint directory not found: '/no/such/qwen'" in r.stderr


def test_bad_config(cfg_file):
    r = _run(["pipeline/filter.py", "--config", cfg_file(), "--set", "filter.min_sid=3"])
    assert r.returncode == 2
    assert "config error: filter: unknown key(s) ['min_sid']" in r.stderr
    r = _run(["pipeline/shard.py", "--config", "/no/such.yaml"])
    assert r.returncode == 2 and "config error: config file not found: /no/such.yaml" in r.stderr


def test_ray_job_submit_recaption(chain, corpus, ray_cluster, tiny_captioner, tmp_path):
    """`ray job submit --working-dir . -- python pipeline/recaption.py --config ...` against the
    session's head: the job finds the cluster through RAY_ADDRESS and writes the same shards."""
    ref_cfg, _ = chain
    out = str(tmp_path / "run")
    for s in ("00_input", "10_download"):
        shutil.copytree(os.path.join(ref_cfg.output_dir, s), os.path.join(out, s))
    cfg_path = write_config(tmp_path / "c.yaml", config_dict(corpus.urls_csv, out, tiny_captioner, None))
    ray_bin = os.path.join(os.path.dirname(PY), "ray")
    r = subprocess.run([ray_bin, "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", ".",
                        "--", PY, "pipeline/recaption.py", "--config", cfg_path],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, RAY_AUTH_MODE="token"))
    assert r.returncode == 0 and "succeeded" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
    assert "recaption: backend=transformers (requested auto)" in r.stdout + r.stderr
    ref, new = ref_cfg.stage_dir("20_recaption"), os.path.join(out, "20_recaption")
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ref, "*.tar")))
    _, mismatch, errors = filecmp.cmpfiles(ref, new, names, shallow=False)
    assert names and not mismatch and not errors


def test_local_ray_dashboard_on_loopback():
    """A local instance started by the pipeline with its dashboard on: bound to 127.0.0.1."""
    code = ("from pipeline.config import RayConfig\nfrom pipeline.ray_setup import init_ray\nimport ray\n"
            "init_ray(RayConfig(num_cpus=1, include_dashboard=True))\n"
            "print('DASH', ray._private.worker.get_dashboard_url())\n"
            "print('NODE', ray.util.get_node_ip_address())\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("DASH", "NODE")))
    assert lines["DASH"].startswith("127.0.0.1:") and lines["NODE"] == "127.0.0.1"
