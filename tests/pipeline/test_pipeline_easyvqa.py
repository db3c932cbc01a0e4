"""easy-VQA through the real pipeline: its train images served beside the hostile cases, with
alt-texts from their own questions and their question-answer pairs as an extra URL-list column,
carried download -> recaption -> filter -> shard; every URL accounted for; the test split never in
a shard; the tiny random captioner's gibberish fails the caption checks, so the alt-text trains."""
import hashlib
import json
import os

import pandas as pd
import pytest
import webdataset as wds

from megatron_ext.data import easyvqa
from pipeline.fsio import list_shards

N_EASYVQA = 8  # conftest's corpus


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_splits_answers_and_alt_texts():
    train, test = easyvqa.load_split("train"), easyvqa.load_split("test")
    assert (len(train), sum(len(s.questions) for s in train)) == (4000, 38575)
    assert (len(test), sum(len(s.questions) for s in test)) == (1000, 9673)
    assert len(easyvqa.answers()) == 13 and set(easyvqa.SHAPES) < set(easyvqa.answers())
    assert not {_sha256(s.image_path) for s in train[:200]} & {_sha256(s.image_path) for s in test}
    s = train[0]
    assert s.pairs[0] == ("what is the blue shape?", "rectangle") and easyvqa.alt_text(s) == "a blue rectangle"
    # an alt-text states only what the image's own answers say: every yes/no answer agrees with it
    for s in train[:500]:
        colour, shape = easyvqa.colour_and_shape(s)
        for q, a in s.pairs:
            words = q.rstrip("?").split()
            named = [w for w in words if w in easyvqa.colours() + easyvqa.SHAPES]
            if a in ("yes", "no") and named and None not in (colour, shape):
                holds = all(w in (colour, shape) for w in named)
                negated = "not" in words or "no" in words
                assert (holds != negated) == (a == "yes"), (s.image_id, q, a)
    with pytest.raises(ValueError, match="use one of"):
        easyvqa.load_split("val")


@pytest.fixture(scope="module")
def easyvqa_run(chain, corpus):
    """The shared chain run (conftest: its corpus serves easy-VQA train images with a qa column)."""
    cfg, summary = chain
    samples = list(wds.WebDataset(list_shards(cfg.stage_dir("40_shards")), shardshuffle=False).decode())
    return cfg, summary, corpus.rows, samples


def test_every_url_accounted_for(easyvqa_run):
    cfg, summary, rows, samples = easyvqa_run
    d = pd.read_parquet(os.path.join(cfg.output_dir, "decisions.parquet")).set_index("uid")
    assert sorted(d.index) == list(range(len(rows))) and summary["input"] == len(rows)
    assert summary["kept"] + summary["dropped"] == len(rows) == len(samples) + summary["dropped"]
    for uid, (path, _, expected) in enumerate(rows):
        if expected:
            assert (d.loc[uid, "decision"], d.loc[uid, "reason"]) == ("drop", expected), path
    served = [uid for uid, r in enumerate(rows) if r[0].startswith("/easyvqa/")]
    assert len(served) == N_EASYVQA
    # easy-VQA images are 64 x 64 one-shape pictures: these 8 are distinct enough to all survive dedup
    assert (d.loc[served].decision == "kept").all()


def test_no_test_image_in_any_shard_and_each_sample_keeps_its_own_pairs(easyvqa_run):
    _, _, rows, samples = easyvqa_run
    train = {_sha256(s.image_path): s for s in easyvqa.load_split("train")}
    test = {_sha256(s.image_path) for s in easyvqa.load_split("test")}
    shard_hashes = {s["json"]["sha256"] for s in samples}  # img2dataset hashes the bytes as served
    assert not shard_hashes & test
    vqa = [s for s in samples if s["json"]["sha256"] in train]
    assert len(vqa) == N_EASYVQA
    for s in vqa:
        own = train[s["json"]["sha256"]]
        assert [tuple(p) for p in json.loads(s["json"]["qa"])] == own.pairs  # the pairs of its own image
        assert s["json"]["alt_text"] == easyvqa.alt_text(own)
    assert all(json.loads(s["json"]["qa"]) == [] for s in samples if s not in vqa)


def test_random_captions_fail_the_filter_and_the_alt_text_trains(easyvqa_run):
    cfg, _, _, samples = easyvqa_run
    for s in samples:
        meta = s["json"]
        assert meta["captioner"] == "tiny-qwen25vl" and meta["caption"].strip()  # the recaption, kept beside
        assert meta["caption_source"] == "alt_text" and s["txt"] == meta["alt_text"] != meta["caption"]
    d = pd.read_parquet(os.path.join(cfg.output_dir, "decisions.parquet"))
    assert set(d.loc[d.decision == "kept", "caption_source"]) == {"alt_text"}
    assert set(d.loc[d.decision == "drop", "caption_source"]) == {""}
    feats = pd.read_parquet(os.path.join(cfg.stage_dir("30_filter"), "features.parquet"))
    # why each recaption was refused: the prose-word or language check, never left unchecked
    assert set(feats.recaption_problem) <= {"caption_not_prose", "caption_language", "caption_repetition"}
    assert (feats.recaption_problem != "").all()
    with open(os.path.join(cfg.stage_dir("40_shards"), "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["caption_sources"] == {"alt_text": len(samples)}
