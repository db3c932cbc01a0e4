"""data.task qa (S3 as instruction tuning): one item per question-answer pair of a training sample,
the question as the user turn of the chat format, the loss on exactly the answer tokens and
<|im_end|>; each pair comes with its own image. With the real Qwen2.5 tokenizer (built offline)."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from train_helpers import ROOT, qwen_tokenizer

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]


def _member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def qa_shards(root, pairs_per_sample=(3, 0, 2, 1, 4)):
    """Sample k: a solid image of COLOURS[k] whose questions name k (sample 1 has no pairs)."""
    with tarfile.open(root / "train-000000.tar", "w") as tar:
        for k, n in enumerate(pairs_per_sample):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), COLOURS[k]).save(buf, format="PNG")  # lossless: the colour is exact
            qa = [[f"what is question {j} of image {k}?", f"answer {k}.{j}"] for j in range(n)]
            _member(tar, f"{k:09d}.png", buf.getvalue())
            _member(tar, f"{k:09d}.txt", f"a caption of image {k}".encode())
            _member(tar, f"{k:09d}.json", json.dumps({"uid": k, "qa": json.dumps(qa)}).encode())
    n = len(pairs_per_sample)
    (root / "manifest.json").write_text(json.dumps({"format": "webdataset", "num_shards": 1, "num_samples": n,
                                                    "shards": [{"tar": "train-000000.tar", "samples": n}]}))
    return root / "manifest.json", sum(pairs_per_sample)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return qwen_tokenizer(tmp_path_factory.mktemp("qwen") / "tok")


def _s3_loader(qwen, manifest, *overrides):
    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config

    cfg = load_config(str(ROOT / "configs" / "train" / "main" / "rose-s3.yaml"),
                      [f"data.tokenizer={qwen[0]}", f"data.manifest={manifest}", *overrides])
    return cfg, build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method))


def test_loss_mask_covers_exactly_the_answer_and_im_end(qwen, tmp_path):
    _, tok = qwen
    manifest, n_pairs = qa_shards(tmp_path)
    cfg, loader = _s3_loader(qwen, manifest)
    assert cfg.data.task == "qa"  # the main job's S3 instruction-tunes
    assert len(loader.dataset) == n_pairs  # one item per pair; the sample without pairs is left out
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    seen = set()
    for _ in range(n_pairs // cfg.train.micro_batch_size):
        batch = loader.next_microbatch()
        for ids, labels, mask, pixels in zip(batch["input_ids"], batch["labels"], batch["loss_mask"],
                                             batch["pixel_values"]):
            text = tok.decode(ids)
            question = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
            k, j = int(question.split("image ")[1].rstrip("?")), int(question.split("question ")[1].split()[0])
            prompt = tok(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
            assert ids[:len(prompt)].tolist() == prompt
            answer = tok(f"answer {k}.{j}")["input_ids"] + [im_end]
            # the loss falls on exactly the answer and its end-of-turn token, nothing of the question
            assert labels[mask.bool()].tolist() == answer
            first = len(prompt) - 1  # the position that predicts the answer's first token
            assert mask[:first].sum() == 0 and mask[first:first + len(answer)].all()
            assert mask[first + len(answer):].sum() == 0 and (labels[first + len(answer):] == pad).all()
            # the pair's image is its own sample's: the colour the questions name
            mean = torch.tensor(loader.dataset.mean).view(3, 1, 1)
            std = torch.tensor(loader.dataset.std).view(3, 1, 1)
            rgb = ((pixels * std + mean) * 255).mean(dim=(1, 2)).round()
            assert rgb.tolist() == [float(c) for c in COLOURS[k]], (k, rgb)
            seen.add((k, j))
    assert seen <= {(k, j) for k, n in enumerate((3, 0, 2, 1, 4)) for j in range(n)} and len(seen) == 8


def test_caption_task_still_trains_on_the_training_text(qwen, tmp_path):
    manifest, _ = qa_shards(tmp_path)
    _, loader = _s3_loader(qwen, manifest, "data.task=caption", "data.prompt=Describe the image.")
    assert len(loader.dataset) == 5
    text = qwen[1].decode(loader.next_microbatch()["input_ids"][0])
    assert "Describe the image." in text and "a caption of image" in text


def test_qa_without_pairs_and_qa_with_dali_are_clear_errors(qwen, tmp_path):
    from megatron_ext.training.config import ConfigError, load_config, validate

    manifest, _ = qa_shards(tmp_path, pairs_per_sample=(0, 0))
    with pytest.raises(ValueError, match="no question-answer pairs to train on"):
        _s3_loader(qwen, manifest)
    cfg = load_config(str(ROOT / "configs" / "train" / "main" / "rose-s3.yaml"),
                      [f"data.manifest={manifest}", "data.kind=dali", "parallel.tensor=1"])
    with pytest.raises(ConfigError, match="data.task 'qa' with data.kind=dali"):
        validate(cfg, 1)
