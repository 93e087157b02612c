"""The GPU parity matrix's runtime: the variables triton and fla read per process, the device set up by verify's
own backend, and Triton's autotuner kept to the first config that fits (parity, not speed). Nothing here imports
triton or fla's models at module level: the runtime is chosen first.
"""

from __future__ import annotations

import math
import os

import torch

from fla.rwkv7_convert.proof.backends import backend_for


def runtime_env(cpu: bool, precision: str | None = None) -> dict[str, str]:
    """Variables triton and fla read at import or compile time, for a process that runs `precision`'s cells."""
    env = {'FLA_CACHE_RESULTS': '0'}  # never store untimed "timings" where a benchmark would find them
    if cpu:
        env['TRITON_INTERPRET'] = '1'
    elif precision == 'float32':
        env['TRITON_F32_DEFAULT'] = 'ieee'  # IEEE float32 dots; read when a kernel is compiled
    return env


def select_runtime(cpu: bool):
    """The parity run's device, set up by verify's own backend (backends.py: the interpreter on the CPU, the device's
    presence on CUDA) after this run's variables; returns the torch device.

    On CUDA, fla's autotune cache is off and Triton's autotuner keeps the first config that fits
    (keep_first_fitting_config): parity, not speed.
    """
    os.environ.update(runtime_env(cpu))
    backend = backend_for('cpu' if cpu else 'cuda')
    backend.prepare()
    if not cpu:
        keep_first_fitting_config()
    return torch.device(backend.device)


def keep_first_fitting_config() -> None:
    """Triton's autotuner keeps the first config that compiles and fits, launched once untimed (parity, not speed).

    Benchmarking every config costs minutes on a cold machine; which config runs changes speed, not what is
    computed. A config that does not fit (out of shared memory, ...) is skipped as the autotuner itself would.
    """
    from triton.runtime import autotuner  # after select_runtime set the variables triton reads at import

    original = autotuner.Autotuner._bench

    def untimed(kernel_call, quantiles=None, **kwargs):
        kernel_call()  # compiles the config and proves it launches
        return [1.0, 1.0, 1.0]

    def first_fitting(self, *args, config, **meta):
        try:
            first = self.prune_configs(meta)[0]
        except Exception:  # noqa: BLE001 - older/newer autotuners: fall back to the declared order
            first = self.configs[0]
        if config is first:  # a new tuning round begins
            self._parity_found = False
        if getattr(self, '_parity_found', False):
            return [2.0, 2.0, 2.0]  # never compiled: an earlier config fits
        slot = 'do_bench' if 'do_bench' in self.__dict__ else '_do_bench'
        saved = self.__dict__.get(slot)
        self.__dict__[slot] = untimed
        try:
            timing = original(self, *args, config=config, **meta)
        finally:
            self.__dict__[slot] = saved
        if math.isfinite(timing[0]):
            self._parity_found = True
        return timing

    autotuner.Autotuner._bench = first_fitting


def check_process_precision(precision: str, device) -> None:
    """On CUDA, float32 (IEEE) and tf32 cells need a process compiled for them (TRITON_F32_DEFAULT)."""
    if getattr(device, 'type', str(device)) != 'cuda' or precision not in ('float32', 'tf32'):
        return
    ieee = os.environ.get('TRITON_F32_DEFAULT') == 'ieee'
    if ieee != (precision == 'float32'):
        raise ValueError(f'precision {precision!r}: this process compiles float32 dots as '
                         f'{"IEEE" if ieee else "TF32"}; run it in a process started with runtime_env(False, '
                         f'{precision!r}) (TRITON_F32_DEFAULT {"=ieee" if precision == "float32" else "unset"})')
