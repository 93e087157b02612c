"""Storage dtypes as safetensors names them, held in numpy without torch.

numpy has no bfloat16, so bf16 data travels as its raw 16-bit patterns in a uint16 array ("carrier") and is cast
with bit arithmetic: widening is exact, narrowing rounds to nearest even as torch does. Keeping torch off the
conversion path saves its import time (more than a second) on every run.
"""

from __future__ import annotations

import numpy as np

from fla.rwkv7_convert.errors import ConversionError

# safetensors dtype name -> (numpy carrier dtype, bytes per element)
CARRIER: dict[str, np.dtype] = {
    'F64': np.dtype('<f8'),
    'F32': np.dtype('<f4'),
    'F16': np.dtype('<f2'),
    'BF16': np.dtype('<u2'),
    'I64': np.dtype('<i8'),
    'I32': np.dtype('<i4'),
    'I16': np.dtype('<i2'),
    'I8': np.dtype('i1'),
    'U8': np.dtype('u1'),
    'BOOL': np.dtype('?'),
}
FLOATING = ('F64', 'F32', 'F16', 'BF16')

# names a user may type for --precision, and the torch names that config.json uses
PRECISION_ALIASES = {
    'float32': 'F32', 'fp32': 'F32', 'float': 'F32',
    'bfloat16': 'BF16', 'bf16': 'BF16',
    'float16': 'F16', 'fp16': 'F16', 'half': 'F16',
}
TORCH_NAME = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16'}
# torch storage class names in .pth pickles -> safetensors names
TORCH_STORAGE = {
    'DoubleStorage': 'F64', 'FloatStorage': 'F32', 'HalfStorage': 'F16', 'BFloat16Storage': 'BF16',
    'LongStorage': 'I64', 'IntStorage': 'I32', 'ShortStorage': 'I16', 'CharStorage': 'I8', 'ByteStorage': 'U8',
    'BoolStorage': 'BOOL',
}
TORCH_DTYPE = {
    'float64': 'F64', 'double': 'F64', 'float32': 'F32', 'float': 'F32', 'float16': 'F16', 'half': 'F16',
    'bfloat16': 'BF16', 'int64': 'I64', 'long': 'I64', 'int32': 'I32', 'int': 'I32', 'int16': 'I16', 'int8': 'I8',
    'uint8': 'U8', 'bool': 'BOOL',
}


def parse_precision(text: str | None) -> str | None:
    """`None` keeps every tensor's stored dtype; otherwise the safetensors name of the requested dtype."""
    if text is None or text.lower() in ('keep', 'auto', 'stored'):
        return None
    try:
        return PRECISION_ALIASES[text.lower()]
    except KeyError:
        choices = ', '.join(sorted(PRECISION_ALIASES))
        raise ValueError(f'unknown precision {text!r}; expected one of: {choices} (or keep)') from None


def output_precision(precision: str | None, what: str = 'precision') -> str | None:
    """What a converter takes as `precision`: a safetensors name ('BF16'), an alias ('bf16', 'bfloat16', 'fp32', ...)
    or None (keep each tensor's stored dtype); the safetensors name, or one line naming `what`."""
    if precision is None or precision in FLOATING:
        return precision
    try:
        return parse_precision(precision)
    except ValueError as e:
        raise ConversionError(f'{what}: {e}') from None


def itemsize(dtype: str) -> int:
    return CARRIER[dtype].itemsize


def to_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == 'BF16':
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32)


def from_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == 'BF16':
        bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
        # round to nearest, ties to even; NaN stays a quiet NaN instead of rounding into Inf
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
        return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)
    return data.astype(CARRIER[dtype])


def cast(data: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast carrier arrays between floating storage dtypes exactly as torch's `Tensor.to` does."""
    if src == dst:
        return data
    with np.errstate(over='ignore', invalid='ignore'):  # overflow to inf is the intended cast semantics
        if dst == 'F64':
            return to_float32(data, src).astype(np.float64) if src != 'F32' else data.astype(np.float64)
        if src == 'F64':
            # torch narrows double to half/bf16 through float32 (two roundings); doing the same keeps us bit-exact
            data, src = data.astype(np.float32), 'F32'
        return from_float32(to_float32(data, src), dst)


def is_finite(data: np.ndarray, dtype: str, chunk: int = 1 << 18) -> bool:
    """No NaN or Inf in `data`; checked in cache-sized chunks, since full-size temporaries cost more than the test."""
    flat = data.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        if dtype == 'BF16':
            if int((part & 0x7FFF).max()) >= 0x7F80:  # exponent all ones: Inf or NaN
                return False
        elif dtype in FLOATING and not np.isfinite(part).all():
            return False
    return True
