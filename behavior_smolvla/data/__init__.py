"""Reading data: LeRobot v3.0 / v2.1 files (BEHAVIOR 2025 and 2026 layouts included) -> samples and batches.

``meta`` reads a dataset's metadata (features, episodes, tasks, file paths) and picks episodes; ``video`` is where a
frame is decoded (PyAV); ``dataset`` is the random-access reader (``BehaviorDataset``: frames, state through a bound
state map, action chunks with their padding mask); ``stats`` holds the normalisation statistics and ``cache`` the
memory-mapped numeric columns; ``sampler`` is the training order (keyframe-aligned spans decoded forward in
DataLoader workers) and ``collate`` assembles its batches and hands them to the trainer. ``inspect`` describes a
dataset. Only reading lives here: the small generated datasets of tests, benchmarks and the demo are written by
:mod:`behavior_smolvla.synthetic`.
"""
