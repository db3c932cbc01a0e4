"""Data pipeline: download -> recaption -> filter -> shard, on Ray, every sample accounted for."""
import os

# Ray reads this when it is imported: 0 keeps a local instance (and the addresses a driver resolves
# for "127.0.0.1:port") on loopback instead of the machine's network address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
