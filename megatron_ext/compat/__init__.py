"""Megatron-Core on a CPU-only machine (development and CI; inactive when CUDA is present): cpu.py
for the model and the pipeline schedule, cpu_training.py for DDP, the optimizers and gradient
clipping."""
