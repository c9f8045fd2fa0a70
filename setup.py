"""Install spikereveal: the top-level folders become subpackages of one import namespace."""
from setuptools import setup

SUBPACKAGES = ["kernels", "stream", "engines", "calibration", "bench", "training", "sim"]

package_dir = {"spikereveal": "core"}
package_dir.update({f"spikereveal.{name}": name for name in SUBPACKAGES})

setup(
    name="spikereveal",
    version="0.1.0",
    description="Live deblurring for hybrid spike-camera + RGB rigs (self-supervised S-SDM)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["spikereveal", "spikereveal.commands"] + [f"spikereveal.{name}" for name in SUBPACKAGES],
    package_dir={**package_dir, "spikereveal.commands": "core/commands"},
    package_data={"spikereveal": ["models/*"]},
    include_package_data=True,
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "pyzmq>=25",
        "opencv-python-headless>=4.8",
        "onnxruntime>=1.17",
        "tqdm>=4.60",
    ],
    extras_require={
        # training, export and the PyTorch reference runner
        "train": ["torch>=2.2", "onnx>=1.15"],
        # TensorRT runner (GPU / Jetson); on JetPack use the system TensorRT instead
        "trt": ["tensorrt>=10.3", "cuda-python>=12"],
        # --engine triton: the rig's client of a Triton Inference Server (gRPC)
        "triton": ["tritonclient[grpc]>=2.41"],
        # a loopback Triton for the tests and 'bench pipeline --engine triton': nvidia-pytriton only ships the
        # tritonserver binary with its Python backend here (nothing imports pytriton); it pins numpy<2
        "triton-server": ["tritonclient[grpc]>=2.41", "nvidia-pytriton>=0.5"],
        # the simulator's default scenes are the images that ship with scikit-image
        "sim": ["scikit-image>=0.22"],
        # PNG plots of latency, quality and sample frames
        "plot": ["matplotlib>=3.7"],
        # not nvidia-pytriton: its numpy<2 pin would move the whole test environment to numpy 1.x and
        # opencv 4.11 (two tests fail there); .ci/run installs it after the main run for the Triton tests
        "dev": ["pytest>=7", "hypothesis>=6", "onnx>=1.15", "scikit-image>=0.22", "matplotlib>=3.7",
                "tritonclient[grpc]>=2.41"],
    },
    entry_points={"console_scripts": ["spikereveal=spikereveal.cli:main"]},
)
