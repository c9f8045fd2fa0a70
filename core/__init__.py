"""spikereveal: live deblurring for hybrid spike-camera + RGB rigs.

Subpackages: ``kernels`` (numba spike kernels, pure), ``sim`` (hybrid-rig simulator), ``training``
(self-supervised teacher and student), ``engines`` (ONNX Runtime / TensorRT / PyTorch runners),
``stream`` (the live ZeroMQ pipeline), ``calibration`` and ``bench``.
"""

__version__ = "0.1.0"
