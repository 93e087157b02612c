"""A Hugging Face model directory as one checkpoint: config.json, and the weight files (one file, or shards named by
an index), each opened lazily by readers.open_checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from fla.rwkv7_convert.errors import (
    ConfigError,
    KeyMismatchError,
    NotACheckpointError,
)
from fla.rwkv7_convert.formats.checkpoint import Checkpoint, TensorRef

CONFIG_FILE = 'config.json'
# A directory's weights, in the order transformers' from_pretrained looks for them: the first one present is what a
# user loads, so it is what we read (a stale index beside a newer model.safetensors must not win).
WEIGHT_SOURCES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json')
INDEX_FILES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')  # the others are weight files
WEIGHT_FILES = tuple(w for w in WEIGHT_SOURCES if w not in INDEX_FILES)
# JSON nested deeper than Python's recursion limit raises RecursionError, not JSONDecodeError
_JSON_ERRORS = (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError)


class _Handles:
    """Closes the files of a multi-file checkpoint together."""

    def __init__(self, checkpoints: list[Checkpoint]):
        self.checkpoints = checkpoints

    def close(self) -> None:
        for c in self.checkpoints:
            c.close()


def _bad_shard_name(name: object) -> bool:
    """Not the plain name of a file in the directory: not a string, a path ('../x', '/abs', 'sub/x'), or a name that
    is the directory itself or its parent ('' and '..', whose Path(name).name is the name itself), or holds a NUL."""
    return not isinstance(name, str) or name in ('', '.', '..') or '\0' in name or Path(name).name != name


def _flat(ckpt: Checkpoint, shown: str) -> dict[str, TensorRef]:
    tree = ckpt.tree
    if isinstance(tree, dict) and set(tree) == {'state_dict'}:
        tree = tree['state_dict']
    if not isinstance(tree, dict) or not all(isinstance(v, TensorRef) for v in tree.values()):
        raise NotACheckpointError(f'{ckpt.path.name} is not a flat mapping of names to tensors', shown)
    return tree


def open_directory(path: Path, open_file: Callable[[Path], Checkpoint]) -> Checkpoint:
    """A Hugging Face model directory: config.json plus `model.safetensors`, `pytorch_model.bin` or shards named by an
    index, read as one flat mapping of tensors (lazily, as single files are). Each weight file is opened with
    `open_file` (readers.open_checkpoint, passed in so that this module does not import its own caller)."""
    shown = str(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except _JSON_ERRORS as e:
        raise NotACheckpointError(f'cannot read {CONFIG_FILE} ({e})', shown) from e
    if not isinstance(config, dict):
        raise NotACheckpointError(f'{CONFIG_FILE} is not a JSON object', shown)
    opened: list[Checkpoint] = []
    try:
        source = next((w for w in WEIGHT_SOURCES if (path / w).is_file()), None)
        if source is None:
            raise NotACheckpointError(f'no weights: expected {" or ".join(WEIGHT_SOURCES[:2])}', shown)
        if source in WEIGHT_FILES:
            opened.append(open_file(path / source))
            tree = _flat(opened[-1], shown)
            return Checkpoint(path, 'hf-directory', tree, _Handles(opened), [source], config,
                              origins=dict.fromkeys(tree, source))
        index_name = source
        try:
            weight_map = json.loads((path / index_name).read_text())['weight_map']
            if not isinstance(weight_map, dict):
                raise TypeError('weight_map is not an object')
            bad = next((s for s in weight_map.values() if _bad_shard_name(s)), None)
        except (*_JSON_ERRORS, KeyError, TypeError) as e:
            raise NotACheckpointError(f'cannot read {index_name} ({e})', shown) from e
        if bad is not None:
            raise NotACheckpointError(f'{index_name} names a shard that is not a file name in the directory: {bad!r}',
                                      shown)
        shards = sorted(set(weight_map.values()))
        tensors: dict[str, TensorRef] = {}
        origins: dict[str, str] = {}
        problems = []
        for shard in shards:
            opened.append(open_file(path / shard))
            found = _flat(opened[-1], shown)
            for name, ref in found.items():
                if name in tensors:
                    problems.append(f'tensor {name} is stored in more than one shard ({origins[name]} and {shard})')
                tensors[name], origins[name] = ref, shard
            problems += [f'{index_name} puts {n} in {shard}, which does not hold it'
                         for n, s in weight_map.items() if s == shard and n not in found]
        if problems:
            raise KeyMismatchError(problems, shown)
        return Checkpoint(path, 'hf-directory', tensors, _Handles(opened), shards, config, origins=origins)
    except BaseException:
        _Handles(opened).close()
        raise


def has_config(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory with a config.json (a model's directory, not a bare state's)."""
    try:
        return (Path(path) / CONFIG_FILE).is_file()
    except OSError:
        return False


JSON_MAX_BYTES = 1 << 20  # a config file is a few KB: anything larger is not one


def read_json_object(path: Path, what: str) -> dict:
    """A small JSON file that must hold an object (an adapter_config.json beside a model, ...): its dict, or one line
    naming the file and `what` it should be (a regular file under JSON_MAX_BYTES, UTF-8 JSON, an object)."""
    try:
        if not path.is_file() or path.stat().st_size > JSON_MAX_BYTES:
            raise ConfigError(f'not {what}: expected a regular file under {JSON_MAX_BYTES} bytes', str(path))
        data = json.loads(path.read_text(encoding='utf-8'))
    except _JSON_ERRORS as e:
        raise ConfigError(f'not {what}: {e}', str(path)) from e
    if not isinstance(data, dict):
        raise ConfigError(f'not {what}: expected a JSON object', str(path))
    return data


def read_config(model_dir: Path) -> dict:
    """config.json of a Hugging Face directory, as a dict; a one-line error when there is none or it is no JSON object."""
    shown = str(model_dir)
    path = model_dir / CONFIG_FILE
    try:  # is_dir/is_file raise on a directory that cannot be searched (EACCES)
        if not model_dir.exists():
            raise NotACheckpointError('no such directory', shown)
        if not model_dir.is_dir():
            raise NotACheckpointError('is a file; expected a Hugging Face model directory (config.json + '
                                      'model.safetensors); for a BlinkDL .pth use convert_to_rwkv7.py', shown)
        if not path.is_file():
            raise ConfigError(f'no {CONFIG_FILE}: not a Hugging Face model directory', shown)
    except OSError as e:
        raise NotACheckpointError(f'cannot read the directory ({e.strerror or e})', shown) from e
    try:
        cfg = json.loads(path.read_text())
    except _JSON_ERRORS as e:
        raise ConfigError(f'cannot read {CONFIG_FILE} ({e})', shown) from e
    if not isinstance(cfg, dict):
        raise ConfigError(f'{CONFIG_FILE} is not a JSON object', shown)
    return cfg
