"""Move RWKV-7 checkpoints between BlinkDL's RWKV-LM format and flash-linear-attention, and prove they match.

Importing this package is cheap on purpose: the converter itself needs only numpy and the standard library,
so that converting a checkpoint costs little more than reading and writing its bytes once. torch, fla's
models and transformers are imported lazily by the parts that need them (the reference and verification).
"""

__all__ = ['__version__']
__version__ = '0.1.0'
