"""Build for specalign: the Python package, the Triton kernels and the C++ extension `specalign._C`.

Build against the torch already installed (no build isolation), e.g.
    pip install --no-build-isolation -e .
    python -m build --wheel --no-isolation
"""
import glob
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# _C is compiled against the installed torch: require its release, and record the exact version for
# the check at import (specalign/_built_torch.py) that names both versions when they differ.
TORCH_RELEASE = torch.__version__.split("+")[0]
(Path(__file__).parent / "python" / "specalign" / "_build_info.py").write_text(
    f'"""Written by setup.py: the torch that specalign._C was compiled against."""\nTORCH_VERSION = "{torch.__version__}"\n'
)

cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c++17"]

setup(
    name="specalign",
    version="0.1.0",
    description="Fast, exact inference-time alignment: Speculative Rejection, reward-shifted speculative sampling, Best-of-N",
    python_requires=">=3.10",
    package_dir={"": "python", "specalign.triton_kernels": "triton_kernels"},
    packages=["specalign", "specalign.triton_kernels", "specalign.world"],
    package_data={"specalign.world": ["assets/*", "assets/*/*", "assets_long/*", "assets_long/*/*"]},
    ext_modules=[
        CppExtension(
            "specalign._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[f"torch=={TORCH_RELEASE}", "transformers>=5.17,<5.25", "tokenizers", "safetensors", "tqdm",
                      "matplotlib"],
    # Triton runs the CUDA kernels (CUDA builds of torch bring it along) and, under its interpreter,
    # the kernel tests on CPU; a CPU-only install does without it.
    extras_require={"test": ["pytest", "pytest-benchmark", "triton"], "gpu": ["triton"]},
    entry_points={"console_scripts": ["specalign=specalign.cli:main"]},
)
