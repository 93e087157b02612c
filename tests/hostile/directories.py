"""The valid fla directory the campaigns attack, and the hostile directories built from it: config.json values,
special paths, a second weight source, pytorch_model.bin files (see the package docstring)."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from reliability_common import read_pth
from rwkv7_factory import Goose
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla

# no two sizes equal (V 61, C 64, F 96, H 2, N 32, ranks 8/16/24/12), so a transposed tensor can never look right
BASE = Goose(vocab=61, hidden=64, layers=2, head_size=32, ffn=96, w_rank=8, a_rank=16, v_rank=24, g_rank=12)


def make_hf(source: Path, model: Path, root: Path) -> dict:
    """The base fla directory `model` (BASE in bf16, seed 15, converted from `source` by the forward converter), its
    tensors and config, and the canonical export into `root` (what the unmodified directory exports to)."""
    convert_from_fla(model, root / 'canonical.pth')
    return {'dir': model, 'source': source, 'config': json.loads((model / 'config.json').read_text()),
            'tensors': load_file(model / 'model.safetensors'), 'canonical': read_pth(root / 'canonical.pth'),
            'canonical_bytes': (root / 'canonical.pth').read_bytes()}


def write_dir(folder: Path, config: dict | bytes | None, tensors: dict[str, torch.Tensor] | None,
              how: str = 'single', shard_sizes: list[int] | None = None) -> Path:
    """A Hugging Face directory: config.json (a dict, raw bytes, or none) and the tensors stored `how`:
    'single' (model.safetensors), 'bin' (pytorch_model.bin), 'shards' (index + shards of `shard_sizes` tensors)."""
    folder.mkdir(parents=True)
    if isinstance(config, dict):
        (folder / 'config.json').write_text(json.dumps(config))
    elif config is not None:
        (folder / 'config.json').write_bytes(config)
    if tensors is None:
        return folder
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if how == 'single':
        save_file(tensors, folder / 'model.safetensors', metadata={'format': 'pt'})
    elif how == 'bin':
        torch.save(tensors, folder / 'pytorch_model.bin')
    else:
        names, sizes, weight_map, k = list(tensors), list(shard_sizes or [len(tensors)]), {}, 0
        files = []
        while names:
            n = sizes[k % len(sizes)]
            part, names = names[:n], names[n:]
            files.append(part)
            k += 1
        for i, part in enumerate(files):
            fname = f'model-{i + 1:05d}-of-{len(files):05d}.safetensors'
            save_file({n: tensors[n] for n in part}, folder / fname, metadata={'format': 'pt'})
            weight_map.update(dict.fromkeys(part, fname))
        (folder / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    return folder


C = BASE.hidden
HOSTILE_CONFIGS = [
    # wrong types
    *[pytest.param({key: value}, id=f'{key}={value!r}') for key in ('hidden_size', 'num_hidden_layers')
      for value in ('64', -64, 0, 2 ** 70, True, None, 64.5, [64], {'a': 1})],
    *[pytest.param({key: value}, id=f'{key}={value!r}')
      for key in ('head_dim', 'num_heads', 'vocab_size', 'intermediate_size', 'decay_low_rank_dim', 'a_low_rank_dim',
                  'v_low_rank_dim', 'gate_low_rank_dim')
      for value in ('32', -32, 2 ** 70, [32])],
    pytest.param({'norm_eps': '1e-5'}, id='norm_eps-string'),
    pytest.param({'value_dim': 'x'}, id='value_dim-string'),
    pytest.param({'attn': 'yes'}, id='attn-string'),
    pytest.param({'attn': ['layers', 1]}, id='attn-list'),
    # contradicting the tensors
    pytest.param({'hidden_size': 128}, id='hidden_size-128'),
    pytest.param({'num_hidden_layers': 1}, id='layers-1'),
    pytest.param({'num_hidden_layers': 3}, id='layers-3'),
    pytest.param({'head_dim': 16, 'num_heads': 4}, id='heads-16x4'),
    pytest.param({'head_dim': 64, 'num_heads': 1}, id='heads-64x1'),
    pytest.param({'vocab_size': 62}, id='vocab-62'),
    pytest.param({'intermediate_size': 128}, id='ffn-128'),
    pytest.param({'decay_low_rank_dim': 9}, id='w-rank-9'),
    pytest.param({'a_low_rank_dim': 8}, id='a-rank-8'),
    pytest.param({'v_low_rank_dim': 16}, id='v-rank-16'),
    pytest.param({'gate_low_rank_dim': 24}, id='g-rank-24'),
    # options BlinkDL's RWKV-7 cannot express
    pytest.param({'value_dim': 2 * C}, id='value_dim-2C'),
    pytest.param({'value_dim': [C, 2 * C]}, id='value_dim-list'),
    pytest.param({'norm_first': False}, id='norm_first-false'),
    pytest.param({'norm_bias': False}, id='norm_bias-false'),
    pytest.param({'attn': {'layers': [1], 'num_heads': 2}}, id='hybrid-attn'),
    pytest.param({'hidden_act': 'swish'}, id='hidden_act-swish'),
    pytest.param({'model_type': 'rwkv6'}, id='model_type-rwkv6'),
    pytest.param({'model_type': 'llama'}, id='model_type-llama'),
    pytest.param({'model_type': None}, id='model_type-null'),
    pytest.param({'model_type': ['rwkv7']}, id='model_type-list'),
]


# odd values that do not change the weights: exporting exactly (with the eps warning where it applies) or refusing
# are both right; only the property is checked
ODD_CONFIGS = [
    *[pytest.param({'norm_eps': v}, id=f'norm_eps={v!r}') for v in (float('nan'), float('inf'), -1, True, 0)],
    pytest.param({'norm_eps': 10 ** 400}, id='norm_eps=10**400'),  # once an OverflowError traceback
    pytest.param({'num_heads': 2.0}, id='num_heads=2.0'),
    pytest.param({'head_dim': 32.0}, id='head_dim=32.0'),
    pytest.param({'value_dim': [C] * 5}, id='value_dim-5-entries'),
    pytest.param({'value_dim': None}, id='value_dim-null'),
    pytest.param({'attn': {}}, id='attn-empty-object'),
    pytest.param({'attn': {'layers': []}}, id='attn-no-layers'),
    pytest.param({'architectures': ['LlamaForCausalLM']}, id='architectures-llama'),
    pytest.param({'head_size': 16}, id='head_size-16-unused-key'),
    pytest.param({'tie_word_embeddings': None}, id='tie_word_embeddings-null'),
]


RAW_CONFIGS = {
    'missing': None,
    'empty file': b'',
    'not JSON': b'{"model_type": "rwkv7", ',
    'a JSON array': b'[1, 2, 3]',
    'a JSON string': b'"rwkv7"',
    'null': b'null',
    'binary garbage': bytes(range(256)),
    'UTF-16': json.dumps({'model_type': 'rwkv7'}).encode('utf-16'),
    'nested 100000 deep': b'[' * 100000 + b']' * 100000,
    'model_type missing': b'{"hidden_size": 64}',
}


RAW_CONFIG_PARAMS = [pytest.param(k, id=k) for k in RAW_CONFIGS]  # 'nested' was once a RecursionError traceback


def different_model(hf: dict) -> dict[str, torch.Tensor]:
    """Another model of the same shapes (every tensor changed)."""
    return {k: (v.float() + 0.5).to(v.dtype) for k, v in hf['tensors'].items()}


TWO_SOURCES = [
    # transformers' from_pretrained loads model.safetensors first, then model.safetensors.index.json, then
    # pytorch_model.bin (modeling_utils._get_resolved_checkpoint_files); the exporter must export that model or refuse
    pytest.param('single', 'bin', id='model.safetensors-over-pytorch_model.bin'),
    pytest.param('shards', 'bin', id='safetensors-index-over-pytorch_model.bin'),
    pytest.param('single', 'shards', id='model.safetensors-over-a-stale-index'),  # the shards used to win
]


def special_paths(tmp_path: Path, hf: dict) -> dict[str, Path]:
    loop = tmp_path / 'loop'
    loop.symlink_to(tmp_path / 'loop')
    a_file = tmp_path / 'a-file'
    a_file.write_bytes(b'not a directory')
    cfg_loop = write_dir(tmp_path / 'cfg-loop', None, hf['tensors'])
    (cfg_loop / 'config.json').symlink_to(cfg_loop / 'config.json')
    w_loop = write_dir(tmp_path / 'weights-loop', hf['config'], None)
    (w_loop / 'model.safetensors').symlink_to(w_loop / 'model.safetensors')
    cfg_dir = write_dir(tmp_path / 'config-a-dir', None, hf['tensors'])
    (cfg_dir / 'config.json').mkdir()
    w_dir = write_dir(tmp_path / 'weights-a-dir', hf['config'], None)
    (w_dir / 'model.safetensors').mkdir()
    dangling = write_dir(tmp_path / 'dangling', hf['config'], None)
    (dangling / 'model.safetensors').symlink_to(tmp_path / 'nowhere')
    empty = write_dir(tmp_path / 'empty-weights', hf['config'], None)
    (empty / 'model.safetensors').write_bytes(b'')
    return {'directory a symlink loop': loop, 'directory is a file': a_file, 'no such directory': tmp_path / 'nope',
            'config.json a symlink loop': cfg_loop, 'model.safetensors a symlink loop': w_loop,
            'config.json a directory': cfg_dir, 'model.safetensors a directory': w_dir,
            'model.safetensors a dangling symlink': dangling, 'model.safetensors empty': empty,
            'no weights': write_dir(tmp_path / 'no-weights', hf['config'], None)}


class Boom:
    """Pickles as a call of os.system: a loader that runs pickled code would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def rewrite_pickle(path: Path, obj) -> None:
    """Replaces the pickle inside the torch zip file at `path` with `obj` pickled (or with `obj` itself, if bytes)."""
    with zipfile.ZipFile(path) as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in records if n.endswith('data.pkl'))
    records[name] = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        for n, data in records.items():
            z.writestr(n, data)


BIN_ATTACKS = {
    'a pickle that calls os.system': lambda path, marker: rewrite_pickle(path, {'model.norm.weight': Boom(marker)}),
    'a pickle of a list, not a dict': lambda path, marker: rewrite_pickle(path, [1, 2, 3]),
    'a dict of strings': lambda path, marker: rewrite_pickle(path, {'model.norm.weight': 'x'}),
    'truncated in half': lambda path, marker: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
    'not a zip or a pickle': lambda path, marker: path.write_bytes(b'\x00' * 4096),
}
