"""tests/parity: the GPU parity harness (fla.rwkv7_convert.parity): its plan and judgement on the CPU, its dry run
through benchmarks/gpu_parity.py, and the GPU cells, which skip without CUDA.

From the root conftest: `converted_model`; plain helpers from tests/helpers.py. Fixtures that more than one module here
needs belong in this file."""
