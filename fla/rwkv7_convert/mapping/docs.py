"""Generates docs/mapping.md from the table itself, so the documentation cannot drift from the code.

    python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md      (tests/mapping/test_docs.py fails when the file is stale)
"""

from __future__ import annotations

import sys

from fla.rwkv7_convert.mapping.adapter_methods import (
    ADAPTER_METHODS,
    ADAPTER_TARGETS,
    LORA_ALPHA_HOME,
    PEFT_MODULES,
    PEFT_MODULES_EVIDENCE,
    TRAINED_EVIDENCE,
)
from fla.rwkv7_convert.mapping.config import BLINKDL_LN_X_EPS, BLINKDL_NORM_EPS
from fla.rwkv7_convert.mapping.ops import Identity
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.schema import Side, Stage, Target
from fla.rwkv7_convert.mapping.table import LAYOUTS, PREFIXES, RULES, SHAPE_ALIASES, SIZES, WRAPPER_KEYS

_SIDE = {Side.BLINKDL: 'RWKV-LM', Side.FLA: 'fla', Side.ADAPTER: 'adapter'}


def _cell(text: str) -> str:
    return text.replace('|', '&#124;')


def _tensors() -> list[str]:
    lines = [
        '## Tensors',
        '',
        '| RWKV-LM name | RWKV-LM shape | fla name | op (reverse) | blocks |',
        '|---|---|---|---|---|',
    ]
    for r in RULES:
        fla = f'`{r.fla}`' if r.fla else f'— (not converted: {r.note})'
        op = '—' if r.fla is None else (r.op.name if isinstance(r.op, Identity) else f'{r.op.name} ({r.reverse.name})')
        blocks = r.layers.value + (', optional' if r.optional else '')
        if r.target is not Target.WEIGHTS:
            fla += f' in {r.target.value}'
        lines.append(f'| `{r.blinkdl}` | `[{r.shape}]` | {fla} | {op} | {blocks} |')
    for r in (r for r in RULES if r.target is not Target.WEIGHTS):
        lines += ['', f'`{r.blinkdl}`: {r.note}. RWKV-block\'s `init_state.N.wkv` is the same tensor (layout below); '
                  'a bare state file converts against its base model\'s directory (`--base`), and the export writes it '
                  'back (`--state-only`, or after the weights as a merge). Evidence for its orientation and dtype '
                  '(verified in the repository at that commit):', '']
        lines += [f'- {e}' for e in r.evidence]
    optional = sorted({r.blinkdl.split('.')[-1] for r in RULES if r.optional and r.target is Target.WEIGHTS})
    lines += [
        '',
        '## Accepted naming variants (normalized before lookup)',
        '',
        '| variant | normalized to | where it comes from |',
        '|---|---|---|',
    ]
    lines += [f'| `{p}<name>` | `<name>` | prefix from {where} |' for p, where in PREFIXES.items()]
    lines += [f'| {a.variant} | `[{a.canonical}]` | {a.where} |' for a in SHAPE_ALIASES]
    lines += [f'| layer-0 `att.{"/".join(optional)}` absent | absent (dropped anyway) | files not saved by RWKV-LM training |',
              '| wrapped state dict ' + ', '.join(f'`{{"{k}": ...}}`' for k in WRAPPER_KEYS) + ' | the inner dict | '
              + '; '.join(WRAPPER_KEYS.values()) + ' |']
    lines += [
        '',
        'Prefixes are stripped repeatedly, so nested wrappers (`module._orig_mod.`) work too: '
        + ', '.join(f'`{p}`' for p in PREFIXES) + '. Any floating storage dtype (bf16, fp16, fp32, fp64), mixed or '
        'not, is kept unless --precision.',
    ]
    return lines


