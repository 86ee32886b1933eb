"""The contract between training, build-engine and the agent.

Class list, decoding of image files, the preprocessing spec and its CPU reference, labelled-data
readers and the bundle manifest: what every stage must agree on. This sub-package imports
nothing else of ``edge_agent``; ``training`` and ``build_engine`` import it, never the other way.
"""
