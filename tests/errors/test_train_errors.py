"""Every training mistake of issue 15 through `python -m megatron_ext.train`'s main(): one line,
exit 2 (config) or 1 (data), before a process group or a model exists, nothing existing changed."""
import json
import subprocess
import sys

import pytest
import yaml

from errors_helpers import ROOT, LockHolder, assert_one_line, changed, snapshot

TINY = ROOT / "configs" / "train" / "s1-rose-tiny.yaml"


def _rose_blocks(tmp_path, blocks):
    preset = yaml.safe_load((ROOT / "configs" / "model" / "tiny.yaml").read_text())
    preset["rose"]["blocks"] = blocks
    path = tmp_path / "tiny-odd-blocks.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _manifest(tmp_path, shards):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "webdataset", "shards": shards}))
    return path


CASES = [  # (id, extra args (formatted with tmp), WORLD_SIZE, exit code, the line)
    ("malformed-yaml", ["--config", "{tmp}/bad.yaml"], 1, 2,
     "config error: training config {tmp}/bad.yaml: not valid YAML at line 2"),
    ("override-into-scalar", ["train.steps.x=1"], 1, 2,
     "config error: override 'train.steps.x=1': train.steps is a value (40), not a section"),
    ("typo-key", ["train.stepz=3"], 1, 2, "config error: train: unknown key(s) ['stepz']"),
    ("wrong-type", ["optim.lr=fast"], 1, 2, "config error: optim.lr: expected float, got 'fast'"),
    ("world-not-divisible", ["parallel.tensor=2"], 3, 2,
     "config error: world size 3 is not divisible by parallel.tensor x parallel.pipeline = 2 x 1"),
    ("rose-blocks-vs-tp", ["parallel.tensor=2", "model.preset={tmp}/tiny-odd-blocks.yaml"], 2, 2,
     "rose.blocks=1 is not divisible by tensor_model_parallel_size=2"),
    ("manifest-missing", ["data.kind=webdataset", "data.manifest={tmp}/none.json"], 1, 1,
     "error: data.manifest={tmp}/none.json: not found"),
    ("manifest-empty", ["data.kind=webdataset", "data.manifest={tmp}/manifest.json"], 1, 1,
     "error: data.manifest={tmp}/manifest.json: lists 0 samples"),
    ("llm-weights-missing", ["model.llm_weights={tmp}/no-llm"], 1, 2,
     "config error: model.llm_weights={tmp}/no-llm: no such directory"),
    ("tokenizer-missing", ["data.tokenizer={tmp}/no-tok"], 1, 2,
     "config error: data.tokenizer={tmp}/no-tok: no such directory"),
    ("init-from-missing", ["train.init_from={tmp}/no-run"], 1, 2,
     "config error: train.init_from={tmp}/no-run: no such checkpoint or run directory"),
    ("bad-flag", ["--steps", "3"], 1, 2, "error: unrecognized arguments: --steps 3 (see --help)"),
]


@pytest.mark.parametrize("extra,world,code,line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_mistake(tmp_path, capsys, monkeypatch, extra, world, code, line):
    from megatron_ext.train import main

    (tmp_path / "bad.yaml").write_text("train: {steps: 3\n")
    _rose_blocks(tmp_path, 1)
    _manifest(tmp_path, [])
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.delenv("RANK", raising=False)
    args = [a.format(tmp=tmp_path) for a in extra]
    argv = args if args[0] == "--config" else ["--config", str(TINY), f"log.run_dir={tmp_path}/run", *args]
    before = snapshot(tmp_path)
    try:
        got = main(argv)
    except SystemExit as e:  # argparse
        got = e.code
    assert_one_line(got, capsys.readouterr().err, code, line.format(tmp=tmp_path))
    assert changed(before) == []
    assert not (tmp_path / "run").exists()  # nothing was started: no run directory, no config.yaml


def test_only_rank0_speaks(tmp_path, capsys, monkeypatch):
    from megatron_ext.train import main

    monkeypatch.setenv("RANK", "1")
    assert main(["--config", str(TINY), "train.stepz=3"]) == 2
    assert capsys.readouterr().err == ""


def test_second_run_on_a_run_dir_names_the_holder(tmp_path, capsys, monkeypatch):
    from megatron_ext.train import main

    with LockHolder(tmp_path / "run") as holder:
        monkeypatch.delenv("RANK", raising=False)
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        before = snapshot(tmp_path)
        got = main(["--config", str(TINY), f"log.run_dir={tmp_path}/run"])
        assert_one_line(got, capsys.readouterr().err, 2,
                        f"error: log.run_dir {tmp_path}/run is in use by another run (pid {holder.pid})")
        assert changed(before) == [] and not (tmp_path / "run" / "config.yaml").exists()


def test_unreadable_shards_are_skipped_and_named(tmp_path, caplog):
    """A shard that is not a tar, or is cut in half, is skipped with its name (the others train);
    a manifest whose every shard is unreadable is one data error."""
    import io
    import tarfile

    from megatron_ext.data.shards import ShardDataset
    from megatron_ext.data.text import ByteTokenizer
    from PIL import Image
    from pvcommon.errors import DataError

    def good_tar(path, n):
        with tarfile.open(path, "w") as t:
            for i in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buf, format="JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"square {i}".encode())):
                    info = tarfile.TarInfo(f"{i:04d}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))

    good_tar(tmp_path / "a.tar", 3)
    (tmp_path / "junk.tar").write_bytes(b"<html>not a tar</html>" * 50)
    good_tar(tmp_path / "full.tar", 3)
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "half.tar").write_bytes(data[:700])  # cut inside the first header block's data
    m = _manifest(tmp_path, [{"tar": "a.tar", "samples": 3}, {"tar": "junk.tar", "samples": 5},
                             {"tar": "half.tar", "samples": 3}])
    ds = ShardDataset(str(m), ByteTokenizer(), "", 16, 8)
    assert len(ds) >= 3 and [t for t, _ in ds.unreadable][:1] == [str(tmp_path / "junk.tar")]
    assert f"{tmp_path / 'junk.tar'}: unreadable shard" in caplog.text
    only_junk = _manifest(tmp_path, [{"tar": "junk.tar", "samples": 5}])
    with pytest.raises(DataError, match=r"none of its 1 shards is readable, e.g. .*junk.tar"):
        ShardDataset(str(only_junk), ByteTokenizer(), "", 16, 8)


@pytest.mark.multiproc
def test_typo_under_torchrun_is_one_line_from_rank0(tmp_path):
    """Both workers exit 2 before any process group; the user sees rank 0's line once (torchrun's
    own failure report follows it)."""
    import os
    from pathlib import Path

    from pvcommon.lifetime import loopback_rendezvous

    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), *loopback_rendezvous(), "--nproc-per-node=2", "-m", "megatron_ext.train",
                        "--config", str(TINY), f"log.run_dir={tmp_path}/run", "train.stepz=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = "config error: train: unknown key(s) ['stepz']"
    assert r.returncode != 0
    assert (r.stdout + r.stderr).count(line) == 1, r.stderr[-3000:]
    # torchrun's own ChildFailedError report (its traceback, then the failures) comes after our line
    err = r.stderr
    assert err.index(line) < err.index("ChildFailedError") and err.count("Traceback") <= 1
    assert "exitcode  : 2" in err
    assert not (tmp_path / "run").exists()
