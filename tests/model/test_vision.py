"""Vision towers from local Hugging Face directories, and features delivered across pipeline
stages: with the tower on the first stage only, PP=2 loss and tower gradients equal PP=1; TP=2
tower gradients are identical on both ranks and equal TP=1."""

import pytest
import torch

import parallel_helpers


@pytest.fixture(scope="module")
def layouts():
    """TP=2 and PP=2, in the spawn the model tests share (parallel_helpers.py)."""
    return parallel_helpers.layouts(__name__)


IMAGE = 32


def tiny_siglip_config():
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE, patch_size=8)


def test_tower_from_local_dir_equals_the_model(tmp_path):
    from transformers import SiglipVisionModel

    from megatron_ext.hf.vision_tower import VisionTower

    torch.manual_seed(0)
    SiglipVisionModel(tiny_siglip_config()).save_pretrained(tmp_path / "siglip")
    tower = VisionTower.from_pretrained(tmp_path / "siglip", feature_layer=-2)
    ref = SiglipVisionModel.from_pretrained(tmp_path / "siglip")
    px = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        feats = tower(px)
        expected = ref(pixel_values=px, output_hidden_states=True).hidden_states[-2]
    assert feats.shape == (2, 16, 48) and torch.equal(feats, expected)
    # the last block, the final norm and the pooling head do not feed layer -2: frozen
    assert all(not p.requires_grad for n, p in tower.model.named_parameters()
               if ".layers.1." in n or "post_layernorm" in n or n.startswith("head."))
    assert tower.model.get_submodule("encoder.layers.0.mlp.fc1").weight.requires_grad
    with pytest.raises(ValueError, match="feature_layer=5 but the encoder has 2 blocks"):
        VisionTower(ref, feature_layer=5)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        VisionTower.from_pretrained(tmp_path / "missing")


def _model(train_vision):
    from megatron.core import parallel_state

    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from rose_helpers import randomize_generator, tiny_rose

    lm = tiny_rose()
    randomize_generator(lm, scale=0.1)
    torch.manual_seed(1)
    tower = VisionTower.from_config(tiny_siglip_config())  # same weights on every rank
    first = parallel_state.is_pipeline_first_stage()
    return VisionLanguageModel(lm, tower if first else None, lm.rose.equipped_layers(lm.config.num_layers),
                               train_vision)


def _batches(n=4):
    from rose_helpers import inputs
    out = []
    for i in range(n):
        b = inputs(batch=2, seq=12, seed=i)
        b["pixel_values"] = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(i))
        out.append(b)
    return out


def _schedule(model, batches):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ext.core import feature_exchange

    def forward_step(it, model):
        b = next(it)
        out = model(b["input_ids"], b["position_ids"], None, b["pixel_values"], labels=b["labels"])
        return out, lambda o: (o.mean(), {"loss": o.mean().detach()})

    res = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches),
                                      model=[model], num_microbatches=len(batches), seq_length=12,
                                      micro_batch_size=2, forward_only=False)
    feature_exchange.finish()
    return [r["loss"] for r in res]


def _tower_grads(model):
    if model.vision is None:
        return {}
    return {n: p.grad.clone() for n, p in model.vision.named_parameters() if p.requires_grad}


def _record_feature_traffic(log: list) -> None:
    """Log every point-to-point message of the feature exchange: (channel, send|recv, peer, numel).
    Returns what stops the logging (the workers of other modules run in the same processes)."""
    from megatron_ext.core import feature_exchange as fx

    send, recv = fx._send, fx._recv

    def logged_send(tensor, dst, group, channel):
        log.append((channel, "send", dst, tensor.numel()))
        return send(tensor, dst, group, channel)

    def logged_recv(tensor, src, group, channel):
        log.append((channel, "recv", src, tensor.numel()))
        recv(tensor, src, group, channel)

    fx._send, fx._recv = logged_send, logged_recv

    def stop():
        fx._send, fx._recv = send, recv
    return stop


def _pp_worker(rank):
    from megatron.core import parallel_state

    from megatron_ext.parallel import init_parallel

    traffic = []
    stop_recording = _record_feature_traffic(traffic)

    init_parallel(1, 1)
    ref = _model(train_vision=True)
    full = {k: v for k, v in ref.state_dict().items() if torch.is_tensor(v)}
    ref_losses, ref_grads = _schedule(ref, _batches()), _tower_grads(ref)

    init_parallel(1, 2)
    model = _model(train_vision=True)
    offset = 2 * parallel_state.get_pipeline_model_parallel_rank()
    local = {}
    for k in model.state_dict():
        if ".decoder.layers." in k:
            head, rest = k.split(".decoder.layers.")
            i, tail = rest.split(".", 1)
            src = f"{head}.decoder.layers.{int(i) + offset}.{tail}"
        else:
            src = k
        if src in full:
            local[k] = full[src]
    model.load_state_dict(local, strict=False)
    losses = _schedule(model, _batches())
    stop_recording()
    return dict(stage=parallel_state.get_pipeline_model_parallel_rank(), consumers=model.consumers,
                ref_losses=ref_losses, losses=losses, ref_grads=ref_grads, grads=_tower_grads(model),
                rank=rank, traffic=traffic)


