"""Captioning backends (vLLM on GPU, transformers anywhere) behind one interface, and prompts."""
