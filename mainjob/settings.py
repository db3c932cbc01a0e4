"""What the main job runs per method and per size: the only place its defaults live."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Method:
    stages: tuple            # training stages in order; configs/train/main/<method>-<stage>.yaml
    tower: str               # the vision encoder: ROSE/VLoRA feed its features, VoRA distils from it


METHODS = {
    "rose": Method(("s1", "s2", "s3"), "siglip"),
    "vlora": Method(("s1", "s2"), "clip"),
    "vora": Method(("s1", "s2"), "aimv2"),
}


@dataclass(frozen=True)
class Size:
    good_images: int         # generated images besides the hostile cases (pipeline.demo_data)
    easyvqa_images: int      # easy-VQA train images, with their question-answer pairs
    steps_scale: float       # multiplies each stage config's train.steps
    samples_per_shard: int


SIZES = {
    "default": Size(good_images=16, easyvqa_images=240, steps_scale=1.0, samples_per_shard=32),
    "smallest": Size(good_images=8, easyvqa_images=40, steps_scale=0.25, samples_per_shard=8),  # the end-to-end test
}

TENSOR_PARALLEL = 2          # two torchrun processes, one model split over both
IMAGE_SIZE = 64              # the towers' input; configs/train/main/*.yaml data.image_size
PROMPT = "what shape is in the image?"  # the held-out question (S3 instruction-tunes on easy-VQA's)


def train_config(method: str, stage: str):
    return ROOT / "configs" / "train" / "main" / f"{method}-{stage}.yaml"
