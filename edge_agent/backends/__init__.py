"""Inference backends behind one interface (see :mod:`edge_agent.backends.base`)."""
