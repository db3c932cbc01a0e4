"""What each method of the four-way comparison receives, measured on the exact tensors: the pixels
its loader gives (data.loader.pixel_stats, ShardDataset.decode_image), the frozen EfficientNet
features those pixels give at the trained 160 px, whether shape and colour can be read off them
(a linear probe, on raw and on standardised features), and the scale of LLaVA's projected tokens
at initialisation against SmolLM2's own token embeddings.

    python -m bench.fourway_probe --assets runs/main/assets [--images 600] [--out docs/results/probe.json]

Images: easy-VQA's TRAIN split (the first --images are the main job's training images; the probe
trains on the first 80% of them and scores the rest). Prints a markdown summary, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from megatron_ext.data import easyvqa
from megatron_ext.data.loader import pixel_stats
from megatron_ext.data.shards import decode_image
from megatron_ext.methods import get_method
from megatron_ext.training.config import load_config
from mainjob.settings import train_config

IMAGE_SIZE = 160


def labelled(samples) -> tuple[list, torch.Tensor]:
    """Images whose own questions fix both colour and shape; labels (shape, colour) as indices."""
    keep, labels = [], []
    cs = easyvqa.colours()
    for s in samples:
        colour, shape = easyvqa.colour_and_shape(s)
        if colour and shape:
            keep.append(s)
            labels.append((easyvqa.SHAPES.index(shape), cs.index(colour)))
    return keep, torch.tensor(labels)


def method_pixels(method: str, assets: Path, paths: list) -> tuple[tuple, tuple, torch.Tensor]:
    """(mean, std, pixels) exactly as the method's S1 loader normalises them."""
    cfg = load_config(str(train_config(method, "s1")), [f"model.vision_weights={assets / 'efficientnet-lite0'}"])
    mean, std = pixel_stats(cfg, get_method(method))
    px = torch.stack([decode_image(Path(p).read_bytes(), IMAGE_SIZE, mean, std) for p in paths])
    return mean, std, px


def probe(x_train, y_train, x_test, y_test, standardise: bool, steps: int = 300, lr: float = 1e-2) -> list:
    """Accuracy of one linear layer per label set (shape, colour), full-batch Adam."""
    if standardise:
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    torch.manual_seed(0)
    heads = nn.ModuleList([nn.Linear(x_train.shape[1], 3), nn.Linear(x_train.shape[1], 8)])
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        sum(nn.functional.cross_entropy(h(x_train), y_train[:, j]) for j, h in enumerate(heads)).backward()
        opt.step()
    with torch.no_grad():
        return [float((h(x_test).argmax(1) == y_test[:, j]).float().mean()) for j, h in enumerate(heads)]


def between_within(x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of the features' total variance that lies between the classes of y."""
    total = x.var(0, unbiased=False).sum()
    means = torch.stack([x[y == c].mean(0) for c in y.unique()])
    weights = torch.stack([(y == c).float().mean() for c in y.unique()])
    between = (weights[:, None] * (means - x.mean(0)) ** 2).sum()
    return float(between / total)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default="runs/main/assets")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--out", default="docs/results/probe.json")
    args = ap.parse_args(argv)
    from megatron_ext.hf.vision_tower import VisionTower

    assets = Path(args.assets).resolve()
    samples, y = labelled(easyvqa.load_split("train")[:args.images])
    paths = [s.image_path for s in samples]
    out = dict(images=len(samples), image_size=IMAGE_SIZE, pixels={}, features={}, probe={})
    pix = {}
    for method in ("llava", "rose", "vlora", "vora"):
        mean, std, px = method_pixels(method, assets, paths)
        pix[method] = px
        out["pixels"][method] = dict(mean=list(mean), std=list(std),
                                     channel_mean=[round(float(v), 3) for v in px.mean((0, 2, 3))],
                                     channel_std=[round(float(v), 3) for v in px.std((0, 2, 3))])
    tower = VisionTower.from_pretrained(assets / "efficientnet-lite0", feature_layer=-1).eval()
    with torch.no_grad():
        feats = torch.cat([tower(pix["llava"][i:i + 32]) for i in range(0, len(paths), 32)])  # (N, 25, 1280)
    pooled = feats.mean(1)
    n = int(0.8 * len(paths))
    shape_y, colour_y = y[:, 0], y[:, 1]
    out["features"] = dict(
        tokens=feats.shape[1], width=feats.shape[2], value_mean=float(feats.mean()), value_max=float(feats.max()),
        token_norm_mean=float(feats.norm(dim=-1).mean()), zero_fraction=float((feats == 0).float().mean()),
        variance_between_shapes=between_within(pooled, shape_y),
        variance_between_colours=between_within(pooled, colour_y))
    for name, x in (("mean-pooled", pooled), ("tokens concatenated", feats.flatten(1))):
        for standardise in (False, True):
            acc = probe(x[:n], y[:n], x[n:], y[n:], standardise)
            out["probe"][f"{name}, {'standardised' if standardise else 'raw'}"] = dict(shape=acc[0], colour=acc[1])
    out["majority"] = dict(shape=float(torch.bincount(shape_y[n:]).max() / (len(y) - n)),
                           colour=float(torch.bincount(colour_y[n:]).max() / (len(y) - n)))
    out["llava_init"] = projector_scale(assets, feats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


def projector_scale(assets: Path, feats: torch.Tensor) -> dict:
    """LLaVA's projector at initialisation (its own module, seeded as training seeds it) on these
    features, against the norms of SmolLM2's token embeddings (the whole table, and the tokens of
    the chat-formatted easy-VQA prompts the visual tokens sit beside)."""
    from safetensors.torch import load_file

    from megatron_ext.data.text import build_tokenizer
    from megatron_ext.methods.llava.model import LlavaProjector

    llm = assets / "smollm2-135m-instruct"
    weights = {}
    for f in sorted(llm.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    emb = next(v for k, v in weights.items() if k.endswith("embed_tokens.weight")).float()
    tok = build_tokenizer(str(llm))
    q = easyvqa.load_split("train")[0].pairs[0][0]
    ids = tok.encode(tok.format_prompt(q))
    torch.manual_seed(1234)
    proj = LlavaProjector(feats.shape[-1], emb.shape[1])
    with torch.no_grad():
        v = proj(feats[:64])
    return dict(projected_token_norm_mean=float(v.norm(dim=-1).mean()),
                projected_token_norm_max=float(v.norm(dim=-1).max()),
                embedding_norm_mean=float(emb.norm(dim=-1).mean()),
                embedding_norm_prompt_tokens=float(emb[ids].norm(dim=-1).mean()),
                prompt_tokens=len(ids))


if __name__ == "__main__":
    sys.exit(main())
