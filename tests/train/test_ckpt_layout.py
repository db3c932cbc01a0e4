"""core/ckpt_layout.py on hand-built sharded state dicts: a layer-stacked tensor becomes one
entry per global layer, the wrapper's `lm.` prefix leaves the stored keys, and a pipeline replica is
marked as a non-main replica on later stages; nested dicts and lists are walked alike."""
import torch
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

from megatron_ext.core.ckpt_layout import mark_pipeline_replicas, per_layer, strip_wrapper_prefix

KEY = "lm.decoder.layers.self_attention.linear_proj.weight"


def _stacked(layer: int, layers: int = 4) -> ShardedTensor:
    return ShardedTensor.from_rank_offsets(KEY, torch.zeros(3, 5), (0, layer, layers), prepend_axis_num=1)


def test_per_layer_keys_each_layer_globally_in_dicts_and_lists():
    tree = {"a": _stacked(2), "b": [_stacked(3), {"c": ShardedObject("lm.decoder.layers.extra", 1, (4,), (1,), 0)}],
            "other": ShardedTensor.from_rank_offsets("lm.embedding.weight", torch.zeros(2, 2))}
    out = per_layer(tree)
    assert out["a"].key == "lm.decoder.layers.2.self_attention.linear_proj.weight"
    assert out["a"].global_shape == (1, 3, 5) and out["a"].global_offset == (0, 0, 0)
    assert out["b"][0].key == "lm.decoder.layers.3.self_attention.linear_proj.weight"
    assert out["b"][1]["c"].key == "lm.decoder.layers.1.extra" and out["b"][1]["c"].global_shape == (1,)
    assert out["other"] is tree["other"] and tree["a"].key == KEY  # untouched; out of place


def test_a_factory_takes_the_layer_of_the_tensors_it_builds():
    def build(key, data, replica_id, flattened_range):
        return [ShardedTensor.from_rank_offsets(key + "_w", data, (0, 1, 4), prepend_axis_num=1)]

    factory = ShardedTensorFactory("lm.decoder.layers.mlp.linear_fc1.weight", torch.zeros(2, 2), build, lambda x: x)
    out = per_layer({"f": factory})["f"]
    assert out.key == "lm.decoder.layers.1.mlp.linear_fc1.weight"
    built = out.build_fn(factory.key, out.data, out.replica_id, None)  # what it builds is split per layer too
    assert built[0].key == "lm.decoder.layers.1.mlp.linear_fc1.weight_w" and built[0].global_shape == (1, 2, 2)


def test_strip_prefix_and_mark_replicas():
    shared = torch.zeros(2)
    tree = {"g": [ShardedTensor.from_rank_offsets("lm.generator.w", shared, replica_id=0)],
            "x": ShardedTensor.from_rank_offsets("lm.x", torch.zeros(2))}
    stripped = strip_wrapper_prefix(tree)
    assert stripped["g"][0].key == "generator.w" and stripped["x"].key == "x"
    assert mark_pipeline_replicas(tree, [shared], pp_rank=0) is tree
    marked = mark_pipeline_replicas(tree, [shared], pp_rank=2)
    assert marked["g"][0].replica_id == (2,) and marked["x"].replica_id == 0
