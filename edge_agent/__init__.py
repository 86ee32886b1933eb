"""galaxy-edge runtime: the edge daemon and the contract modules shared by every stage.

This package never imports torch or timm; TensorRT and pycuda are imported only inside
``edge_agent.backends.tensorrt_backend``.
"""

__version__ = "0.1.0"