def _layouts() -> list[str]:
    lines = [
        '',
        '## Layouts met in practice',
        '',
        'Each layout (`Layout` in table.py) is detected by its own predicate over the stored names and shapes, never '
        'by a file name, and applied by its renames before lookup: prefix layouts first, then at most one naming '
        'layout (a file matching two is refused), then orientation; a "directory" layout needs no rule beyond reading '
        'the directory. After them every file is in canonical names and shapes, and the table above does the rest '
        'in both directions.',
    ]
    for side in (s for s in Side if any(x.side is s for x in LAYOUTS)):
        lines += ['', f'### {side.value}']
        for x in (x for x in LAYOUTS if x.side is side):
            lines += ['', f'#### {x.name} ({x.kind.value})', '', f'Written by: {x.who}.', '',
                      f'Recognised by: {_cell(x.detect.describe())}.' + (f' Note: {x.note}.' if x.note else ''), '']
            if x.evidence:
                lines += ['Evidence (verified in the repository at that commit):', '']
                lines += [f'- {e}' for e in x.evidence] + ['']
            if x.renames:
                lines += ['| stored name (regex) | becomes | op |', '|---|---|---|']
            for r in x.renames:
                if r.to is None:
                    to, op = 'dropped (unused by the model)', '—'
                elif isinstance(r.to, tuple):
                    to, op = ', '.join(f'`{t}`' for t in r.to), r.op.name
                else:
                    to, op = f'`{r.to}`', r.op.name
                lines.append(f'| `{_cell(r.pattern)}` | {to} | {op} |')
    return lines


def _refusals() -> list[str]:
    lines = [
        '',
        '## Refused inputs',
        '',
        'One ordered registry (`REFUSALS` in table.py), decided stage by stage (' + ' < '.join(s.value for s in Stage)
        + ') and, within a stage, in this order: the first entry that applies wins. The file stage is decided by '
        '`formats.readers` from the first bytes; names are read after the layouts\' renames; everything before any '
        'tensor is read. Each refusal is one line naming the keys, what the input is and what to use instead.',
        '',
        '| stage | input | refused | recognised by | why, and what to do | evidence |',
        '|---|---|---|---|---|---|',
    ]
    for f in REFUSALS:
        sides = ', '.join(_SIDE[s] for s in Side if s in f.sides)
        evidence = '<br>'.join(_cell(str(e)) for e in f.evidence) or '—'
        lines.append(f'| {f.stage.value} | {sides} | {_cell(f.variant)} | {_cell(f.when.describe())} | {_cell(f.reason)} '
                     f'| {evidence} |')
    return lines


def _adapters() -> list[str]:
    lines = [
        '',
        '## Fine-tunes: RWKV-PEFT adapters',
        '',
        '`--adapter ADAPTER.pth` with the base model as `--rwkv7`: each factor `<target>.<suffix>` belongs to a target '
        'weight [out, in] of ' + ', '.join(f'`{t}`' for t in ADAPTER_TARGETS) + '; the method is told from the '
        'factors\' names and ranks (LoRA and PiSSA store the same names: the option given tells them apart). Every '
        'other tensor of the file is a trained full tensor under a canonical name above, and replaces the base\'s. '
        'The merge runs the same torch operations as RWKV-PEFT\'s merge scripts (`mapping/adapter_ops.py`), so the '
        'merged directory is theirs converted, bit for bit. With `--adapter-format peft` the base converts unmerged '
        'and `OUTDIR/peft` holds the PEFT form.',
        '',
        f'A LoRA merge needs `--lora-alpha`: {LORA_ALPHA_HOME}.',
        '',
        '| method | factors (shape) | rank from | merge | needs | PEFT form |',
        '|---|---|---|---|---|---|',
    ]
    for m in ADAPTER_METHODS:
        factors = ', '.join(f'`{f.suffix}` [{f.shape}]' + (' (init file)' if f.init_file else '') for f in m.factors)
        peft = f'{m.peft}: {m.peft_note}' if m.peft else f'none: {m.peft_note}'
        note = f' ({m.note})' if m.note else ''
        lines.append(f'| {m.name} | {factors} | `{m.rank[0]}` axis {m.rank[1]} | `{_cell(m.formula)}`{_cell(note)} '
                     f'| {m.needs or "—"} | {_cell(peft)} |')
    lines += ['', 'Trained full tensors go to PEFT as `modules_to_save` when they make whole fla modules ('
              + ', '.join(f'`{k}` ({"+".join(v)})' for k, v in PEFT_MODULES.items()) + '); any other (such as '
              '`att.x_r`) is refused for the PEFT form, which then offers the merged one.', '',
              'Evidence (verified in the repository at that commit):', '']
    seen: list = []
    for e in [e for m in ADAPTER_METHODS for e in m.evidence] + list(TRAINED_EVIDENCE) + [PEFT_MODULES_EVIDENCE]:
        if e not in seen:
            seen.append(e)
    lines += [f'- {e}' for e in seen]
    return lines


