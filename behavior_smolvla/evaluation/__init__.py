"""Offline evaluation on held-out episodes: one engine (frames picked, batches collated, chunks predicted, errors in
action units beside reference predictors) used by ``smolvla-eval`` and by validation during training, its metrics,
its report (JSON, Markdown, table) and its plots.
"""
