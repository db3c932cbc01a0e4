"""Training data: samples -> per-DP-rank micro-batches with a resumable position."""
