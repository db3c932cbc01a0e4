"""Filter and shard in the other modes: alt-text only (no recaptioning), and the CLIP-score filter
with a tiny random CLIP saved to a local directory."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from pipeline_helpers import config_dict
from pipeline import accounting, filter as filter_stage, shard, stage_io
from pipeline.config import from_dict


def _alt_only_run(chain, corpus, tiny_captioner, out, **filter_cfg):
    ref_cfg, _ = chain
    for s in ("00_input", "10_download"):
        shutil.copytree(os.path.join(ref_cfg.output_dir, s), os.path.join(out, s))
    cfg = config_dict(corpus.urls_csv, out, tiny_captioner, ref_cfg.ray.address,
                      filter=dict({"min_script_ratio": 0.7, "max_repeated_ngram_share": 0.5}, **filter_cfg))
    cfg["recaption"]["enabled"] = False
    cfg = from_dict(cfg)
    filter_stage.run(cfg)
    shard.run(cfg)
    urls = pd.read_parquet(os.path.join(out, "00_input", "urls.parquet"))
    return cfg, accounting.finalize(out, stage_io.stage_frames(cfg), urls)


def test_alt_text_mode_trains_on_alt_text(chain, corpus, tiny_captioner, tmp_path):
    cfg, summary = _alt_only_run(chain, corpus, tiny_captioner, str(tmp_path / "run"))
    assert "recaption" not in summary["by_stage"]
    assert summary["kept"] == chain[1]["kept"]  # same images survive; alt-texts pass the strict checks
    tars = sorted(f.path for f in os.scandir(cfg.stage_dir("40_shards")) if f.name.endswith(".tar"))
    for s in wds.WebDataset(tars, shardshuffle=False).decode():
        assert s["txt"] == s["json"]["alt_text"] == corpus.rows[s["json"]["uid"]][1].decode()
        assert s["json"]["caption_source"] == "alt_text"
        assert "caption" not in s["json"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    from pipeline.demo_data import WORDS

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "a", "photo", "of"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path_factory.mktemp("clip"))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_clip_score_filter(chain, corpus, tiny_captioner, tiny_clip, tmp_path):
    from pipeline.clip_score import ClipScorer

    scorer = ClipScorer.get(tiny_clip)
    from pipeline.demo_data import blob_image, _jpeg  # the corpus' own image generator
    jpgs = [_jpeg(blob_image(i, 64, 48)) for i in range(3)]
    s = scorer.score([jpgs[0], None, jpgs[2]], ["a red cat", "x", "a blue boat"], batch_size=2)
    assert np.isnan(s[1]) and np.all(np.abs(s[[0, 2]]) <= 1.0 + 1e-6)
    # Threshold above any cosine: every sample that passed the other checks is dropped for its score.
    cfg, summary = _alt_only_run(chain, corpus, tiny_captioner, str(tmp_path / "run"),
                                 clip={"model": tiny_clip, "min_score": 1.01})
    assert summary["kept"] == 0
    # Scores are per-sample checks, before dedup: every image of a sane size gets one and fails it.
    reached = summary["by_stage"]["filter"]["received"]
    assert summary["dropped_by_reason"]["filter/clip_score_low"] == reached - summary["dropped_by_reason"]["filter/aspect_ratio"]
    feats = pd.read_parquet(os.path.join(cfg.stage_dir("30_filter"), "features.parquet"))
    assert feats.loc[feats.reason == "clip_score_low", "clip_score"].between(-1.0001, 1.0001).all()


def test_missing_clip_model_is_a_clear_error(chain, corpus, tiny_captioner, tmp_path):
    cfg = config_dict(corpus.urls_csv, str(tmp_path), tiny_captioner, None, filter={"clip": {"model": "/no/clip"}})
    with pytest.raises(FileNotFoundError, match="filter.clip.model: no such directory '/no/clip'"):
        filter_stage.run(from_dict(cfg))
