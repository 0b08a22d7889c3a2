"""Training: everything a run needs built from the config (``build``), the loop read top to bottom (``loop``), and
metrics.jsonl / Weights & Biases (``tracking``). ``train(cfg)`` is what ``smolvla-train`` runs.
"""
