"""The method registry: name -> MethodSpec, the way torchtitan's registry returns a ModelSpec and
PEFT registers a tuner (register_peft_method). megatron_ext/methods/__init__.py registers the
built-in methods, one line each."""

from __future__ import annotations

from megatron_ext.methods.spec import MethodSpec

_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; a second method under the same name is refused (it would shadow the first)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered; choose another name")
    _REGISTRY[spec.name] = spec
    return spec


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r}: choose one of {method_names()}") from None
