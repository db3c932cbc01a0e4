"""ROSE on Transformer Engine layers (bf16 and FP8). GPU only: skipped on CPU with a reason."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("megatron_single_process")]


def _pair(dtype):
    """The same ROSE model (every layer equipped, so both backends have one structure) built on
    Megatron local layers and on TE layers, with the local weights copied into the TE model."""
    from megatron_ext.methods.rose import build_rose
    from rose_helpers import PRESET, randomize_generator

    torch.manual_seed(0)
    local = build_rose(PRESET, backend="local", dtype=dtype, layers=[1, 2, 3, 4]).cuda()
    randomize_generator(local, scale=0.05)
    te = build_rose(PRESET, backend="te", dtype=dtype, layers=[1, 2, 3, 4]).cuda()
    state = {k: v for k, v in local.state_dict().items() if not k.endswith("_extra_state")}
    missing, unexpected = te.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return local, te


def _batch():
    from rose_helpers import inputs
    return {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in inputs(batch=2, seq=32).items()}


def test_te_layers_match_local_layers_in_bf16():
    local, te = _pair(torch.bfloat16)
    assert te.backend == "te"
    b = _batch()
    with torch.no_grad():
        ref = local(b["input_ids"], b["position_ids"], None, b["visual_features"]).float()
        out = te(b["input_ids"], b["position_ids"], None, b["visual_features"]).float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999, cos


def test_te_fp8_rose_trains_the_generator_and_stays_close_to_bf16():
    from transformer_engine.pytorch.fp8 import check_fp8_support

    ok, why = check_fp8_support()
    if not ok:
        pytest.skip(f"GPU without FP8: {why}")
    from megatron_ext.methods.rose import build_rose
    from rose_helpers import PRESET

    torch.manual_seed(0)
    bf16 = build_rose(PRESET, backend="te", dtype=torch.bfloat16).cuda()
    torch.manual_seed(0)
    fp8 = build_rose(PRESET, backend="te", dtype=torch.bfloat16,
                     config_overrides=dict(fp8="hybrid", fp8_recipe="tensorwise")).cuda()
    fp8.load_state_dict(bf16.state_dict(), strict=False)
    b = _batch()
    loss_bf16 = bf16(**b).float().mean()
    loss_fp8 = fp8(**b).float().mean()
    assert torch.isfinite(loss_fp8) and abs(loss_fp8.item() - loss_bf16.item()) < 0.05 * abs(loss_bf16.item())
    loss_fp8.backward()
    assert fp8.vrmg.generators["2"].to_T["q"].weight.grad.abs().max() > 0
