"""Tiny VLoRA/VoRA models, inputs and weight loading shared by single- and multi-process tests."""

import torch

from megatron_ext.core.presets import load_preset

VLORA = load_preset("tiny-vlora")
VORA = load_preset("tiny-vora")
VOCAB = VLORA["llm"]["vocab_size"]


def vlora_inputs(batch=2, seq=16, visual_tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    return dict(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq), attention_mask=None,
                visual_features=torch.randn(batch, visual_tokens, VLORA["vision"]["hidden_size"], generator=g),
                labels=torch.roll(ids, -1, dims=1))


def randomize(model, names=("lora_B",), seed=0, scale=0.05):
    """Give zero-initialised adapters (W_s, LoRA B) non-zero values so the branch does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def tiny_vlora(**kwargs):
    from megatron_ext.methods.vlora import build_vlora

    torch.manual_seed(0)
    return build_vlora(VLORA, backend="local", **kwargs)


def plain_gpt(config, preset=VLORA, seed=1):
    """Megatron's own GPTModel with the local spec: the base LLM the methods must reproduce."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    torch.manual_seed(seed)
    llm = preset["llm"]
    return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), llm["vocab_size"],
                    llm["max_position_embeddings"], position_embedding_type="rope",
                    rotary_base=llm["rope_theta"])


def load_base(model, plain) -> None:
    """Load a plain GPTModel's weights into a LoRA-style model: same keys, adapters stay as they are."""
    missing, unexpected = model.language_model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(".lora_" in k or ".aux_head." in k for k in missing), missing


def clone_state(model) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}


def run_schedule(model, batches, forward):
    """Megatron's forward-backward schedule (1F1B under PP) over `batches`; `forward(model, batch)`
    returns the per-token loss. Returns the losses the last stage reports."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        out = forward(model, next(data_iterator))  # every stage reads the whole micro-batch
        return out, lambda o: (o.mean(), {"loss": o.mean().detach()})

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=batches[0]["input_ids"].shape[1],
        micro_batch_size=batches[0]["input_ids"].shape[0], forward_only=False)


def stage_state_dict(full: dict, model) -> dict:
    """The entries of a PP=1 state dict that this pipeline stage holds, layers renumbered locally."""
    from megatron_ext.core.specs import stage_layers

    layers = list(stage_layers(model.config))
    own = model.state_dict()
    local = {}
    for key, value in full.items():
        if ".decoder.layers." in key:
            head, rest = key.split(".decoder.layers.")
            index, tail = rest.split(".", 1)
            if int(index) + 1 not in layers:
                continue
            key = f"{head}.decoder.layers.{int(index) - (layers[0] - 1)}.{tail}"
        if key in own:
            local[key] = value
    return local


def grads(params) -> dict:
    return {n: p.grad.clone() for n, p in params if p.grad is not None}


def tiny_vora(**kwargs):
    from megatron_ext.methods.vora import build_vora

    torch.manual_seed(0)
    return build_vora(VORA, backend="local", **kwargs)


class ToyTeacher(torch.nn.Module):
    """A frozen stand-in for the ViT: patchify, then one random linear + tanh per block."""

    def __init__(self, blocks=3, width=VORA["vision"]["hidden_size"], patch=VORA["vora"]["patch_size"], seed=7):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = patch
        self.embed = torch.nn.Parameter(torch.randn(3 * patch * patch, width, generator=g) / (3 * patch * patch) ** 0.5,
                                        requires_grad=False)
        self.blocks = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(width, width, generator=g) / width ** 0.5, requires_grad=False)
            for _ in range(blocks))

    @torch.no_grad()
    def forward(self, images):
        x = torch.cat([torch.nn.functional.unfold(i[None], self.patch, stride=self.patch)[0].t() for i in images])
        x = x @ self.embed
        feats = []
        for w in self.blocks:
            x = torch.tanh(x @ w) + x
            feats.append(x.clone())
        return feats


def vora_inputs(batch=2, seq=32, seed=0, image_sizes=((16, 16), (8, 12))):
    """A packed batch: sample 0 holds text, image 0, text, image 1, text; sample 1 is text only
    except image 2 (if given) at its start. Images are numbered in order of appearance."""
    g = torch.Generator().manual_seed(seed)
    p = VORA["vora"]["patch_size"]
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    image_ids = torch.full((batch, seq), -1)
    images = [torch.randn(3, h, w, generator=g) for h, w in image_sizes]
    n = [(h // p) * (w // p) for h, w in image_sizes]
    start = 2
    for j in range(min(2, len(n))):  # two images in sample 0, with text between and after
        image_ids[0, start:start + n[j]] = j
        start += n[j] + 2
    for j in range(2, len(n)):
        image_ids[1, 1:1 + n[j]] = j
    assert start <= seq
    return dict(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq), images=images,
                image_ids=image_ids, labels=torch.roll(ids, -1, dims=1))
