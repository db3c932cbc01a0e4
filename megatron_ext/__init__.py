"""Megatron-Core extensions: parameter-space vision injection (ROSE; VLoRA and VoRA build on it)."""
