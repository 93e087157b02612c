"""Bytes on disk, no RWKV knowledge: dtypes, the .pth / safetensors / Hugging Face directory readers, the writers and
the atomic output protocol."""
