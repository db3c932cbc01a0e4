"""Which vision encoder to train with: a linear probe on easy-VQA's shape and colour labels.

    python -m bench.bench_vision_probe --efficientnet runs/assets/efficientnet-lite0

Compares, on the same train/test images (easy-VQA, PyPI easy-vqa 1.0; labels read off each image's
own "what shape / what color" answers):
  - EfficientNet-Lite0 (ImageNet weights), frozen: 224 px, its 49 x 1280 tokens mean-pooled;
  - the main job's tiny SigLIP (48 wide, 2 blocks, 8-px patches at 64 px), random and frozen;
  - the same tiny SigLIP trained from scratch together with the probe, for the same steps.
Each probe is one linear layer per label set, AdamW, full-batch steps on standardised features
(the from-scratch run takes mini-batches through the encoder). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from megatron_ext.data.shards import decode_image
from megatron_ext.hf.efficientnet import IMAGENET_MEAN, IMAGENET_STD, convert
from megatron_ext.hf.vision_tower import VisionTower

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


def labelled_images(split: str, limit: int) -> tuple[list[str], torch.Tensor]:
    """Image paths and (shape, colour) label indices, from the image's own what-questions."""
    import easy_vqa

    questions, answers, ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    shape, colour = {}, {}
    for q, a, i in zip(questions, answers, ids):
        if q.startswith("what") and a in SHAPES:
            shape[i] = SHAPES.index(a)
        elif q.startswith("what") and a in COLOURS:
            colour[i] = COLOURS.index(a)
    keep = sorted(set(shape) & set(colour))[:limit]
    return [paths[i] for i in keep], torch.tensor([[shape[i], colour[i]] for i in keep])


def pixels(paths: list[str], size: int, mean, std) -> torch.Tensor:
    return torch.stack([decode_image(open(p, "rb").read(), size, mean, std) for p in paths])


@torch.no_grad()
def encode(tower, px: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([tower(px[i:i + batch]).mean(1) for i in range(0, len(px), batch)])


def probe(train_x, train_y, test_x, test_y, steps: int, lr: float = 1e-2) -> list[float]:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    heads = nn.ModuleList([nn.Linear(train_x.shape[1], len(SHAPES)), nn.Linear(train_x.shape[1], len(COLOURS))])
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-2)
    for _ in range(steps):
        loss = sum(nn.functional.cross_entropy(h(train_x), train_y[:, j]) for j, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return [float((h(test_x).argmax(-1) == test_y[:, j]).float().mean()) for j, h in enumerate(heads)]


def tiny_siglip():
    from transformers import SiglipVisionConfig

    torch.manual_seed(0)
    return VisionTower.from_config(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                      num_attention_heads=4, image_size=64, patch_size=8))


def from_scratch(train_px, train_y, test_px, test_y, steps: int, batch: int = 64) -> list[float]:
    tower = tiny_siglip()
    tower.set_trainable(True)
    heads = nn.ModuleList([nn.Linear(tower.width, len(SHAPES)), nn.Linear(tower.width, len(COLOURS))])
    params = [p for p in tower.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train_px), (batch,), generator=g)
        feats = tower(train_px[idx]).mean(1)
        loss = sum(nn.functional.cross_entropy(h(feats), train_y[idx, j]) for j, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tower.eval()
    feats = encode(tower, test_px)
    with torch.no_grad():
        return [float((h(feats).argmax(-1) == test_y[:, j]).float().mean()) for j, h in enumerate(heads)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientnet", default="runs/assets/efficientnet-lite0",
                    help="EfficientNet-Lite0 folder (written there if absent)")
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    train_paths, train_y = labelled_images("train", args.train)
    test_paths, test_y = labelled_images("test", args.test)
    rows = []

    t0 = time.perf_counter()
    eff = VisionTower.from_pretrained(convert(args.efficientnet)).eval()
    tr, te = (encode(eff, pixels(p, 224, IMAGENET_MEAN, IMAGENET_STD)) for p in (train_paths, test_paths))
    rows.append(("EfficientNet-Lite0, ImageNet weights, frozen (224 px, 49 x 1280)",
                 probe(tr, train_y, te, test_y, args.steps), time.perf_counter() - t0))

    t0 = time.perf_counter()
    half = (0.5,) * 3
    train_px, test_px = pixels(train_paths, 64, half, half), pixels(test_paths, 64, half, half)
    tiny = tiny_siglip().eval()
    rows.append(("tiny SigLIP, random, frozen (64 px, 64 x 48)",
                 probe(encode(tiny, train_px), train_y, encode(tiny, test_px), test_y, args.steps),
                 time.perf_counter() - t0))
    t0 = time.perf_counter()
    rows.append((f"tiny SigLIP trained from scratch with the probe ({args.steps} steps x 64)",
                 from_scratch(train_px, train_y, test_px, test_y, args.steps), time.perf_counter() - t0))

    print(f"easy-VQA linear probe: {len(train_paths)} train / {len(test_paths)} test images, "
          f"{args.steps} steps; chance: shape {1 / len(SHAPES):.2f}, colour {1 / len(COLOURS):.2f}\n")
    print("| encoder | shape acc | colour acc | wall s |\n|---|---|---|---|")
    for name, (shape, colour), secs in rows:
        print(f"| {name} | {shape:.3f} | {colour:.3f} | {secs:.0f} |")
    majority = [float(np.bincount(test_y[:, j].numpy()).max() / len(test_y)) for j in range(2)]
    print(f"| majority class | {majority[0]:.3f} | {majority[1]:.3f} | - |")


if __name__ == "__main__":
    main()
