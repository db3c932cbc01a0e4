"""The shard loader: reads the data pipeline's manifest and tars, DP ranks read disjoint samples,
a corrupt image is skipped and counted, the saved position resumes exactly; caption tokenisation
puts the loss on caption tokens only. Single process, no Megatron."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from megatron_ext.data.loader import MicroBatchLoader
from megatron_ext.data.sampler import RankSampler
from megatron_ext.data.shards import ShardDataset
from megatron_ext.data.text import ByteTokenizer, encode_pair


def _jpg(color):
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), color).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root, n_shards=2, per_shard=5, corrupt=(3,)):
    entries, uid = [], 0
    for s in range(n_shards):
        name = f"train-{s:06d}"
        with tarfile.open(root / f"{name}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"{uid:09d}"
                image = b"not a jpeg at all" if uid in corrupt else _jpg((uid * 20 % 255, 0, 0))
                _add(tar, f"{key}.jpg", image)
                _add(tar, f"{key}.txt", f"caption {uid}".encode())
                _add(tar, f"{key}.json", json.dumps({"uid": uid}).encode())
                uid += 1
        entries.append({"tar": f"{name}.tar", "idx": f"{name}.idx", "samples": per_shard})
    manifest = {"format": "webdataset", "shards": entries, "num_shards": n_shards,
                "num_samples": n_shards * per_shard}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "manifest.json"


def _loader(manifest, rank, dp, mbs=2):
    ds = ShardDataset(str(manifest), ByteTokenizer(), "", seq_length=24, image_size=16)
    return MicroBatchLoader(ds, RankSampler(len(ds), rank, dp, seed=3), mbs)


def _caption_ids(batch):
    return [bytes(t for t in row.tolist() if t not in (0, 3)).decode() for row in batch["input_ids"]]


def test_ranks_read_disjoint_samples_and_corrupt_ones_are_counted(tmp_path):
    manifest = make_shards(tmp_path)
    seen = {}
    for rank in (0, 1):
        loader = _loader(manifest, rank, 2, mbs=2)
        caps = []
        for _ in range(2):  # 4 samples per rank out of 5 per rank per epoch
            b = loader.next_microbatch()
            assert b["pixel_values"].shape == (2, 3, 16, 16)
            caps += _caption_ids(b)
        seen[rank] = (set(caps), loader.corrupt)
    assert not seen[0][0] & seen[1][0]
    assert "caption 3" not in seen[0][0] | seen[1][0]
    assert seen[0][1] + seen[1][1] >= 1  # the corrupt sample was reached by one rank and counted


def test_saved_position_resumes_exactly(tmp_path):
    manifest = make_shards(tmp_path)
    a = _loader(manifest, 0, 1)
    for _ in range(3):
        a.next_microbatch()
    state = a.state_dict()
    expected = [_caption_ids(a.next_microbatch()) for _ in range(4)]  # crosses an epoch
    b = _loader(manifest, 0, 1)
    b.load_state_dict(state)
    assert [_caption_ids(b.next_microbatch()) for _ in range(4)] == expected


def test_loss_falls_on_caption_tokens_only():
    tok = ByteTokenizer()
    s = encode_pair(tok, "Describe: ", "a cat", seq_length=16)
    prompt_len = len("Describe: ")
    assert s["loss_mask"][: prompt_len - 1].sum() == 0
    assert s["loss_mask"].sum() == len("a cat") + 1  # caption + end token
    assert s["labels"][int(s["loss_mask"].nonzero()[-1])] == tok.eos_id
    assert (s["input_ids"][prompt_len + 6:] == tok.pad_id).all()


def test_manifest_must_be_the_pipelines(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="pipeline/shard.py"):
        ShardDataset(str(tmp_path / "m.json"), ByteTokenizer(), "", 8, 16)


def test_dali_loader_on_cpu_reads_disjoint_samples_and_resumes(tmp_path):
    pytest.importorskip("nvidia.dali")
    from megatron_ext.data.dali import DaliLoader

    manifest = make_shards(tmp_path, n_shards=2, per_shard=6, corrupt=())

    def loader(rank, dp):
        return DaliLoader(str(manifest), ByteTokenizer(), "", 24, 16, micro_batch_size=2,
                          dp_rank=rank, dp_size=dp, seed=5, device_id=None)

    caps = {}
    for rank in (0, 1):
        l = loader(rank, 2)
        b = l.next_microbatch()
        assert b["pixel_values"].shape == (2, 3, 16, 16) and b["input_ids"].shape == (2, 24)
        caps[rank] = set(_caption_ids(b)) | set(_caption_ids(l.next_microbatch()))
    assert not caps[0] & caps[1]

    a = loader(0, 1)
    a.next_microbatch()
    state = a.state_dict()
    expected = [_caption_ids(a.next_microbatch()) for _ in range(3)]
    b = loader(0, 1)
    b.load_state_dict(state)
    assert [_caption_ids(b.next_microbatch()) for _ in range(3)] == expected


@pytest.mark.gpu
def test_dali_gpu_decoding_matches_cpu_decoding_and_resumes(tmp_path):
    """"mixed" (nvJPEG) decoding against DALI's CPU decoder on the same samples: pixels within
    2/255 (JPEG decoders may round differently), delivered on the GPU; the loader state round-trips."""
    pytest.importorskip("nvidia.dali")
    from megatron_ext.data.dali import DaliLoader
    from megatron_ext.data.shards import STD

    manifest = make_shards(tmp_path, n_shards=2, per_shard=6, corrupt=())

    def loader(device_id):
        return DaliLoader(str(manifest), ByteTokenizer(), "", 24, 32, micro_batch_size=4,
                          dp_rank=0, dp_size=1, seed=5, device_id=device_id)

    cpu, gpu = loader(None), loader(torch.cuda.current_device())
    for _ in range(2):
        a, b = cpu.next_microbatch(), gpu.next_microbatch()
        assert b["pixel_values"].is_cuda and _caption_ids(a) == _caption_ids(b)
        diff = (a["pixel_values"] - b["pixel_values"].cpu()).abs() * torch.tensor(STD).view(3, 1, 1) * 255
        assert diff.max() <= 2.0 + 1e-3, diff.max()
    state = gpu.state_dict()
    expected = [_caption_ids(gpu.next_microbatch()) for _ in range(2)]
    again = loader(torch.cuda.current_device())
    again.load_state_dict(state)
    assert [_caption_ids(again.next_microbatch()) for _ in range(2)] == expected


def test_pixels_use_the_towers_statistics_and_the_export_preprocesses_exactly_like_training(tmp_path):
    """A CLIP tower normalises with CLIP's mean/std: the loader must too (not 0.5), and the exported
    image processor must give the tower the same tensor for the same image."""
    from transformers import CLIPImageProcessor

    from megatron_ext.data.loader import build_loader, pixel_stats
    from megatron_ext.export.checkpoint import training_image_processor
    from megatron_ext.methods import get_method
    from megatron_ext.training.config import load_config

    manifest = make_shards(tmp_path, n_shards=1, per_shard=2, corrupt=())
    tower = tmp_path / "clip"
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tower)
    clip_mean, clip_std = CLIPImageProcessor().image_mean, CLIPImageProcessor().image_std
    overrides = ["model.method=vlora", f"model.vision_weights={tower}", "data.kind=webdataset",
                 f"data.manifest={manifest}", "data.image_size=16", "data.seq_length=24",
                 "train.micro_batch_size=1", "data.prompt=''"]  # the byte tokenizer: room for the caption
    cfg = load_config(None, overrides)
    assert pixel_stats(cfg, get_method("vlora")) == (tuple(clip_mean), tuple(clip_std))
    vora_cfg = load_config(None, overrides + ["model.method=vora"])
    assert pixel_stats(vora_cfg, get_method("vora"))[0] == (0.5, 0.5, 0.5)

    preset = {"vision": {"hidden_size": 8}, "llm": {"vocab_size": 256}}
    loader = build_loader(cfg, preset, 0, 1, get_method(cfg.model.method))
    batch = loader.next_microbatch()
    uid = int(_caption_ids(batch)[0].split()[-1])
    image = Image.open(io.BytesIO(_jpg((uid * 20 % 255, 0, 0))))
    exported = training_image_processor(cfg, get_method("vlora"), str(tower))(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(exported, batch["pixel_values"], atol=2e-6, rtol=0)