def _mismatched_order(a: dict, b: dict) -> list:
    """NCCL matches the messages of one communicator between a rank pair in posting order, on one
    stream: a send of a large tensor waits for its receive. Each channel's messages between a and b
    must therefore pair up in order (a's i-th is a send iff b's i-th is a receive, same size), or
    they can deadlock. Returns the channels where they do not."""
    bad = []
    for channel in {c for c, *_ in a["traffic"] + b["traffic"]}:
        mine = [(k, n) for c, k, peer, n in a["traffic"] if c == channel and peer == b["rank"]]
        theirs = [(k, n) for c, k, peer, n in b["traffic"] if c == channel and peer == a["rank"]]
        flipped = [({"send": "recv", "recv": "send"}[k], n) for k, n in theirs]
        if mine != flipped:
            bad.append(channel)
    return bad


def test_the_order_check_rejects_both_directions_on_one_channel():
    # 1F1B at PP=2 with one group for both directions: stage 0 sends the features of micro-batch 1
    # before it receives the gradient of 0; stage 1 sends that gradient before receiving features 1
    first = dict(rank=0, traffic=[("p2p", "send", 1, 8), ("p2p", "send", 1, 8), ("p2p", "recv", 1, 8)])
    last = dict(rank=1, traffic=[("p2p", "recv", 0, 8), ("p2p", "send", 0, 8), ("p2p", "recv", 0, 8)])
    assert _mismatched_order(first, last) == ["p2p"]


@pytest.mark.multiproc
def test_pp2_features_reach_later_stage_and_tower_gradients_come_back(layouts):
    first, last = sorted(layouts["pp"], key=lambda r: r["stage"])
    assert first["consumers"] == [1]
    torch.testing.assert_close(torch.stack(last["losses"]), torch.stack(last["ref_losses"]),
                               atol=1e-5, rtol=1e-5)
    assert last["grads"] == {}  # the tower lives on the first stage only
    assert first["grads"].keys() == first["ref_grads"].keys()
    for name, g in first["grads"].items():  # includes the gradient sent back by stage 2's VRMG
        torch.testing.assert_close(g, first["ref_grads"][name], atol=1e-5, rtol=1e-4, msg=name)
    assert max(g.abs().max() for g in first["grads"].values()) > 0
    # under 1F1B the features and their gradients never wait on each other's messages (the hang
    # NCCL would show with both directions on one communicator), and the shape header goes once
    assert _mismatched_order(first, last) == []
    sent = [n for c, k, _, n in first["traffic"] if c == "forward" and k == "send"]
    assert len(sent) == 1 + len(last["losses"]) and sent[0] == 4  # header, then one payload per micro-batch
    grads_back = [n for c, k, _, n in last["traffic"] if c == "backward" and k == "send"]
    assert len(grads_back) == len(last["losses"]) and all(n == sent[1] for n in grads_back)


def _tp_worker(rank):
    from megatron.core import parallel_state

    from layout_helpers import shard_for_rank
    from megatron_ext.parallel import init_parallel

    init_parallel(1, 1)
    ref = _model(train_vision=True)
    full = {k: v for k, v in ref.state_dict().items() if torch.is_tensor(v)}
    _schedule(ref, _batches(2))
    ref_grads = _tower_grads(ref)
    init_parallel(2, 1)
    model = _model(train_vision=True)
    model.load_state_dict(shard_for_rank(full, model, parallel_state.get_tensor_model_parallel_rank(), 2),
                          strict=False)
    _schedule(model, _batches(2))
    return dict(ref=ref_grads, grads=_tower_grads(model))


@pytest.mark.multiproc
def test_tp2_tower_gradients_are_identical_across_ranks_and_equal_tp1(layouts):
    a, b = layouts["tp"]
    for name in a["grads"]:
        assert torch.equal(a["grads"][name], b["grads"][name]), name
        torch.testing.assert_close(a["grads"][name], a["ref"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_clip_tower_drops_the_class_token_and_unknown_types_fail(tmp_path):
    import json

    from transformers import CLIPVisionConfig, CLIPVisionModel

    from megatron_ext.hf.vision_tower import VisionTower

    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=IMAGE, patch_size=8))
    tower = VisionTower(clip, feature_layer=-2)
    with torch.no_grad():
        feats = tower(torch.randn(1, 3, IMAGE, IMAGE))
    assert feats.shape == (1, 16, 32)  # 16 patches, class token dropped
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match="vision model type 'resnet' is not supported"):
        VisionTower.from_pretrained(tmp_path)


