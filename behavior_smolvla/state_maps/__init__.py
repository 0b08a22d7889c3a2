"""State maps: named selections of the R1Pro proprioception (256 dims in 2025 data, 61 in 2026 data) down to what
the policy takes. The maps and layouts are data (``state_maps/*.yaml`` in a checkout, the
``behavior_smolvla.state_map_files`` package when installed); ``maps`` loads, binds and applies them (this is where
the state is mapped), ``report`` describes a map over a dataset for ``smolvla-filter-state``.
"""
