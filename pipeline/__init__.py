"""Data pipeline: download -> recaption -> filter -> shard, on Ray, every sample accounted for."""
