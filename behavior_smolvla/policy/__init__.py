"""The policy and its checkpoints: lerobot's SmolVLA (never re-implemented here) built, loaded and saved with its
pre/post processors (``smolvla``), written atomically to ``checkpoints/<step>`` (``checkpoint``: where a checkpoint is
written), and the tiny / full-size SmolVLM backbones built offline for tests, the demo and benchmarks (``backbone``).
"""
