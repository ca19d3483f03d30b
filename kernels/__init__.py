"""Triton device code of softmargin_triton. Installed as ``softmargin_triton.kernels``."""

if __name__ != "softmargin_triton.kernels":
    # A top-level `kernels` module would shadow an unrelated PyPI package of that name.
    raise ImportError(
        "the kernels/ folder of softmargin-triton is not a top-level package: "
        "use `import softmargin_triton.kernels` (after `pip install -e .`)"
    )
