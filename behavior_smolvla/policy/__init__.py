"""The policy and its checkpoints: lerobot's SmolVLA (never re-implemented here) built, loaded and saved with its
pre/post processors (``smolvla``), how a chunk is drawn from it (``inference``: zero noise, one draw, the mean of K
draws), written atomically to ``checkpoints/<step>`` (``checkpoint``: where a checkpoint is written), and the tiny /
full-size SmolVLM backbones built offline for tests, the demo and benchmarks (``backbone``).
"""
