"""Environment adapters for Megatron-Core (see cpu.py)."""
