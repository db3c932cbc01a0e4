"""Hugging Face exports: folder.py writes a model as a folder transformers loads (remote code, or
a method's native class), checkpoint.py rebuilds a training run's model for it, target.py guards
the folder written into, model_card.py writes its README.md, cli.py is `python -m
megatron_ext.export`."""
