"""Training on Megatron-Core: config, trainable sets, optimizer, checkpoints, metrics."""