def test_aimv2_from_local_dir_equals_transformers_and_feeds_vora_teacher(tmp_path):
    """AIMv2 (VoRA's teacher) through vision_tower.py: the chosen layer's hidden states equal
    transformers' own (taken before the final RMSNorm, which stays frozen with the pooling head);
    VoRATeacher gives block i's states per distilled block, re-normalising the loader's pixels
    (mean = std = 0.5) to the teacher processor's statistics."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, CLIPImageProcessor

    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.methods.vora import VoRAConfig, VoRAConfigError, VoRATeacher

    torch.manual_seed(0)
    config = Aimv2VisionConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3,
                               num_attention_heads=4, image_size=16, patch_size=4)
    Aimv2VisionModel(config).save_pretrained(tmp_path / "aimv2")
    ref = Aimv2VisionModel.from_pretrained(tmp_path / "aimv2").eval()
    tower = VisionTower.from_pretrained(tmp_path / "aimv2", feature_layer=2)
    px = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = ref(pixel_values=px, output_hidden_states=True).hidden_states
        assert torch.equal(tower(px), expected[2])
        assert all(torch.equal(a, expected[l]) for a, l in zip(tower.features(px, [1, 3]), [1, 3]))
    assert tower(px).shape == (2, 16, 40)
    assert {"rms_norm.weight", "head.cls_token"} <= tower.unused  # after layer 2: unused, frozen
    assert any(".layers.2." in n for n in tower.unused) and not any(".layers.1." in n for n in tower.unused)
    assert tower.model.get_submodule("embeddings.rms_norm").weight.requires_grad

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    CLIPImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path / "aimv2")
    vora = VoRAConfig(teacher_dim=40, vit_layers=3, patch_size=4, image_size=16)
    teacher = VoRATeacher.from_pretrained(tmp_path / "aimv2", vora, image_size=16)
    assert not any(p.requires_grad for p in teacher.parameters())
    raw = torch.rand(2, 3, 16, 16)  # pixels in [0, 1]: the loader gives (raw - 0.5) / 0.5
    with torch.no_grad():
        feats = teacher((raw - 0.5) / 0.5)
        own = ref(pixel_values=(raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1),
                  output_hidden_states=True).hidden_states
    assert sorted(feats) == [1, 2, 3]
    for l in (1, 2, 3):  # image-major: image 0's 16 tokens, then image 1's
        torch.testing.assert_close(feats[l], own[l].flatten(0, 1), atol=1e-5, rtol=1e-5)
    # vora.embedding_from_teacher (the released config): the student's embedding, on the loader's
    # pixels, equals AIMv2's patch embedding on its own (before the projection to the LLM width)
    from megatron_ext.methods.vora.teacher import embedding_from_teacher
    from megatron_ext.methods.vora.vora_embedding import VisionEmbedding

    emb = VisionEmbedding(**VoRAConfig(teacher_dim=40, patch_size=4, image_size=16, embed_width=40).embedding(),
                          hidden_size=24, eps=config.rms_norm_eps)
    embedding_from_teacher(emb, teacher)
    with torch.no_grad():
        student = (raw[0] - 0.5) / 0.5
        ours = emb.norm(emb.patch(torch.nn.functional.unfold(student[None], 4, stride=4)[0].t())) + emb.positions(4, 4)
        theirs = ref.embeddings((raw[:1] - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with pytest.raises(VoRAConfigError, match="set vora.embed_width to 40 and vora.patch_size to 4"):
        embedding_from_teacher(VisionEmbedding(**VoRAConfig(teacher_dim=40, patch_size=4, image_size=16,
                                                            embed_width=12).embedding(), hidden_size=24), teacher)
    with pytest.raises(VoRAConfigError, match="set the preset's vision.hidden_size to 40"):
        VoRATeacher.from_pretrained(tmp_path / "aimv2", VoRAConfig(teacher_dim=48, vit_layers=3,
                                                                   patch_size=4, image_size=16), 16)
    with pytest.raises(VoRAConfigError, match="the teacher has 3 blocks but block 4 is distilled"):
        VoRATeacher.from_pretrained(tmp_path / "aimv2", VoRAConfig(teacher_dim=40, vit_layers=4,
                                                                   patch_size=4, image_size=16), 16)
    with pytest.raises(VoRAConfigError, match="pairs them token by token"):
        VoRATeacher.from_pretrained(tmp_path / "aimv2", VoRAConfig(teacher_dim=40, vit_layers=3,
                                                                   patch_size=8, image_size=16), 16)
