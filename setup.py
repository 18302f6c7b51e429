"""Install edgedp: the runtime plus the model, hardware and calibration packages."""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.2",
    "numpy>=1.24",
    "pyyaml>=6",
    "pydantic>=2.5",
    "safetensors>=0.4",
    "rich>=13",
    "pyserial>=3.5",
    # Private APIs in use (firmware_bridge/dynamixel/sdk_io.py subclasses PortHandler/Protocol2PacketHandler and
    # relies on their attributes; edgedp/runtime/ring.py calls atomics' C primitive via atomics._impl): pinned
    # to the releases tested on Python 3.10 and 3.11; tests/test_assembly_pins.py fails outside these ranges
    # and asserts the subclassed / fast paths are the ones that run.
    "dynamixel-sdk>=4.1.0,<4.2",
    "numba>=0.58",
    "matplotlib>=3.7",
    "atomics>=1.0.3,<1.1",
    "opencv-python-headless>=4.8,<4.13",
    "scipy>=1.10",
]

EXTRAS = {
    # pyrealsense2 wheels exist for x86_64/aarch64 Linux on PyPI; on a Jetson, build librealsense.
    "realsense": ["pyrealsense2>=2.54"],
    # torch-tensorrt 2.8 is the JetPack 6 (TensorRT 10.3) wheel; newer stacks build strongly typed (compile/trt_versions.py).
    "tensorrt": ["torch-tensorrt>=2.8", "nvidia-modelopt"],
    "onnx": ["onnxruntime>=1.17", "onnx>=1.15"],
    # LeRobot v3.0 datasets (edgedp record / train / dataset, eval --video): parquet files and AV1 mp4 video.
    "datasets": ["pyarrow>=14", "av>=12"],
    # edgedp run --view: the live rerun stream (camera, joints, chunks).
    "view": ["rerun-sdk>=0.20"],
    # Push-T (scene.task: pusht). gym-pusht declares opencv-python, which overwrites the headless cv2 above;
    # to keep the headless build: pip install --no-deps 'gym-pusht>=0.1.8,<0.2' and then 'edgedp[pusht]'.
    "pusht": ["gym-pusht>=0.1.8,<0.2", "gymnasium>=0.29.1,<2", "pygame>=2.5.2,<2.7", "pymunk>=6.6,<7",
              "shapely>=2.0.3,<3"],
    # edgedp serve / policy.remote: the policy on a server (Ray Serve); msgpack is the wire format (docs/serve.md).
    # A board that only talks to a server needs msgpack alone: pip install msgpack.
    "serve": ["ray[serve]>=2.40,<3", "msgpack>=1.0"],
    "test": [
        "pytest>=7",
        "ray[serve]>=2.40,<3",
        "msgpack>=1.0",
        "pyrealsense2>=2.54",
        "diffusers>=0.25",
        "onnxruntime>=1.17",
        "onnx>=1.15",
        "pyarrow>=14",
        "av>=12",
        "rerun-sdk>=0.20",
        # the Push-T scene's dependencies; gym-pusht itself goes in with --no-deps (see "pusht" above)
        "gymnasium>=0.29.1,<2", "pygame>=2.5.2,<2.7", "pymunk>=6.6,<7", "shapely>=2.0.3,<3",
    ],
}

setup(
    name="edgedp",
    version="0.1.0",
    description="Run a trained Diffusion Policy on a robot: compiled denoiser, fixed-rate loops, lock-free chunk handoff.",
    python_requires=">=3.10",
    packages=find_packages(include=["edgedp*", "models*", "firmware_bridge*", "calibration*"]),
    package_data={"models": ["presets/*.yaml", "trained/**/*"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgedp=edgedp.cli:main"]},
)
