"""The cases benchmark_verify.py runs besides a clean conversion: corrupted copies of a converted directory (each
must FAIL, named to its layer) and the exact proof's gap table on small factory models (`--calibrate`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness import md_table
from rwkv7_factory import Goose, make_state_dict, save


def corruptions(L: int) -> dict:
    """name -> (what to do to the converted directory, the step that must be named)."""
    mid, deep = L // 2, min(17, L - 1)  # deep: issue 29's case, layer 17 of the 2.9B long-memory file
    return {
        'swapped-k_k-k_a': (('swap', 'model.layers.1.attn.k_k', 'model.layers.1.attn.k_a'), 'blocks.1.att'),
        'swapped-k_k-k_a-deep': (('swap', f'model.layers.{deep}.attn.k_k', f'model.layers.{deep}.attn.k_a'),
                                 f'blocks.{deep}.att'),
        'transposed-k_proj': (('transpose', f'model.layers.{mid}.attn.k_proj.weight'), f'blocks.{mid}.att'),
        'wrong-layer-index': (('swap', 'model.layers.1.ffn.value.weight', 'model.layers.2.ffn.value.weight'),
                              'blocks.1.ffn'),
        'wrong-eps': (('eps', 1e-2), 'ln0'),
    }


def _tensor_spans(model_dir: Path) -> dict[str, tuple[Path, int, list[int], str]]:
    """name -> (shard, absolute byte offset, shape, dtype) from the safetensors headers."""
    spans = {}
    for shard in sorted(model_dir.glob('*.safetensors')):
        with open(shard, 'rb') as f:
            n = int.from_bytes(f.read(8), 'little')
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name != '__metadata__':
                spans[name] = (shard, 8 + n + info['data_offsets'][0], info['shape'], info['dtype'])
    return spans


def corrupt(good: Path, bad: Path, action: tuple) -> None:
    """A copy of `good` with one corruption, patched in place (same shapes, so it loads)."""
    import numpy as np  # here: benchmark_verify's driver imports this module and stays small (harness.py)
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(good, bad)
    if action[0] == 'eps':
        config = json.loads((bad / 'config.json').read_text())
        config['norm_eps'] = action[1]
        (bad / 'config.json').write_text(json.dumps(config))
        return
    spans = _tensor_spans(bad)
    item = {'BF16': 2, 'F16': 2, 'F32': 4}

    def read(name):
        shard, off, shape, dtype = spans[name]
        size = item[dtype] * int(np.prod(shape))
        with open(shard, 'rb') as f:
            f.seek(off)
            return f.read(size)

    def write(name, data: bytes):
        shard, off, _, _ = spans[name]
        with open(shard, 'r+b') as f:
            f.seek(off)
            f.write(data)

    if action[0] == 'swap':
        a, b = read(action[1]), read(action[2])
        write(action[1], b)
        write(action[2], a)
    elif action[0] == 'transpose':
        _, _, shape, dtype = spans[action[1]]
        carrier = np.uint16 if item[dtype] == 2 else np.uint32
        m = np.frombuffer(read(action[1]), dtype=carrier).reshape(shape)
        write(action[1], np.ascontiguousarray(m.T).tobytes())


# Small models for the calibration table (tests/rwkv7_factory.py's generator): width, depth and head size vary
CALIBRATION_SHAPES = {'C128-N64-L3': dict(hidden=128, layers=3, head_size=64, vocab=128, w_rank=128),
                      'C256-N32-L4': dict(hidden=256, layers=4, head_size=32, vocab=1024),
                      'C256-N64-L4': dict(hidden=256, layers=4, head_size=64, vocab=1024),
                      'C256-N128-L4': dict(hidden=256, layers=4, head_size=128, vocab=1024),
                      'C512-N64-L8': dict(hidden=512, layers=8, head_size=64, vocab=4096)}
CORRUPTED_SHAPES = ('C128-N64-L3', 'C256-N32-L4')


def calibrate(workdir: Path, tokens: int, say) -> list[dict]:
    """Both sides of the exact proof's gap on factory models (each stored fp32 and bf16, trained-like and long-memory):
    fla's float64 error against the float64 reference of the same function for correct conversions and for the
    corruptions of tests/proof/test_verify.py, the formula difference from BlinkDL's function, and beside it the
    float32 stand-ins' calibrated ratio (the kernels' accuracy report)."""
    # torch and fla here: benchmark_verify's driver imports this module and must stay small (harness.py says why)
    import torch

    from fla.rwkv7_convert.convert.to_fla import convert_to_fla
    from fla.rwkv7_convert.proof.verdict import EXACT_BOUND
    from fla.rwkv7_convert.proof.verify import verify
    rows = []
    for name, kw in CALIBRATION_SHAPES.items():
        for stored in (torch.float32, torch.bfloat16):
            for memory in ('trained', 'long-memory'):
                shape = Goose(**kw)
                tag = f'{name}-{str(stored).split(".")[-1]}-{memory}'
                sd = make_state_dict(shape, dtype=stored, seed=7)
                if memory == 'long-memory':  # decays near 1: w0 around -2
                    sd = {k: (torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) * 0.1 - 2).to(stored)
                          if k.endswith('att.w0') else v for k, v in sd.items()}
                src = save(sd, workdir / f'{tag}.pth')
                out = workdir / f'{tag}-out'
                shutil.rmtree(out, ignore_errors=True)
                convert_to_fla(src, out, tokenizer='none')
                cases = [('correct', out, None)]
                if stored == torch.float32 and name in CORRUPTED_SHAPES:
                    cases += [(c, workdir / f'{tag}-{c}', act) for c, (act, _) in corruptions(shape.layers).items()]
                for case, model, action in cases:
                    if action:
                        corrupt(out, model, action)
                    say(f'calibrate {tag} {case}')
                    r = verify(src, model, tokens=tokens, per_layer=True, device='cpu-torch')
                    worst = max(r.exact.steps, key=lambda s: s[1])
                    rows.append({'model': name, 'stored': tag.split('-')[3], 'weights': memory, 'case': case,
                                 'N': shape.head_size, 'tokens': tokens, 'exact': r.exact.logits.rel_rms,
                                 'worst_step': worst[0], 'worst_step_err': worst[1],
                                 'formula': r.exact.formula.rel_rms if r.exact.formula else 0.0,
                                 'kernels_ratio': r.kernels.judgement.ratio, 'verdict': 'PASS' if r.passed else 'FAIL',
                                 'first_divergence': r.first_divergence})
                    if action:
                        shutil.rmtree(model, ignore_errors=True)
    header = ['model', 'stored', 'weights', 'case', 'exact: fla float64 rel. RMS', 'worst sub-step', 'formula vs BlinkDL',
              'float32 stand-ins ratio', 'verdict']
    print('\n'.join(md_table(header, [[
        r['model'], r['stored'], r['weights'], r['case'], f"{r['exact']:.1e}",
        f"{r['worst_step_err']:.1e} ({r['worst_step']})", f"{r['formula']:.1e}", f"{r['kernels_ratio']:.3g}",
        r['verdict'] + (' at ' + r['first_divergence'] if r['first_divergence'] and r['verdict'] == 'FAIL' else '')]
        for r in rows])))
    correct = [r['worst_step_err'] for r in rows if r['case'] == 'correct']
    wrong = [r['exact'] for r in rows if r['case'] != 'correct']
    if correct and wrong:
        print(f'\ngap: correct conversions at most {max(correct):.1e} (worst sub-step), corruptions at least '
              f'{min(wrong):.1e} (logits); bound {EXACT_BOUND:g}')
    return rows
