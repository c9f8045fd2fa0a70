"""Inference engines behind one runner interface: ONNX Runtime (CPU), TensorRT (GPU/Jetson), PyTorch."""
