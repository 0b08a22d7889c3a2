"""Data package: the R1Pro layouts and state maps shipped as YAML (read by behavior_smolvla.state_maps.maps)."""
