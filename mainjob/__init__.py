"""The main job: web image-text pairs to a trained, exported model in one command.

    python -m mainjob.run [--method rose|vlora|vora] [--size default|smallest] [--out runs/main]

Steps (each its own module): local tiny checkpoints (assets), a synthetic web served on
127.0.0.1 and the Ray data pipeline (data), the method's stages under torchrun at TP=2 (training),
the Hugging Face export loaded back with transformers to caption a held-out image (inference), and
the run report (report)."""
