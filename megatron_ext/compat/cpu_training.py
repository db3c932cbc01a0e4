"""CPU adapters for Megatron-Core's DDP, optimizers and gradient clipping (dev/CI only).

compat/cpu.py covers the model and the pipeline schedule. The training pieces assume
CUDA in a few more places that have nothing to do with the math: `device="cuda"` scalars in
optimizer.py / clip_grads.py / param_and_grad_buffer.py, and the distributed optimizer's
`param.type() == 'torch.cuda.FloatTensor'` dispatch. `install()` routes the former to the CPU;
`mark_params()` makes the latter see CPU parameters under their CUDA type names; and the
distributed optimizer's checkpointing is made to work with torch's Adam (what runs without
TE/Apex). Nothing here is active when CUDA is present.
"""

from __future__ import annotations

import importlib
import logging
import types

import torch

from megatron_ext.compat import cpu as cpu_compat

log = logging.getLogger(__name__)
_installed = False
_MODULES = ("megatron.core.optimizer.optimizer", "megatron.core.optimizer.clip_grads",
            "megatron.core.optimizer.distrib_optimizer",
            "megatron.core.distributed.param_and_grad_buffer",
            "megatron.core.distributed.distributed_data_parallel", "megatron.core.utils")
_FACTORIES = ("zeros", "ones", "empty", "tensor", "full", "zeros_like", "empty_like")


_on_cpu = cpu_compat.on_cpu


def _cpu_torch() -> types.ModuleType:
    """A stand-in for `torch` whose tensor factories turn device='cuda' into the CPU."""
    proxy = types.ModuleType("torch_cpu_proxy")
    proxy.__dict__.update({k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    for name in _FACTORIES:
        real = getattr(torch, name)

        def factory(*args, _real=real, device=None, **kwargs):
            return _real(*args, device=_on_cpu(device), **kwargs)

        setattr(proxy, name, factory)
    return proxy


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """clip_grads.clip_grad_by_total_norm_fp32 without its `grad.type() == 'torch.cuda.FloatTensor'`
    assertion (the dtype is what matters; checked as such)."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    assert all(g.dtype == torch.float32 for g in grads), "gradient clipping expects fp32 main grads"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def _patch_torch_adam_state() -> None:
    """The distributed optimizer's checkpoint code expects TE/Apex FusedAdam, which keeps `step` in
    the param groups; torch's Adam (the one available without them) keeps a `step` tensor per
    parameter. Two consequences, fixed here: loading copies a `step` entry the saved per-parameter
    state does not have (KeyError), and load_state_dict gives every parameter the *same* step
    tensor, which torch's Adam then increments in place once per parameter."""
    from megatron.core.optimizer import distrib_optimizer as dopt

    cls = dopt.DistributedOptimizer
    set_states, load_state_dict = cls._set_main_param_and_optimizer_states, cls.load_state_dict

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        # the step comes from the saved param_groups (load_state_dict set it already); a per-rank
        # (dp_reshardable) checkpoint hands back the current, not the saved, per-parameter step
        tensors = {k: v for k, v in tensors.items() if k != "step"}
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        step = self.optimizer.state[main_param].pop("step", None)
        try:
            return set_states(self, model_param, tensors)
        finally:
            if step is not None:
                self.optimizer.state[main_param]["step"] = step

    def _load_state_dict(self, state_dict):
        load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    state_dict = cls.state_dict

    def _state_dict(self):
        """A rank with nothing to train (a pipeline stage of frozen layers, e.g. LLaVA S1's later
        stages) has no per-parameter state to read the step from: it has taken none."""
        if self.optimizer.state:
            return state_dict(self)
        saved = {k: v for k, v in self.optimizer.state_dict().items() if k != "state"}
        saved["param_groups"] = [dict({k: v for k, v in g.items() if k != "params"}, step=0)
                                 for g in saved["param_groups"]]
        out = {"optimizer": saved}
        if self.grad_scaler:
            out["grad_scaler"] = self.grad_scaler.state_dict()
        return out

    cls._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    cls.load_state_dict = _load_state_dict
    cls.state_dict = _state_dict


def install() -> bool:
    """Activate the adapters (and the model-side ones). False on a CUDA machine."""
    global _installed
    if not cpu_compat.install():
        return False
    if not _installed:
        proxy = _cpu_torch()
        for name in _MODULES:
            importlib.import_module(name).torch = proxy
        importlib.import_module("megatron.core.optimizer.optimizer").clip_grad_by_total_norm_fp32 = \
            _clip_grad_by_total_norm_fp32
        _patch_torch_adam_state()
        _installed = True
    return True


def mark_params(model: torch.nn.Module) -> None:
    """Let Megatron's dtype dispatch (`param.type()`) see CPU params as their CUDA counterparts."""
    if torch.cuda.is_available():
        return
    real = torch.Tensor.type
    for p in model.parameters():
        def type_(dtype=None, non_blocking=False, _p=p, **kwargs):
            if dtype is None:
                name = real(_p)
                return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
            return real(_p, dtype, non_blocking, **kwargs)
        p.type = type_
