"""Small generated datasets with learnable content, for tests, benchmarks and the demo (never read for training).

``datasets`` writes them in the BEHAVIOR 2025 (LeRobot v2.1) and 2026 (v3.0) layouts and as a third-party-shaped
upload (``write_behavior_2025``, ``write_behavior_2026``, ``write_third_party_upload``, ``write_demo_dataset``) and
regenerates their ground truth (``load_ground_truth``); ``world`` simulates the R1Pro episodes they hold; ``render``
draws what their cameras show. Imports only ``errors`` and ``r1pro``: the reader (``behavior_smolvla.data``) never
imports this package, and these writers never use the reader.
"""
