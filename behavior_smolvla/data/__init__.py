"""Reading data: LeRobot v3.0 / v2.1 files (BEHAVIOR 2025 and 2026 layouts included) -> samples and batches.

``meta`` reads a dataset's metadata (features, episodes, tasks, file paths) and picks episodes; ``video`` is where a
frame is decoded (PyAV); ``dataset`` is the random-access reader (``BehaviorDataset``: frames, state through a bound
state map, action chunks with their padding mask); ``stats`` holds the normalisation statistics and ``cache`` the
memory-mapped numeric columns; ``sampler`` is the training order (keyframe-aligned spans decoded forward in
DataLoader workers) and ``collate`` assembles its batches and hands them to the trainer. ``inspect`` describes a
dataset and ``synthetic`` writes small BEHAVIOR-shaped datasets for tests, benchmarks and the demo (their simulated
episodes come from ``synthetic_world``, their camera images from ``synthetic_render``).
"""
