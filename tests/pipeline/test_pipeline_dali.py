"""The training shards and their index files (written without DALI) read by DALI's own
webdataset reader, on CPU (device_id=None): same samples, same texts as plain webdataset."""
import json

import numpy as np
import pytest
import webdataset as wds

from pipeline.fsio import list_shards

dali = pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda120 (data extra, Linux x86_64) not installed")


def test_dali_reads_training_shards_with_our_index(chain):
    from nvidia.dali import fn, pipeline_def

    cfg, summary = chain
    tars = list_shards(cfg.stage_dir("40_shards"))

    @pipeline_def(batch_size=4, num_threads=2, device_id=None)
    def pipe():
        jpg, txt, meta = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
                                               ext=["jpg", "txt", "json"], missing_component_behavior="error",
                                               random_shuffle=False, name="reader")
        return fn.decoders.image(jpg, device="cpu"), txt, meta

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    assert n == summary["kept"]
    got = {}
    while len(got) < n:
        img, txt, meta = p.run()
        for i in range(len(img)):
            uid = json.loads(bytes(np.array(meta[i])).decode())["uid"]
            got[uid] = (bytes(np.array(txt[i])).decode(), np.array(img[i]).shape)
    ref = {s["json"]["uid"]: s for s in wds.WebDataset(tars, shardshuffle=False).decode("pil")}
    assert set(got) == set(ref)
    for uid, (text, shape) in got.items():
        assert text == ref[uid]["txt"]
        assert shape == (ref[uid]["jpg"].height, ref[uid]["jpg"].width, 3)
