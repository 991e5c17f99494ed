"""numba helper kernels called by generated code, one module per backend."""
