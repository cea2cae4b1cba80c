"""Triton kernels for attnbench methods (GPU; tested on the CPU with TRITON_INTERPRET=1)."""
