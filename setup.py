"""Build for specalign: the Python package, the Triton kernels and the C++ extension `specalign._C`.

Build against the torch already installed (no build isolation), e.g.
    pip install --no-build-isolation -e .
    python -m build --wheel --no-isolation
"""
import glob

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c++17"]

setup(
    name="specalign",
    version="0.1.0",
    description="Fast, exact inference-time alignment: Speculative Rejection, reward-shifted speculative sampling, Best-of-N",
    python_requires=">=3.10",
    package_dir={"": "python", "specalign.triton_kernels": "triton_kernels"},
    packages=["specalign", "specalign.triton_kernels", "specalign.world"],
    package_data={"specalign.world": ["assets/*", "assets/*/*"]},
    ext_modules=[
        CppExtension(
            "specalign._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch", "triton", "transformers>=5.17,<5.25", "tokenizers", "safetensors", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["specalign=specalign.cli:main"]},
)
