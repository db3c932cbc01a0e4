"""Kill a stage with SIGKILL mid-way, run it again, and get exactly the uninterrupted output."""
import filecmp
import glob
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from pipeline_helpers import PY, REPO, config_dict, write_config
from pipeline.config import from_dict
from pipeline.fsio import iter_tar


def _copy_stages(src_run, dst_run, stages):
    for s in stages:
        shutil.copytree(os.path.join(src_run, s), os.path.join(dst_run, s))


def _start(args, log_path):
    log = open(log_path, "w")
    return subprocess.Popen([PY, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc, pattern, timeout=240):
    """SIGKILL the stage's whole process group as soon as `pattern` matches a file."""
    deadline = time.time() + timeout
    while not glob.glob(pattern):
        assert proc.poll() is None, "stage ended before it could be killed"
        assert time.time() < deadline, "stage never finished a shard"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _same_dirs(a, b, pattern):
    fa = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, pattern)))
    fb = sorted(os.path.basename(p) for p in glob.glob(os.path.join(b, pattern)))
    assert fa == fb and fa
    match, mismatch, errors = filecmp.cmpfiles(a, b, fa, shallow=False)
    assert not mismatch and not errors, mismatch


def test_recaption_killed_and_resumed_equals_uninterrupted(chain, corpus, ray_cluster, tiny_captioner, tmp_path):
    ref_cfg, _ = chain
    out = str(tmp_path / "run")
    _copy_stages(ref_cfg.output_dir, out, ["00_input", "10_download"])
    cfg_path = write_config(tmp_path / "c.yaml", config_dict(corpus.urls_csv, out, tiny_captioner, ray_cluster["gcs"]))
    proc = _start(["pipeline/recaption.py", "--config", cfg_path], tmp_path / "killed.log")
    _kill_when(proc, os.path.join(out, "20_recaption", "*.decisions.parquet"))
    n_shards = len(glob.glob(os.path.join(out, "10_download", "*.tar")))
    done = glob.glob(os.path.join(out, "20_recaption", "*.decisions.parquet"))
    assert 1 <= len(done) < n_shards, "the kill must land mid-stage"

    from pipeline import recaption
    recaption.run(from_dict(config_dict(corpus.urls_csv, out, tiny_captioner, ray_cluster["gcs"])))
    ref, new = ref_cfg.stage_dir("20_recaption"), os.path.join(out, "20_recaption")
    _same_dirs(ref, new, "*.tar")  # byte-identical shards: no duplicate, nothing missing
    assert not glob.glob(os.path.join(new, "*.tmp-*"))
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(ref, "decisions.parquet")),
                                  pd.read_parquet(os.path.join(new, "decisions.parquet")))


def _uid_images(directory):
    out = {}
    for tar in sorted(glob.glob(os.path.join(directory, "*.tar"))):
        for key, fields, _ in iter_tar(tar):
            uid = int(__import__("json").loads(fields["json"])["uid"])
            assert uid not in out, f"uid {uid} written twice"
            out[uid] = fields["jpg"]
    return out


def test_download_killed_and_resumed_equals_uninterrupted(chain, corpus, tiny_captioner, tmp_path):
    """Local multiprocessing distributor, small shards so the kill lands between them."""
    ref_cfg, _ = chain
    out = str(tmp_path / "run")
    cfg = config_dict(corpus.urls_csv, out, tiny_captioner, None,
                      download={"samples_per_shard": 3, "processes": 1, "threads": 2, "distributor": "multiprocessing"})
    cfg_path = write_config(tmp_path / "c.yaml", cfg)
    proc = _start(["pipeline/download.py", "--config", cfg_path], tmp_path / "killed.log")
    _kill_when(proc, os.path.join(out, "10_download", "*_stats.json"))
    assert len(glob.glob(os.path.join(out, "10_download", "*_stats.json"))) < 8
    again = subprocess.run([PY, "pipeline/download.py", "--config", cfg_path], cwd=REPO, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _uid_images(os.path.join(out, "10_download")) == _uid_images(ref_cfg.stage_dir("10_download"))
    ref = pd.read_parquet(ref_cfg.stage_dir("10_download") + "/decisions.parquet").sort_values("uid")
    new = pd.read_parquet(os.path.join(out, "10_download", "decisions.parquet")).sort_values("uid")
    pd.testing.assert_frame_equal(ref.reset_index(drop=True), new.reset_index(drop=True))


def test_shard_stage_resumes_after_a_crash(chain, tmp_path):
    """The aftermath of a kill during sharding: some shards missing, a half-written temp file."""
    ref_cfg, _ = chain
    out = str(tmp_path / "run")
    _copy_stages(ref_cfg.output_dir, out, ["00_input", "10_download", "20_recaption", "30_filter", "40_shards"])
    shards = os.path.join(out, "40_shards")
    tars = sorted(glob.glob(os.path.join(shards, "*.tar")))
    for p in tars[-2:]:
        os.remove(p)
        os.remove(p[:-4] + ".idx")
    os.remove(os.path.join(shards, "manifest.json"))
    with open(tars[-1] + ".tmp-4242", "wb") as f:
        f.write(b"half a tar")
    from pipeline import shard
    cfg = from_dict(dict(ref_cfg.to_dict(), output_dir=out))
    shard.run(cfg)
    for pattern in ("*.tar", "*.idx", "manifest.json", "decisions.parquet"):
        _same_dirs(ref_cfg.stage_dir("40_shards"), shards, pattern)
    assert not glob.glob(os.path.join(shards, "*.tmp-*"))


def test_changed_settings_are_not_mixed_into_finished_output(chain, corpus, tiny_captioner, tmp_path):
    """Resuming with another captioner prompt is refused; another shard seed rewrites the shards."""
    from pipeline import recaption, shard
    from pipeline.config import ConfigError

    ref_cfg, _ = chain
    out = str(tmp_path / "run")
    _copy_stages(ref_cfg.output_dir, out, ["00_input", "10_download", "20_recaption", "30_filter", "40_shards"])
    other_prompt = from_dict(dict(ref_cfg.to_dict(), output_dir=out, recaption=dict(ref_cfg.to_dict()["recaption"],
                                                                                    prompt="short")))
    with pytest.raises(ConfigError, match=r"20_recaption holds recaption output made with other settings \(changed: \['prompt'\]\)"):
        recaption.run(other_prompt)
    reseeded = from_dict(dict(ref_cfg.to_dict(), output_dir=out, shard=dict(ref_cfg.to_dict()["shard"], seed=99)))
    shard.run(reseeded)
    first = lambda d: [k for k, _, _ in iter_tar(os.path.join(d, "train-000000.tar"))]  # noqa: E731
    assert first(os.path.join(out, "40_shards")) != first(ref_cfg.stage_dir("40_shards"))
    ids = sorted(k for t in glob.glob(os.path.join(out, "40_shards", "*.tar")) for k, _, _ in iter_tar(t))
    ref_ids = sorted(k for t in glob.glob(os.path.join(ref_cfg.stage_dir("40_shards"), "*.tar")) for k, _, _ in iter_tar(t))
    assert ids == ref_ids  # same samples, new order, nothing from the old plan left over
