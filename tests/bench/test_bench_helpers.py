"""The benchmarks' own logic: the CPU peak-memory measure, and that the LLaVA baseline of
bench/bench_vs_llava.py really puts the visual tokens into the sequence while ROSE does not."""

import pytest
import torch


def test_peak_memory_counts_what_a_step_allocates():
    from bench.common import peak_memory

    keep = []

    def step():
        a = torch.empty(1 << 20)          # 4 MiB, freed at return
        b = torch.empty(1 << 19)          # 2 MiB, kept
        keep.append(b)
        del a
        torch.empty(1 << 18)              # 1 MiB, after a's free

    step()
    peak = peak_memory(step)
    assert 6 * 2**20 <= peak < 7 * 2**20  # a and b live together; the 1 MiB reuses a's freed room


def test_interleaved_times_every_variant():
    from bench.common import interleaved

    calls = []
    times = interleaved(calls.append, ["x", "y"], reps=3, warmup=1)
    assert set(times) == {"x", "y"} and all(t >= 0 for t in times.values())
    assert calls == ["x", "y"] * 4  # one warm-up round, then the variants in turn


@pytest.mark.usefixtures("megatron_single_process")
def test_llava_baseline_sequence_holds_the_visual_tokens():
    from bench.bench_vs_llava import Inputs, build, family_preset

    preset = family_preset("tiny", 64)
    inputs = Inputs(preset, text=8, visual=16, batch=2, dtype=torch.float32)
    llava, params = build("llava", preset, 16, torch.float32, "pretrain")
    out, _ = llava(inputs.features, inputs.llava_ids, inputs.llava_pos, None,
                   labels=inputs.llava_labels, loss_mask=inputs.llava_loss_mask)
    assert out.shape == (2, 8 + 16)  # per-token losses over text + visual positions
    assert {id(p) for p in params} == {id(p) for p in llava.vision_projection.parameters()}
    rose, _ = build("rose", preset, 16, torch.float32, "pretrain")
    assert rose(inputs.text, inputs.pos, None, inputs.features, labels=inputs.text).shape == (2, 8)
    for method in ("llava", "rose", "vlora", "vora", "text"):
        model, _ = build(method, preset, 16, torch.float32, "pretrain")
        inputs.loss(method, model).backward()  # every variant's step runs


def test_inference_cost_table_marks_what_a_model_could_not_run(tmp_path):
    from bench.inference_cost import main, markdown

    ok = dict(counted_gflops=6.254, visual_tokens=25, visual_in_sequence=False, tokens=18, forward_s=0.1442)
    costs = {"160": {"rose": ok, "vora": dict(ok, visual_in_sequence=True, tokens=43)},
             "320": {"rose": dict(ok, visual_tokens=100), "vora": dict(refused="ValueError: too big")}}
    md = markdown(costs, ["rose", "vora"])
    assert "| inference GFLOPs per sample, 160 px | 6.25 | 6.25 |" in md
    assert "| visual tokens, 160 px (in the LLM's sequence?) | 25 (no) | 25 (yes) |" in md
    assert "| one forward, 320 px (ms) | 144.2 | - |" in md
    assert "At 320 px vora could not run: `ValueError: too big`." in md
    with pytest.raises(SystemExit):
        main([f"rose={tmp_path}"])  # no config.json: not an export
