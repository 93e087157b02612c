"""The RWKV World tokenizer as a plain Hugging Face fast tokenizer: exact ids, no remote code.

World models tokenize by greedy longest match over bytes (rwkv's TRIE_TOKENIZER) with the 65529 entries of
rwkv_vocab_v20230424.txt. `tokenizers` has no such model (BPE and Unigram cannot reproduce it; WordPiece can but is
quadratic in the length of its input), so tokenizer.json composes one from standard parts:

1. ByteLevel pre-tokenizer (GPT-2's byte -> printable character table; no regex split, no prefix space): every
   byte becomes one character, so entries that are not valid UTF-8 are ordinary strings too;
2. Split by a pattern built from the vocabulary's trie (trie_regex.py) whose matches are exactly the greedy tokens,
   two per match to halve the per-piece overhead of `tokenizers`;
3. WordPiece with no continuation prefix, which is greedy longest match again inside each two-token piece;
4. ByteLevel decoder.

Id 0 (end of text) is the only special token, both eos and pad, under a name that is not a vocabulary entry ("\\n\\n"
is a real token and must stay one). There is no bos.

Building the pattern takes a second or two, so data/ ships the built tokenizer.json and writing it is a file
copy; tests/hub/test_tokenizer.py checks the shipped file equals a fresh build. Rebuild it with
`python -m fla.rwkv7_convert.hub.tokenizer`. Nothing heavy is imported: this module needs only the standard library.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from functools import cache
from pathlib import Path

from fla.rwkv7_convert.hub.chat import CHAT_TEMPLATE
from fla.rwkv7_convert.hub.trie_regex import greedy_longest_match_regex

__all__ = [
    'END_OF_TEXT',
    'WORLD_VOCAB_FILE',
    'WORLD_VOCAB_SIZE',
    'build_tokenizer_json',
    'is_world_vocab',
    'read_world_vocab',
    'token_id_span',
    'tokenizer_config',
    'write_world_tokenizer',
]

WORLD_VOCAB_SIZE = 65536  # embedding rows of World models: ids 0..65529 are used, the rest is padding
WORLD_VOCAB_FILE = 'rwkv_vocab_v20230424.txt'  # kept under this name in outputs: llama.cpp's converter reads it
END_OF_TEXT = '<|rwkv_tokenizer_end_of_text|>'
TOKENS_PER_PIECE = 2  # 3 and more measured slower: WordPiece re-scans the rest of the piece for every token

DATA_DIR = Path(__file__).resolve().parent / 'data'
VOCAB_PATH = DATA_DIR / WORLD_VOCAB_FILE
PREBUILT_PATH = DATA_DIR / 'world_tokenizer.json'


def is_world_vocab(vocab_size: int) -> bool:
    """Whether a model with this many embedding rows uses the World tokenizer."""
    return vocab_size == WORLD_VOCAB_SIZE


def read_world_vocab(path: str | os.PathLike = VOCAB_PATH) -> dict[int, bytes]:
    """id -> token bytes. Lines are `<id> <Python str or bytes literal> <length in bytes>`."""
    vocab: dict[int, bytes] = {}
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            idx, _, rest = line.rstrip('\n').partition(' ')
            literal, _, length = rest.rpartition(' ')
            quote = literal[:1]
            if quote in ('"', "'") and literal[-1:] == quote and '\\' not in literal and quote not in literal[1:-1]:
                token = literal[1:-1]  # no escapes possible: the quotes hold the text itself (most lines; 10x faster)
            else:
                token = ast.literal_eval(literal)  # a literal, never eval(): the file is data
            token = token.encode('utf-8') if isinstance(token, str) else token
            if not isinstance(token, bytes) or len(token) != int(length) or int(idx) in vocab:
                raise ValueError(f'{path}:{lineno}: malformed vocabulary line {line!r}')
            vocab[int(idx)] = token
    if len(set(vocab.values())) != len(vocab):
        raise ValueError(f'{path}: duplicate tokens')
    return vocab


@cache
def byte_chars() -> tuple[str, ...]:
    """GPT-2's table: printable Latin-1 bytes stand for themselves, the other bytes for characters from U+0100 up."""
    printable = [*range(ord('!'), ord('~') + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def to_byte_chars(token: bytes) -> str:
    table = byte_chars()
    return ''.join(table[b] for b in token)


def build_tokenizer_json(vocab: dict[int, bytes] | None = None) -> str:
    """tokenizer.json text for the World vocabulary (or another greedy longest-match vocabulary with all 256 bytes)."""
    vocab = read_world_vocab() if vocab is None else vocab
    if 0 in vocab:
        raise ValueError('id 0 is reserved for the end-of-text token')
    pieces = {to_byte_chars(token): idx for idx, token in sorted(vocab.items())}
    if END_OF_TEXT in pieces:
        raise ValueError(f'{END_OF_TEXT!r} is a vocabulary entry')
    if not {bytes([b]) for b in range(256)} <= set(vocab.values()):
        raise ValueError('every single byte must be a token, or some text has no tokenization')
    special = {'id': 0, 'content': END_OF_TEXT, 'single_word': False, 'lstrip': False, 'rstrip': False,
               'normalized': False, 'special': True}
    spec = {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': [special],
        'normalizer': None,
        'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [
            {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': False},
            {'type': 'Split', 'pattern': {'Regex': greedy_longest_match_regex(pieces, TOKENS_PER_PIECE)},
             'behavior': 'Isolated', 'invert': False},
        ]},
        'post_processor': None,
        'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
        'model': {
            'type': 'WordPiece',
            'unk_token': END_OF_TEXT,  # never produced: every piece is a sequence of vocabulary entries
            'continuing_subword_prefix': '',
            'max_input_chars_per_word': TOKENS_PER_PIECE * max(map(len, pieces)),
            'vocab': {END_OF_TEXT: 0, **pieces},
        },
    }
    return json.dumps(spec, ensure_ascii=False, separators=(',', ':')) + '\n'


def tokenizer_config() -> dict:
    """tokenizer_config.json: the stock PreTrainedTokenizerFast, so AutoTokenizer needs no trust_remote_code."""
    special = {'content': END_OF_TEXT, 'lstrip': False, 'normalized': False, 'rstrip': False, 'single_word': False,
               'special': True}
    return {
        'tokenizer_class': 'PreTrainedTokenizerFast',
        'added_tokens_decoder': {'0': special},
        'eos_token': END_OF_TEXT,
        'pad_token': END_OF_TEXT,
        'clean_up_tokenization_spaces': False,  # decode must give back the text exactly
        'model_max_length': int(1e30),  # transformers' own "no limit": an RNN has no context length
        # The eos name written in text (a user pasting it into a chat) is text, as for TRIE_TOKENIZER and llama.cpp:
        # id 0 comes only from the token itself (padding, eos, ids passed in). Pass split_special_tokens=False to
        # from_pretrained for the usual Hugging Face behaviour.
        'split_special_tokens': True,
        'chat_template': CHAT_TEMPLATE,
    }


def token_id_span(path: str | os.PathLike) -> int | None:
    """Embedding rows a tokenizer needs (its highest token id + 1), read from the tokenizer.json at `path` (the file
    or a folder holding it); None when there is no tokenizer.json to read it from."""
    path = Path(path)
    path = path / 'tokenizer.json' if path.is_dir() else path
    if path.name != 'tokenizer.json' or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    vocab = (data.get('model') or {}).get('vocab') or {}
    # BPE/WordPiece/WordLevel map piece -> id; Unigram lists [piece, score] in id order
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1] if vocab else []
    ids += [t.get('id', -1) for t in data.get('added_tokens') or []]
    ids = [i for i in ids if isinstance(i, int)]
    return max(ids) + 1 if ids else None


def write_world_tokenizer(outdir: str | os.PathLike) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json and the raw vocabulary into outdir; return the file names."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PREBUILT_PATH, outdir / 'tokenizer.json')
    with open(outdir / 'tokenizer_config.json', 'w', encoding='utf-8') as f:
        json.dump(tokenizer_config(), f, ensure_ascii=False, indent=2)
        f.write('\n')
    shutil.copyfile(VOCAB_PATH, outdir / WORLD_VOCAB_FILE)
    return ['tokenizer.json', 'tokenizer_config.json', WORLD_VOCAB_FILE]


if __name__ == '__main__':
    PREBUILT_PATH.write_text(build_tokenizer_json(), encoding='utf-8')
    print(f'wrote {PREBUILT_PATH} ({PREBUILT_PATH.stat().st_size:,} bytes)')
