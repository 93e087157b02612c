"""An RWKV-PEFT adapter file read against the table (adapter_methods.ADAPTER_METHODS, ADAPTER_TARGETS, the adapter side of
REFUSALS) and, given its base model's tensors, the merged tensors: names, shapes and dtypes now, each merged tensor's
data computed when the writer asks for it (one target weight at a time, never a model).

The walk: unwrap and strip prefixes as for a model -> the adapter side's refusals (a PiSSA init file as the adapter,
no factors, methods mixed) -> each name a factor of a target weight or a trained full tensor (a canonical name) ->
the method from the factors' names and ranks, and the options it needs (--lora-alpha, --pissa-init) -> with the
base: every factor's shape against its target's, every trained tensor's against the base's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError, UnsupportedVariantError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING, TORCH_NAME
from fla.rwkv7_convert.mapping.adapter_methods import ADAPTER_FACTOR, ADAPTER_TARGETS, LORA_ALPHA_HOME, adapter_method_of
from fla.rwkv7_convert.mapping.adapter_ops import merged_dtype
from fla.rwkv7_convert.mapping.engine import lookup_blinkdl, refuse
from fla.rwkv7_convert.mapping.key_report import unexpected_tensors
from fla.rwkv7_convert.mapping.plan import normalize_names, unwrap_state_dict
from fla.rwkv7_convert.mapping.schema import AdapterMethod, Seen, Side

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

_TARGET = re.compile('^' + '|'.join(re.escape(t).replace(r'\{i\}', r'(0|[1-9][0-9]*)') for t in ADAPTER_TARGETS) + '$')


@dataclass
class AdapterFile:
    """What an adapter file holds: its method, per target weight its factors, and the trained full tensors."""

    path: str
    method: AdapterMethod
    factors: dict[str, dict[str, TensorRef]]  # target weight (RWKV-LM name) -> suffix -> factor
    trained: dict[str, TensorRef]  # canonical RWKV-LM name -> full tensor
    alpha: float | None = None
    init_path: str | None = None
    others: list[str] = field(default_factory=list)  # methods storing the same factors (LoRA's names are PiSSA's)

    @property
    def ranks(self) -> list[int]:
        suffix, axis = self.method.rank
        return sorted({f[suffix].shape[axis] for f in self.factors.values()})

    @property
    def targets(self) -> list[str]:
        """The target kinds (`att.key`, `ffn.value`, ...) with the blocks they are on."""
        kinds: dict[str, list[int]] = {}
        for name in self.factors:
            _, i, rest = name.split('.', 2)
            kinds.setdefault(rest.removesuffix('.weight'), []).append(int(i))
        return [f'{k} (blocks {_span(sorted(v))})' for k, v in kinds.items()]

    def describe(self) -> list[str]:
        m = self.method
        needs = {'--lora-alpha': f'alpha (--lora-alpha A), not stored in the file: {LORA_ALPHA_HOME}',
                 '--pissa-init': 'its init file (--pissa-init init_pissa.pth, written beside the adapter by training)',
                 '': 'nothing besides its base model'}[m.needs]
        trained = sorted({re.sub(r'^blocks\.\d+\.', 'blocks.N.', n) for n in self.trained})
        others = ''.join(f' or {o} (the same names: {o} comes with init_pissa.pth beside it)' for o in self.others)
        return [f'method: {m.name} ({m.formula}){others}, rank {", ".join(map(str, self.ranks))}',
                f'targets: {", ".join(self.targets)}',
                f'trained full tensors: {len(self.trained)} ({", ".join(trained) or "none"})',
                f'the merge needs: {needs}',
                f'as a PEFT adapter: {m.peft or "none"} ({m.peft_note})']


def _span(items: list[int]) -> str:
    return f'{items[0]}-{items[-1]}' if items == list(range(items[0], items[-1] + 1)) and len(items) > 1 else \
        ', '.join(map(str, items))


def _flat(tree: object, shown: str) -> dict[str, TensorRef]:
    tensors, _ = unwrap_state_dict(tree, shown)
    tensors, _, problems = normalize_names(tensors)
    if problems:
        raise KeyMismatchError(problems, shown)
    return tensors


def read_adapter(tree: object, shown: str, *, init_tree: object | None = None, init_shown: str | None = None,
                 alpha: float | None = None, choose: bool = True) -> AdapterFile:
    """The adapter in `tree` (an open checkpoint's tree), PiSSA's init file in `init_tree`; raises one line for the
    adapter side's refusals, a mix of methods, a missing or needless option, unknown names or unpaired factors.
    `choose=False` (inspect) takes the first method the factors allow and names the others (`others`)."""
    tensors = _flat(tree, shown)
    refuse(Side.ADAPTER, Seen({n: r.shape for n, r in tensors.items()}), shown)  # refusals.REFUSALS, adapter side
    factors: dict[str, dict[str, TensorRef]] = {}
    trained, unknown = {}, []
    for name, ref in tensors.items():
        m = ADAPTER_FACTOR.match(name)
        if m and _TARGET.match(m['target'] + '.weight'):
            factors.setdefault(m['target'] + '.weight', {})[m['suffix']] = ref
        elif (found := lookup_blinkdl(name)) is not None and found[0].names(found[1])[0] == name:
            trained[name] = ref
        else:
            unknown.append(name)
    if unknown:
        targets = [t.replace('{i}', '0').removesuffix('weight') + s for t in ADAPTER_TARGETS for s in ('lora_A', 'disha')]
        raise KeyMismatchError(unexpected_tensors(unknown, targets), shown)
    signature = frozenset((s, len(r.shape)) for f in factors.values() for s, r in f.items())
    methods = adapter_method_of(signature)
    if not methods:
        raise UnsupportedVariantError('its factors (' + ', '.join(f'{s} of {n} dims' for s, n in sorted(signature))
                                      + ') are no RWKV-PEFT method\'s (adapter_methods.ADAPTER_METHODS)', shown)
    method = _choose(methods, shown, alpha, init_tree is not None) if choose else methods[0]
    adapter = AdapterFile(shown, method, factors, trained, alpha, init_shown, others=[m.name for m in methods[1:]])
    if init_tree is not None:
        _add_init(adapter, _flat(init_tree, init_shown), init_shown)
    _check_pairs(adapter)
    return adapter


def _choose(methods: list[AdapterMethod], shown: str, alpha: float | None, has_init: bool) -> AdapterMethod:
    """One method from those the factors allow (LoRA and PiSSA store the same names): by the option given."""
    given = {'--lora-alpha': alpha is not None, '--pissa-init': has_init}
    chosen = [m for m in methods if m.needs and given[m.needs]] or [m for m in methods if not m.needs]
    if len(methods) > 1 and not chosen:
        raise ConversionError(f'holds lora_A/lora_B factors: a LoRA merge needs --lora-alpha A ({LORA_ALPHA_HOME}); '
                              'a PiSSA adapter (the same names) needs its init file instead: --pissa-init init_pissa.pth',
                              shown)
    if len(chosen) != 1:
        both = ' and '.join(o for o, on in given.items() if on)
        raise ConversionError(f'{both} given: a LoRA merge takes --lora-alpha, a PiSSA merge --pissa-init, not both',
                              shown)
    method = chosen[0]
    needless = [o for o, on in given.items() if on and o != method.needs]
    if needless:
        raise ConversionError(f'{needless[0]} does not apply to a {method.name} adapter (it needs '
                              f'{method.needs or "no option"})', shown)
    if method.needs and not given[method.needs]:
        raise ConversionError(f'a {method.name} merge needs {method.needs}', shown)
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ConversionError(f'--lora-alpha {alpha}: expected a positive number', shown)
    return method


def _add_init(adapter: AdapterFile, tensors: dict[str, TensorRef], shown: str) -> None:
    """PiSSA's init factors (init_pissa.pth: `model.`-prefixed module names, stripped like a wrapper) beside the
    trained ones, one set per target; a target of either file missing in the other is a key problem."""
    wanted = {f.suffix for f in adapter.method.factors if f.init_file}
    problems, seen = [], set()
    for name, ref in tensors.items():
        m = ADAPTER_FACTOR.match(name)
        target = m['target'] + '.weight' if m else None
        if m is None or m['suffix'] not in wanted or target not in adapter.factors:
            problems.append(f'unexpected tensor {name} in the init file (expected init_lora_A/B of the adapter\'s '
                            'targets)')
            continue
        adapter.factors[target][m['suffix']] = ref
        seen.add(target)
    problems += [f'{t.removesuffix(".weight")}.init_lora_A/B missing: the adapter trains it' for t in adapter.factors
                 if t not in seen]
    if problems:
        raise KeyMismatchError(problems, shown)


def _check_pairs(adapter: AdapterFile) -> None:
    want = {f.suffix for f in adapter.method.factors}
    problems = [f'{t.removesuffix("weight")}{s} missing (its {", ".join(sorted(f))} present)'
                for t, f in adapter.factors.items() for s in sorted(want - set(f))]
    problems += [f'{t.removesuffix("weight")}{s} has dtype {r.dtype}, expected a floating point dtype'
                 for t, f in adapter.factors.items() for s, r in f.items() if r.dtype not in FLOATING]
    if problems:
        raise KeyMismatchError(problems, adapter.path)


# ------------------------------------------------------------------------------------------------------ the merge

def check_base(adapter: AdapterFile, base: dict[str, TensorRef], base_shown: str) -> None:
    """Every factor fits its target weight in `base` (canonical names), every trained tensor the base's tensor of
    its name: an adapter trained on a model of another size is refused, naming a tensor and both shapes."""
    problems = []
    for target, factors in adapter.factors.items():
        W = base.get(target)
        if W is None:
            problems.append(f'{target} is not in the base model (the adapter trains it)')
            continue
        problems += _factor_problems(adapter.method, target, W.shape, factors)
    for name, ref in adapter.trained.items():
        if name in base and tuple(base[name].shape) != tuple(ref.shape):
            problems.append(f'{name} is {list(ref.shape)} in the adapter, {list(base[name].shape)} in the base')
        elif name not in base and not lookup_blinkdl(name)[0].optional:  # a tuned state, layer-0 v0/v1/v2 may be new
            problems.append(f'{name} is in the adapter but not in the base model')
    if problems:
        raise KeyMismatchError([f'the adapter {adapter.path} does not fit this base model (trained on another '
                                f'size?): {problems[0]}', *problems[1:]], base_shown)


def _factor_problems(method: AdapterMethod, target: str, shape: tuple[int, ...], factors: dict[str, TensorRef]) -> list[str]:
    out, in_ = shape
    suffix, axis = method.rank
    r = factors[suffix].shape[axis] if len(factors[suffix].shape) > axis else 0
    problems = []
    for f in method.factors:
        want = f.resolve(out, in_, r) if r > 0 else None
        got = tuple(factors[f.suffix].shape)
        if want != got:
            shown = 'r does not divide the target' if want is None and r > 0 else f'[{f.shape}] = {list(want or ())}'
            problems.append(f'{target.removesuffix("weight")}{f.suffix} is {list(got)}, expected {shown} for '
                            f'{target} [{out}, {in_}] at rank {r}')
    return problems


def merged_tensors(adapter: AdapterFile, base: dict[str, TensorRef], base_shown: str) -> dict[str, TensorRef]:
    """`base` (canonical names) with the trained tensors in place of (or beside) the base's and each target weight
    merged: the tensors RWKV-PEFT's merge script would save, each computed when loaded."""
    check_base(adapter, base, base_shown)
    out = {**base, **adapter.trained}
    for target, factors in adapter.factors.items():
        W = out[target]
        try:
            dtype = merged_dtype(adapter.method.merge, (W.shape, W.dtype),
                                 {s: (r.shape, r.dtype) for s, r in factors.items()}, adapter.alpha)
        except RuntimeError as e:  # a matmul of two dtypes: RWKV-PEFT's merge stops there too
            raise UnsupportedVariantError(f'{target} is {W.dtype}, its {adapter.method.name} factors '
                                          f'{", ".join(sorted({r.dtype for r in factors.values()}))}: the merge\'s '
                                          f'matmul needs one dtype ({" ".join(str(e).split())[:80]})', adapter.path) from None
        out[target] = TensorRef(target, W.shape, dtype, _merge_loader(adapter, W, factors, dtype))
    return out


def _merge_loader(adapter: AdapterFile, W: TensorRef, factors: dict[str, TensorRef], dtype: str):
    def load():
        merged = adapter.method.merge(to_torch(W), {s: to_torch(r) for s, r in factors.items()}, adapter.alpha)
        return from_torch(merged, dtype)
    return load


def to_torch(ref: TensorRef):
    """A tensor's data as a torch tensor of its dtype (a fresh copy: the merge may work in place)."""
    import torch  # only when a merge runs: torch costs seconds of start-up (as in adapter_ops.py)
    data = ref.load().reshape(ref.shape)
    if ref.dtype == 'BF16':
        return torch.from_numpy(data.view('<i2').copy()).view(torch.bfloat16)
    return torch.from_numpy(data.copy()).to(getattr(torch, TORCH_NAME[ref.dtype]))


def from_torch(t, dtype: str):
    """A torch tensor as the carrier array of `dtype` (bf16 as uint16 bit patterns), C-contiguous."""
    import torch  # only when a merge runs
    t = t.contiguous()
    if dtype == 'BF16':
        return t.view(torch.int16).numpy().view(CARRIER['BF16']).copy()
    return t.numpy().astype(CARRIER[dtype], copy=True)
