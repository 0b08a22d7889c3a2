"""Serving to the BEHAVIOR evaluator: the msgpack-numpy wire format (``wire``), the evaluator's observation -> the
policy's batch through the checkpoint's input contract (``observation``), a checkpoint driven by raw observations
with an action queue (``policy``: ``load_policy``), and the websocket server (``server``).
"""
