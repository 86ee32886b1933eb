"""build-engine: export, precision (FP16 / INT8 with an accuracy gate), TensorRT plans, bundles.

Runs at deployment on the Jetson (plans are device- and TensorRT-specific) and on any host for
ONNX Runtime bundles. torch, timm and TensorRT are imported only by the steps that need them.
"""
