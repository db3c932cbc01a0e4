"""Hugging Face checkpoints in and out of Megatron models."""
