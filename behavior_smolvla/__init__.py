"""behavior-smolvla: train lerobot's SmolVLA on BEHAVIOR challenge (Galaxea R1Pro) LeRobot datasets."""

__version__ = "0.1.0"
