"""Running fla's RWKV7ForCausalLM on a converted directory: loading it, the CPU interpreter and its guard, the torch
stand-ins for the kernels, run/generate and the cache from a tuned state. Below proof/, which runs fla through it."""
