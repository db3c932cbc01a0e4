"""Evaluation of Hugging Face exports (and of training runs, exported first): does the model use
its image? easy-VQA accuracy with matched and shuffled images against the question-only prior,
caption loss with matched and shuffled images, held-out text perplexity, FLOPs and latency.

    python -m megatron_ext.evaluate runs/main/export-s3 --out runs/main/eval --limit 500

One place per concern: scorer.py prompts a folder the standard transformers way, vqa.py,
captions.py and heldout_text.py score it, cost.py counts what one sample costs, report.py writes
the files, cli.py ties them together. (megatron_ext/training/step.py eval_loss is the other kind of
evaluation: the training loss of fixed micro-batches through Megatron at any TP/PP layout.)
"""