def render() -> str:
    lines = [
        '# RWKV-LM ↔ fla name mapping',
        '',
        '<!-- Generated by `python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md`; '
        'edit the table in fla/rwkv7_convert/mapping/ (table.py, refusals.py, adapter_methods.py) instead. -->',
        '',
        'One table serves both directions: `convert_to_rwkv7.py` applies each op, `convert_from_fla_rwkv7.py` its '
        'reverse. Symbols: V vocab, C hidden size, H heads, N head size (C = H·N), F FFN width, '
        'Dw/Da/Dv/Dg the decay/a/value/gate LoRA ranks. `{i}` is the block index.',
        '',
    ]
    lines += _tensors() + _layouts() + _adapters() + _refusals()
    lines += [
        '',
        '## Config from shapes',
        '',
        'One function binds the sizes for both directions (`bind_sizes`): every tensor present votes, through its '
        'row\'s symbolic shape, for the values of its symbols (' + ', '.join(f'{k} {v}' for k, v in SIZES.items())
        + '), and each symbol takes the value most tensors agree on, so one broken tensor is reported as mis-shaped '
        'instead of hiding the model\'s size. The fla side votes with its tensors under their RWKV-LM names and '
        'shapes (each rule\'s reverse op); a tuned state\'s tensors do not vote. Block 0\'s unused `v0/v1/v2` vote '
        'only when no other tensor binds Dv. '
        'N and H come from `att.r_k` (never assumed 64; `--head-size` only for a flat `r_k`); L from the highest '
        'block index. Every tensor is then checked against these sizes and all problems are reported together. '
        '`eos_token_id` = `pad_token_id` = 0, no BOS.',
        '',
        f'BlinkDL uses LayerNorm eps {BLINKDL_NORM_EPS:g} and GroupNorm (`ln_x`) eps {BLINKDL_LN_X_EPS:g} for every head '
        'size; fla uses `norm_eps` and `head_dim * norm_eps`. The converter writes `norm_eps = 64e-5 / N`: exact for '
        'N = 64; for other N `ln_x` stays exact and the LayerNorm eps moves to 64e-5/N, which measured 20-200x closer '
        'to BlinkDL than the other choice (docs/verification.md, "Parity measured").',
        '',
        '## Adding a naming variant',
        '',
        '1. A new layout (renamed tensors, a prefix, a stored orientation or shape): add one `Layout` to `LAYOUTS` in '
        '`fla/rwkv7_convert/mapping/table.py`: a `detect` predicate (predicates.py: `NamePattern` with an optional rank, '
        '`Transposed`, ...) that only files in that layout satisfy, one `Rename` per stored name (a regex, its '
        'canonical RWKV-LM or fla name, and the `Op` of ops.py that turns the stored tensor into the canonical one; '
        'a rename is read one way only, so its op needs no `reverse`), who writes it and the `Source` (repo, path, '
        'commit) you verified. Both '
        'directions and the size binding then work on canonical names and shapes; nothing else changes. A new '
        'wrapper prefix of every name goes into `PREFIXES`, a new stored shape into `SHAPE_ALIASES`.',
        '2. Add one writer of that layout to `LAYOUT_WRITERS` in `tests/rwkv7_factory.py`: `tests/convert/test_layouts.py` '
        'is parameterized over it (the converted tensors must equal the canonical file\'s bit for bit, the logits '
        'must match the reference) and so is the mutation campaign of '
        '`tests/reliability/test_reliability_layouts.py`; `tests/mapping/test_ops.py` applies its ops.',
        '3. A new family to refuse is one `Refusal` at its place in `REFUSALS` of '
        '`fla/rwkv7_convert/mapping/refusals.py` (its stage, and before any entry its '
        'inputs also match that should not win) and one case in `REFUSED` of `tests/test_errors.py`.',
        '4. Regenerate this page: `python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md`.',
        '',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.stdout.write(render())
