"""The compiled feature kernel (realtime/_featurekernel.c). Everything else is in pyproject.toml.

Optional: where it cannot be compiled (no C compiler or Python headers) the install goes on and
realtime.features computes with its numpy reference code instead (same definition, slower)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("realtime._featurekernel", ["realtime/_featurekernel.c"], optional=True,
                             extra_compile_args=["-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno"])])
