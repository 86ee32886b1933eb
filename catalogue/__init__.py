"""The other end of the agent's stream: an MQTT catalogue writer, exports and a live page.

Imports only the agent's contract (``edge_agent.contract``) and payload schemas, never its
runtime: a catalogue host needs no ONNX Runtime, camera or outbox code.
"""

__version__ = "0.1.0"
