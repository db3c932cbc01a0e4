"""Every pipeline mistake of issue 15: one line, exit 2 (config/usage) or 1 (data), no traceback,
nothing that existed changed, and nothing downloaded before the mistake was found."""
import os
import time

import pytest
import yaml

from errors_helpers import ROOT, LockHolder, assert_one_line, changed, snapshot


def _config(tmp_path, **top):
    with open(ROOT / "configs" / "data" / "demo_tiny.yaml") as f:
        cfg = yaml.safe_load(f)
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a red square\n")
    captioner = tmp_path / "captioner"
    captioner.mkdir()
    (captioner / "config.json").write_text("{}")
    cfg.update(input=str(urls), output_dir=str(tmp_path / "run"), ray={"address": None})
    cfg["recaption"]["model"] = str(captioner)
    cfg.update(top)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _main(capsys, argv):
    from pipeline import run

    with pytest.raises(SystemExit) as e:
        run.main(argv)
    return e.value.code, capsys.readouterr().err


def _empty_csv(tmp_path, cfg):
    (tmp_path / "urls.csv").write_bytes(b"")
    return ["--config", str(cfg)]


def _output_dir_is_file(tmp_path, cfg):
    (tmp_path / "run").write_text("a file, not a folder")
    return ["--config", str(cfg)]


def _malformed_yaml(tmp_path, cfg):
    cfg.write_text(cfg.read_text() + "filter: {min_side: 3\n")
    return ["--config", str(cfg)]


CASES = [  # (id, argv or a function making it, exit code, the line)
    ("malformed-yaml", _malformed_yaml, 2, "config error: config file {cfg}: not valid YAML at line"),
    ("override-into-scalar", ["--set", "recaption.model.path=x"], 2,
     "config error: override 'recaption.model.path=x': recaption.model is a value"),
    ("unknown-key", ["--set", "filter.min_sid=3"], 2, "config error: filter: unknown key(s) ['min_sid']"),
    ("wrong-type", ["--set", "shard.samples_per_shard=many"], 2,
     "config error: shard.samples_per_shard: expected int, got 'many'"),
    ("zero-byte-csv", _empty_csv, 1, "error: input '{tmp}/urls.csv' is empty (0 bytes)"),
    ("input-missing", ["--set", "input={tmp}/nope.csv"], 1, "error: input URL list not found: '{tmp}/nope.csv'"),
    ("input-is-dir", ["--set", "input={tmp}"], 1, "error: input '{tmp}' is a directory"),
    ("output-dir-is-file", _output_dir_is_file, 2, "config error: output_dir: {tmp}/run is a file"),
    ("captioner-missing", ["--set", "recaption.model={tmp}/no-qwen"], 2,
     "config error: recaption.model: captioner checkpoint directory not found: '{tmp}/no-qwen'"),
    ("unknown-stage", ["--stages", "download,fliter"], 2, "error: --stages: unknown stage(s) ['fliter']"),
    ("bad-flag", ["--stagez", "download"], 2, "error: unrecognized arguments: --stagez download (see --help)"),
]


@pytest.mark.parametrize("make,code,line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pipeline_mistake(tmp_path, capsys, make, code, line):
    cfg = _config(tmp_path)
    if callable(make):
        argv = make(tmp_path, cfg)
    else:
        argv = ["--config", str(cfg), *[a.format(tmp=tmp_path) for a in make]]
    before = snapshot(tmp_path)
    got, err = _main(capsys, argv)
    assert_one_line(got, err, code, line.format(tmp=tmp_path, cfg=cfg))
    assert changed(before) == []
    assert not os.path.exists(tmp_path / "run" / "00_input")  # found before any stage started


def test_second_run_on_the_same_output_dir_names_the_holder(tmp_path, capsys):
    """A run holding output_dir (here a process that took the lock) stops a second one at once."""
    cfg = _config(tmp_path)
    with LockHolder(tmp_path / "run") as holder:
        before = snapshot(tmp_path)
        got, err = _main(capsys, ["--config", str(cfg), "--stages", "download"])
        assert_one_line(got, err, 2, f"error: output_dir {tmp_path}/run is in use by another run "
                                     f"(pid {holder.pid})")
        assert changed(before) == []
    t0 = time.time()  # the kernel dropped the dead holder's lock: the next run may take it
    from pvcommon.runlock import lock_run_dir, release
    lock_run_dir(tmp_path / "run")
    release(tmp_path / "run")
    assert time.time() - t0 < 5


def test_caption_length_is_limited_in_characters():
    from pipeline.config import FilterConfig
    from pipeline.text_checks import caption_problem

    f = FilterConfig(caption_min_words=1, min_script_ratio=None)
    assert caption_problem("x" * 1_000_000, f) == "caption_too_many_chars"  # one 1 MB "word"
    assert caption_problem("a red square on a white field", f) is None
    assert caption_problem("y" * f.caption_max_chars, f) is None
