"""VLoRA and VoRA on Transformer Engine layers (bf16), against the same models on Megatron's local
layers. GPU only: skipped on CPU with a reason. Every layer is equipped so that both backends have
the same structure (TE fuses the pre-norms into unequipped linears)."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("megatron_single_process")]


def _pair(method, **overrides):
    from lora_helpers import VLORA, VORA, randomize
    from megatron_ext.methods import build_model

    preset = VLORA if method == "vlora" else VORA
    torch.manual_seed(0)
    local = build_model(preset, method, backend="local", dtype=torch.bfloat16, **overrides).cuda()
    randomize(local, scale=0.05)
    te = build_model(preset, method, backend="te", dtype=torch.bfloat16, **overrides).cuda()
    state = {k: v for k, v in local.state_dict().items() if not k.endswith("_extra_state")}
    missing, unexpected = te.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return local, te


def _cuda(batch):
    return {k: (v.cuda() if torch.is_tensor(v) else [t.cuda() for t in v] if isinstance(v, list) else v)
            for k, v in batch.items()}


def _close(a, b):
    cos = torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)
    assert cos > 0.999, cos


def test_vlora_on_te_matches_local_and_merges():
    from lora_helpers import vlora_inputs

    local, te = _pair("vlora", layers=[1, 2, 3, 4])
    assert te.backend == "te"
    b = _cuda(vlora_inputs(batch=2, seq=32))
    with torch.no_grad():
        ref = local(b["input_ids"], b["position_ids"], None, b["visual_features"])
        out = te(b["input_ids"], b["position_ids"], None, b["visual_features"])
        _close(out, ref)
        image = b["visual_features"][:1]
        branch = te(b["input_ids"], b["position_ids"], None, image.expand(2, -1, -1))
        te.merge_image(image)
        _close(te(b["input_ids"], b["position_ids"], None), branch)
        te.unmerge_image()
    te(**b).float().mean().backward()
    assert te.generator.to_W_v["q"].weight.grad.abs().max() > 0


def test_vora_on_te_arbitrary_mask_matches_local_and_merges():
    from lora_helpers import ToyTeacher, vora_inputs

    local, te = _pair("vora", vit_layers=4)
    b = _cuda(vora_inputs())
    with torch.no_grad():
        ref = local(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"])
        out = te(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"])
        _close(out, ref)  # TE's arbitrary-mask attention sees what the local attention sees
        te.merge()
        _close(te(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"]), out)
        te.unmerge()
    feats = [f.cuda() for f in ToyTeacher(blocks=4)([i.cpu() for i in b["images"]])]
    te(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"],
       teacher_features=feats, labels=b["labels"]).float().mean().backward()
    assert set(te.distill_losses) == {1, 2, 3, 4}
    assert te.vision_embedding.patch.weight.grad.abs().max() > 0
