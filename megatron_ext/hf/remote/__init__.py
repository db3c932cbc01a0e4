"""Modeling code shipped inside exported Hugging Face folders (loaded with trust_remote_code).

These files import their siblings relatively (`.rotation`, `.vrmg`); the exporter copies
megatron_ext/rotation.py and megatron_ext/vrmg.py next to them, so an export needs only torch and
transformers. They are not imported from within this repository."""
