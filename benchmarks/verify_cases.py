"""The cases benchmark_verify.py runs besides a clean conversion: corrupted copies of a converted directory (each
must FAIL, named to its layer) and the calibration table on small factory models (`--calibrate`)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def corruptions(L: int) -> dict:
    """name -> (what to do to the converted directory, the step that must be named)."""
    mid = L // 2
    return {
        'swapped-k_k-k_a': (('swap', 'model.layers.1.attn.k_k', 'model.layers.1.attn.k_a'), 'blocks.1.att'),
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
    import numpy as np
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
    """fla's error and the float32 reference's own error (both against float64) on factory models, each converted
    with its stored dtype fp32 and bf16, clean and with the corruptions of tests/proof/test_verify.py."""
    sys.path.insert(0, str(REPO / 'tests'))
    sys.path.insert(0, str(REPO / 'utils'))
    from _bootstrap import light_fla
    light_fla()  # fla's own __init__ imports triton, which must come after use_interpreter()
    from fla.rwkv7_convert.proof.runtime import use_interpreter
    use_interpreter()
    import torch
    from rwkv7_factory import Goose, make_state_dict, save

    from fla.rwkv7_convert.convert.to_fla import convert_to_fla
    from fla.rwkv7_convert.proof.verify import verify
    rows = []
    for name, kw in CALIBRATION_SHAPES.items():
        for stored in (torch.float32, torch.bfloat16):
            shape = Goose(**kw)
            tag = f'{name}-{str(stored).split(".")[-1]}'
            src = save(make_state_dict(shape, dtype=stored, seed=7), workdir / f'{tag}.pth')
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
                r = verify(src, model, tokens=tokens, per_layer=True)
                worst = max(r.steps, key=lambda s: s.judgement.ratio)
                rows.append({'model': name, 'stored': tag.rsplit('-', 1)[1], 'case': case, 'N': shape.head_size,
                             'tokens': tokens, 'fla': r.logits.rel_rms, 'ref': r.reference.rel_rms,
                             'ratio': r.judgement.ratio, 'worst_step': worst.key, 'worst_step_ratio':
                             worst.judgement.ratio, 'verdict': 'PASS' if r.passed else 'FAIL',
                             'first_divergence': r.first_divergence})
                if action:
                    shutil.rmtree(model, ignore_errors=True)
    print('| model | stored | case | fla rel. RMS | ref-f32 rel. RMS | ratio (logits) | worst sub-step ratio | verdict |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['stored']} | {r['case']} | {r['fla']:.2e} | {r['ref']:.2e} | {r['ratio']:.3g} | "
              f"{r['worst_step_ratio']:.3g} ({r['worst_step']}) | {r['verdict']}"
              f"{' at ' + r['first_divergence'] if r['first_divergence'] and r['verdict'] == 'FAIL' else ''} |")
    return rows
