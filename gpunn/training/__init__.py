"""Training: how steps run (steps.py, graph.py), which rows each takes (batches.py), the fit loop
(loop.py) and what it records and tells (callbacks.py)."""
