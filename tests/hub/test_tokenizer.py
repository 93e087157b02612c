"""The World tokenizer we write gives exactly rwkv's TRIE_TOKENIZER ids, and loads as a stock fast tokenizer."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import tokenizer_corpus as corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from fla.rwkv7_convert.hub import tokenizer as world
from fla.rwkv7_convert.hub.trie_regex import greedy_longest_match_regex

tokenizers = pytest.importorskip('tokenizers')
rwkv_tokenizer = pytest.importorskip('rwkv.rwkv_tokenizer')

# Entries no valid UTF-8 text can use: bytes that never occur in UTF-8, and 0xC3, whose every two-byte completion
# (U+00C0..U+00FF) is a token itself, so greedy matching never stops after it.
UNUSABLE = {bytes([b]) for b in (0xC0, 0xC1, 0xC3, *range(0xF5, 0x100))}


@pytest.fixture(scope='module')
def vocab() -> dict[int, bytes]:
    return world.read_world_vocab()


@pytest.fixture(scope='module')
def fast(outdir):
    return tokenizers.Tokenizer.from_file(str(outdir / 'tokenizer.json'))


@pytest.fixture(scope='module')
def contexts(vocab, reference) -> dict[int, str]:
    return corpus.invalid_token_contexts(vocab, reference.encodeBytes)


@pytest.fixture(scope='module')
def texts(vocab, contexts) -> dict[str, str]:
    return {
        **corpus.SAMPLES,
        'random-tokens': corpus.random_token_text(vocab, 20_000, seed=1),
        'non-utf8-entries': '\n'.join(contexts.values()),
        'long-mixed': corpus.mixed_text(vocab, 400_000, seed=2),
    }


def as_text(token: bytes) -> str | None:
    try:
        return token.decode('utf-8')
    except UnicodeDecodeError:
        return None


def assert_same_ids(got: list[int], want: list[int], text: str, reference) -> None:
    if got == want:
        return
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    at = len(reference.decodeBytes(want[:i]))
    pytest.fail(f'ids differ at token {i} (byte {at}, text {text.encode()[at:at + 40]!r}): '
                f'got {got[i:i + 5]}, want {want[i:i + 5]}')


KINDS = [*corpus.SAMPLES, 'random-tokens', 'non-utf8-entries', 'long-mixed']


@pytest.mark.parametrize('kind', [pytest.param(k, id=k) for k in KINDS])
def test_ids_equal_trie_tokenizer(kind, texts, fast, hf, reference):
    text = texts[kind]
    want = reference.encode(text)
    assert_same_ids(fast.encode(text).ids, want, text, reference)
    assert_same_ids(hf(text)['input_ids'], want, text, reference)


@pytest.mark.parametrize('kind', [pytest.param(k, id=k) for k in KINDS])
def test_decode_round_trip(kind, texts, fast, hf):
    text = texts[kind]
    ids = fast.encode(text).ids
    assert fast.decode(ids) == text
    assert hf.decode(ids) == text
    with_eos_name = text[:1000] + world.END_OF_TEXT + text[1000:2000]
    assert hf.decode(hf(with_eos_name)['input_ids']) == with_eos_name


def test_every_entry_alone_is_one_token(vocab, fast):
    # Greedy matching of a string that is an entry takes the whole entry: this walks every path of the pattern.
    entries = [(idx, text) for idx, token in sorted(vocab.items()) if (text := as_text(token)) is not None]
    assert len(entries) == len(vocab) - 486
    got = [e.ids for e in fast.encode_batch([text for _, text in entries])]
    wrong = [(idx, text, ids) for (idx, text), ids in zip(entries, got) if ids != [idx]]
    assert not wrong, wrong[:10]


def test_every_non_utf8_entry_in_context(vocab, contexts, fast, reference):
    invalid = {idx for idx, token in vocab.items() if as_text(token) is None}
    assert len(invalid) == 486
    # every entry that valid text can use at all is used by its context, and cut the same way by us
    assert {vocab[idx] for idx in invalid - contexts.keys()} == UNUSABLE
    for idx, text in contexts.items():
        assert idx in reference.encode(text)
        assert_same_ids(fast.encode(text).ids, reference.encode(text), text, reference)


def test_every_id_decodes_to_its_bytes(vocab, fast):
    table = {ch: b for b, ch in enumerate(world.byte_chars())}
    for idx, token in vocab.items():
        assert bytes(table[ch] for ch in fast.id_to_token(idx)) == token, idx
    assert fast.id_to_token(0) == world.END_OF_TEXT
    assert fast.get_vocab_size() == len(vocab) + 1


def test_auto_tokenizer_is_stock_fast_tokenizer(outdir, hf, reference):
    from transformers import PreTrainedTokenizerFast

    config = json.loads((outdir / 'tokenizer_config.json').read_text())
    assert 'auto_map' not in config and config['tokenizer_class'] == 'PreTrainedTokenizerFast'
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.eos_token_id == hf.pad_token_id == 0 and hf.bos_token_id is None
    assert hf.eos_token == world.END_OF_TEXT and hf.all_special_ids == [0]
    assert hf.model_max_length >= 10**18
    text = 'Hello\n\nworld'
    ids = hf(text)['input_ids']
    assert hf(text, add_special_tokens=False)['input_ids'] == ids  # no bos/eos added
    assert 261 in ids and hf.convert_ids_to_tokens(261) == '\u010a\u010a'  # "\n\n" stays an ordinary token
    assert hf.decode([*ids, 0], skip_special_tokens=True) == text
    assert hf.decode([*ids, 0]) == text + world.END_OF_TEXT
    assert hf.encode('a' + world.END_OF_TEXT + 'b') == reference.encode('a' + world.END_OF_TEXT + 'b')
    batch = hf(['a', 'abc def'], padding=True)['input_ids']
    assert batch[0][-1] == 0


@pytest.mark.parametrize('text', [
    pytest.param('a' + world.END_OF_TEXT + 'b', id='inside'),
    pytest.param(world.END_OF_TEXT, id='alone'),
    pytest.param('User: ' + world.END_OF_TEXT * 3 + '\n\nAssistant:', id='repeated-in-chat'),
])
def test_end_of_text_name_in_text_is_text(hf, reference, text):
    """As in TRIE_TOKENIZER and llama.cpp, the eos name typed in text is text: id 0 comes only from the token."""
    ids = hf(text)['input_ids']
    assert ids == reference.encode(text) and 0 not in ids
    assert hf.decode(ids) == text
    # the token itself still is id 0, and decodes to its name (or to nothing when special tokens are skipped)
    assert hf.eos_token_id == 0 and hf.decode([*ids, 0], skip_special_tokens=True) == text
    assert hf.decode([0]) == world.END_OF_TEXT


def test_split_special_tokens_false_restores_the_usual_hugging_face_behaviour(outdir):
    from transformers import AutoTokenizer

    usual = AutoTokenizer.from_pretrained(str(outdir), split_special_tokens=False)
    assert usual.encode('a' + world.END_OF_TEXT + 'b') == [98, 0, 99]


def test_save_pretrained_round_trip(hf, texts, reference, tmp_path):
    from transformers import AutoTokenizer

    hf.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    text = texts['long-mixed'][:50_000]
    assert_same_ids(again(text)['input_ids'], reference.encode(text), text, reference)


def test_shipped_tokenizer_json_is_fresh():
    assert world.PREBUILT_PATH.read_text(encoding='utf-8') == world.build_tokenizer_json(), (
        'data/world_tokenizer.json is stale: run python -m fla.rwkv7_convert.hub.tokenizer')


def test_shipped_vocab_is_rwkv_package_file():
    shipped = Path(rwkv_tokenizer.__file__).with_name(world.WORLD_VOCAB_FILE)
    assert world.VOCAB_PATH.read_bytes() == shipped.read_bytes()
    notice = (world.DATA_DIR / 'NOTICE').read_text()
    assert 'Apache' in notice and (world.DATA_DIR / 'LICENSE-rwkv-vocab').is_file()


def test_write_world_tokenizer(tmp_path):
    names = world.write_world_tokenizer(tmp_path / 'new' / 'dir')
    assert names == ['tokenizer.json', 'tokenizer_config.json', 'rwkv_vocab_v20230424.txt']
    assert sorted(p.name for p in (tmp_path / 'new' / 'dir').iterdir()) == sorted(names)
    # copied, never rebuilt per conversion (its speed is measured by benchmarks/benchmark_tokenizer.py, not here)
    assert (tmp_path / 'new' / 'dir' / 'tokenizer.json').read_bytes() == world.PREBUILT_PATH.read_bytes()
    config = json.loads((tmp_path / 'new' / 'dir' / 'tokenizer_config.json').read_text())
    assert config == world.tokenizer_config()


@pytest.mark.parametrize('size, expected', [
    pytest.param(65536, True, id='world'),
    pytest.param(65530, False, id='used-ids-only'),
    pytest.param(50277, False, id='pile'),
    pytest.param(256, False, id='bytes'),
])
def test_is_world_vocab(size, expected):
    assert world.is_world_vocab(size) is expected


@pytest.mark.parametrize('line', [
    pytest.param("1 'a' 2\n", id='wrong-length'),
    pytest.param("1 12 2\n", id='not-a-string'),
    pytest.param("1 __import__('os') 1\n", id='not-a-literal'),
])
def test_malformed_vocab_is_refused(tmp_path, line):
    path = tmp_path / 'vocab.txt'
    path.write_text(line, encoding='utf-8')
    with pytest.raises(ValueError):
        world.read_world_vocab(path)


def test_vocab_without_every_byte_is_refused():
    with pytest.raises(ValueError, match='single byte'):
        world.build_tokenizer_json({1: b'a', 2: b'ab'})


@pytest.mark.parametrize('path', [pytest.param(p, id=p.name) for p in (
    Path(world.__file__), Path(world.__file__).with_name('trie_regex.py'))])
def test_modules_import_only_the_standard_library(path):
    tree = ast.parse(path.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    heavy = {name for name in imported if name.split('.')[0] not in sys.stdlib_module_names
             and not name.startswith('fla.rwkv7_convert')}
    assert not heavy


# Regex metacharacters, class metacharacters and non-ASCII, more than 8 of them so nodes are split into groups.
ALPHABET = 'ab-]^[\\&.|(*é中'


def greedy(text: str, vocab: set[str]) -> list[str]:
    out, i = [], 0
    while i < len(text):
        j = max(j for j in range(i + 1, len(text) + 1) if text[i:j] in vocab)
        out.append(text[i:j])
        i = j
    return out


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(ALPHABET, min_size=2, max_size=6), max_size=60),
    text=st.text(ALPHABET, max_size=80),
    per_match=st.sampled_from([1, 2, 3]),
)
def test_trie_regex_is_greedy_longest_match(words, text, per_match):
    vocab = set(ALPHABET) | set(words)
    ids = {w: i for i, w in enumerate(sorted(vocab), 1)}
    pattern = greedy_longest_match_regex(vocab, per_match)
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(
        {'<unk>': 0, **ids}, unk_token='<unk>', continuing_subword_prefix='', max_input_chars_per_word=1000))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), 'isolated')
    assert tok.encode(text).tokens == greedy(text, vocab)
