"""Export never clobbers: a non-empty --out is refused unless --overwrite, and even then only files
an export wrote are replaced or removed. Plus the one-line errors of export, flops and the main job."""
import json

import pytest
import torch

from errors_helpers import assert_one_line, changed, snapshot


def _base_model_folder(path):
    """What a user might point --out at by mistake: a base model's folder."""
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    (path / "model-00001-of-00002.safetensors").write_bytes(b"weights 1")
    (path / "model-00002-of-00002.safetensors").write_bytes(b"weights 2")
    (path / "model.safetensors.index.json").write_text("{}")
    return path


CASES = [  # (id, argv (formatted with tmp), the line)
    ("checkpoint-missing", ["--checkpoint", "{tmp}/no-run", "--out", "{tmp}/new"],
     "error: --checkpoint {tmp}/no-run: no such file or directory"),
    ("no-checkpoint-inside", ["--checkpoint", "{tmp}/empty-run", "--out", "{tmp}/new"],
     "error: --checkpoint: no complete checkpoint under {tmp}/empty-run"),
    ("out-not-empty", ["--checkpoint", "{tmp}/empty-run", "--out", "{tmp}/base"],
     "error: --out {tmp}/base is not empty; pass an empty or new folder, or --overwrite"),
    ("out-is-file", ["--checkpoint", "{tmp}/empty-run", "--out", "{tmp}/base/config.json"],
     "error: --out {tmp}/base/config.json is a file"),
    ("tokenizer-missing", ["--checkpoint", "{tmp}/empty-run", "--out", "{tmp}/new", "--tokenizer", "{tmp}/tok"],
     "error: --tokenizer {tmp}/tok: no such file or directory"),
    ("no-out", ["--checkpoint", "{tmp}/empty-run"], "error: the following arguments are required: --out"),
]


@pytest.mark.parametrize("argv,line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_export_mistake(tmp_path, capsys, argv, line):
    from megatron_ext.export.cli import main

    _base_model_folder(tmp_path / "base")
    (tmp_path / "empty-run").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in argv])
    assert_one_line(e.value.code, capsys.readouterr().err, 2, line.format(tmp=tmp_path))
    assert changed(before) == [] and not (tmp_path / "new").exists()


def test_overwrite_replaces_only_what_an_export_writes(tmp_path):
    """huggingface_hub's shard writer deletes every other model-*.safetensors in its folder: the
    export stages its files beside --out, so a base model's shards in --out survive, and a later
    --overwrite export removes only the stale shards an export wrote."""
    from huggingface_hub import save_torch_state_dict

    from megatron_ext.export.target import MANIFEST, ExportTarget

    out = _base_model_folder(tmp_path / "base")
    foreign = snapshot(out)
    with pytest.raises(Exception, match="is not empty"):
        ExportTarget(out)
    state = {f"w{i}": torch.full((256,), float(i)) for i in range(4)}

    def export(max_shard):
        target = ExportTarget(out, overwrite=True)
        save_torch_state_dict(state, target.staging, max_shard_size=max_shard)
        (target.staging / "config.json").write_text('{"model_type": "paramvision"}')
        return target.commit()

    export("2KB")  # 4 x 1 KiB tensors: two or more shards, named like the base model's
    written = json.loads((out / MANIFEST).read_text())["files"]
    shards = [n for n in written if n.endswith(".safetensors")]
    assert len(shards) >= 2 and "config.json" in written
    # replaced: files an export writes; kept: the base model's other files
    kept = {p for p in foreign if p.rsplit("/", 1)[1] not in written}
    assert changed({p: foreign[p] for p in kept}) == []
    assert json.loads((out / "config.json").read_text())["model_type"] == "paramvision"
    export("100MB")  # one shard now: the earlier export's extra shards go, nothing else does
    now = json.loads((out / MANIFEST).read_text())["files"]
    assert "model.safetensors" in now
    for name in set(shards) - set(now):
        assert not (out / name).exists()
    assert changed({p: foreign[p] for p in kept if p.rsplit("/", 1)[1] not in shards}) == []
    assert not list(tmp_path.glob(".base.partial-*"))  # the staging folder is gone


@pytest.mark.parametrize("argv,line", [
    (["--visual-tokens", "-1"], "error: --visual-tokens (-1) must be >= 0"),
    (["--method", "clip"], "error: argument --method: invalid choice: 'clip'"),
])
def test_flops_mistake(capsys, argv, line):
    from megatron_ext.flops import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert_one_line(e.value.code, capsys.readouterr().err, 2, line)


def test_main_job_on_a_held_out_root(tmp_path, capsys):
    """A second main job on the same --out stops before any step, naming the first one's pid."""
    import os

    from errors_helpers import LockHolder
    from mainjob.run import main

    with LockHolder(tmp_path / "main") as holder:
        got = main(["--out", str(tmp_path / "main"), "--size", "smallest"])
        assert_one_line(got, capsys.readouterr().err, 2,
                        f"error: --out {tmp_path}/main is in use by another run (pid {holder.pid})")
        assert os.listdir(tmp_path / "main") == [".paramvision.lock"]
