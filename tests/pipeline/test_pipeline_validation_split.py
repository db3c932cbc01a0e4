"""The held-out split (shard.validation): a seeded part of the kept samples goes into validation
shards with their own manifest, never into the training shards; decisions.parquet's split column
says which part each sample went to; a fraction or a count, refused when it leaves nothing to train
on. And local files: file:// URLs pass the input stage only with local_files."""

import json
import os

import pandas as pd
import pytest

from pipeline.config import ConfigError, from_dict
from pipeline.shard import hold_out, validation_count


def _kept(n):
    return pd.DataFrame({"uid": range(n), "shard": "s", "key": [str(i) for i in range(n)],
                         "caption_source": "alt_text"})


def test_hold_out_is_seeded_disjoint_and_sized_by_fraction_or_count():
    train, val = hold_out(_kept(40), 0.25, seed=3)
    assert len(val) == 10 and len(train) == 30 and not set(train.uid) & set(val.uid)
    again, val2 = hold_out(_kept(40).sample(frac=1, random_state=2), 0.25, seed=3)
    assert list(val2.uid) == list(val.uid)  # independent of the listing order
    assert list(hold_out(_kept(40), 0.25, seed=4)[1].uid) != list(val.uid)
    assert validation_count(40, 7) == 7 and validation_count(40, 0.01) == 1 and validation_count(40, 0) == 0
    with pytest.raises(ValueError, match="leaves none to train on"):
        validation_count(40, 40)


@pytest.mark.parametrize("value, message", [(-0.1, "shard.validation"), (2.5, "shard.validation")])
def test_bad_validation_setting_names_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"input": "x.csv", "output_dir": "o", "recaption": {"enabled": False},
                   "shard": {"validation": value}})


def test_file_urls_pass_only_with_local_files(tmp_path):
    from pipeline.inputs import prepare

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nfile:///tmp/a.png,a cat\nhttp://x/b.png,a dog\n")
    for local, expected in ((False, ["invalid_url", ""]), (True, ["", ""])):
        out = tmp_path / str(local)
        out.mkdir()
        prepare(str(urls), "url", "caption", str(out), local_files=local)
        assert list(pd.read_parquet(out / "decisions.parquet").reason) == expected


def test_the_shard_stage_writes_validation_shards_and_records_the_split(chain, tmp_path):
    """The chain's filter output, sharded again with a held-out quarter."""
    import dataclasses
    import shutil

    import webdataset as wds

    from pipeline import run

    cfg, summary = chain
    out = tmp_path / "run"
    shutil.copytree(cfg.output_dir, out)
    shutil.rmtree(out / "40_shards")
    cfg = dataclasses.replace(cfg, output_dir=str(out), shard=dataclasses.replace(cfg.shard, validation=0.25))
    again = run.run(cfg, ["shard"])
    assert again["kept"] == summary["kept"]
    d = pd.read_parquet(out / "decisions.parquet")
    kept = d[d.decision == "kept"]
    assert set(kept.split) == {"train", "validation"} and set(d[d.decision == "drop"].split) == {""}
    assert (kept.split == "validation").sum() == round(0.25 * len(kept))
    shards = out / "40_shards"
    train = json.loads((shards / "manifest.json").read_text())
    val = json.loads((shards / train["validation_manifest"]).read_text())
    assert val["split"] == "validation" and train["num_validation_samples"] == val["num_samples"]

    def uids(manifest):
        tars = [str(shards / e["tar"]) for e in manifest["shards"]]
        return {s["json"]["uid"] for s in wds.WebDataset(tars, shardshuffle=False).decode()}

    assert uids(val) == set(kept.uid[kept.split == "validation"])
    assert uids(train) == set(kept.uid[kept.split == "train"])
    assert all(e["tar"].startswith("val-") for e in val["shards"])
    # back to no held-out split: the validation shards and their manifest go
    run.run(dataclasses.replace(cfg, shard=dataclasses.replace(cfg.shard, validation=0)), ["shard"])
    assert not (shards / "validation_manifest.json").exists() and not list(shards.glob("val-*"))
    assert json.loads((shards / "manifest.json").read_text())["validation_manifest"] is None
    assert os.path.exists(shards / "train-000000.tar")
