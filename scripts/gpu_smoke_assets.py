"""Offline inputs for scripts/gpu_smoke.sh, written under one directory:
    aimv2/          a tiny AIMv2 teacher matching the tiny-vora preset (width 40, 4-px patches, 16 px)
    siglip/         a tiny SigLIP tower matching the tiny preset's visual width (48; 4-px patches, 16 px)
    shards/         training shards + manifest.json (the tests' generator: solid-colour JPEGs)
    captioner32/    the tiny random Qwen2.5-VL with head_dim 32 (vLLM's attention backends need >= 32)

    python scripts/gpu_smoke_assets.py OUT_DIR
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "train")]


def main(out: str) -> None:
    import torch
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, SiglipVisionConfig, SiglipVisionModel

    from recaption.tiny import build_tiny_captioner
    from test_data import make_shards  # the generator the DALI and VoRA tests use

    torch.manual_seed(0)
    Aimv2VisionModel(Aimv2VisionConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=16, patch_size=4)
                     ).save_pretrained(os.path.join(out, "aimv2"))
    SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=16, patch_size=4)
                      ).save_pretrained(os.path.join(out, "siglip"))
    shards = os.path.join(out, "shards")
    os.makedirs(shards, exist_ok=True)
    make_shards(__import__("pathlib").Path(shards), n_shards=2, per_shard=8, corrupt=())
    build_tiny_captioner(os.path.join(out, "captioner32"), head_dim=32)
    print(f"smoke assets in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
