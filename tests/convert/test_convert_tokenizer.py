"""The converter writes the exact World tokenizer for World-vocabulary models, and the choice can be overridden."""

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.hub.tokenizer import WORLD_VOCAB_SIZE

WORLD_FILES = {'tokenizer.json', 'tokenizer_config.json', 'rwkv_vocab_v20230424.txt'}


@pytest.fixture(scope='module')
def world_checkpoint(tmp_path_factory):
    shape = Goose(vocab=WORLD_VOCAB_SIZE, hidden=64, layers=1, head_size=64)
    return save(make_state_dict(shape, dtype=torch.bfloat16), tmp_path_factory.mktemp('world') / 'world.pth')


def test_world_vocab_gets_the_world_tokenizer(tmp_path, world_checkpoint):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    result = convert_to_fla(world_checkpoint, tmp_path / 'out')
    assert WORLD_FILES <= set(result.files) and WORLD_FILES <= {p.name for p in (tmp_path / 'out').iterdir()}
    tok = AutoTokenizer.from_pretrained(tmp_path / 'out')
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token_id == tok.pad_token_id == 0 and tok.bos_token_id is None
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    from fla.rwkv7_convert.hub.tokenizer import VOCAB_PATH
    text = 'Hello, Goose! 你好 🙂\n\n  def f(x): return x'
    assert tok(text)['input_ids'] == TRIE_TOKENIZER(str(VOCAB_PATH)).encode(text)


def test_tokenizer_choices(tmp_path, world_checkpoint):
    convert_to_fla(world_checkpoint, tmp_path / 'none', tokenizer='none')
    assert not WORLD_FILES & {p.name for p in (tmp_path / 'none').iterdir()}
    small = save(make_state_dict(Goose(layers=1)), tmp_path / 'small.pth')
    convert_to_fla(small, tmp_path / 'auto')  # 256 rows: not the World vocabulary, so no tokenizer
    assert not WORLD_FILES & {p.name for p in (tmp_path / 'auto').iterdir()}
    convert_to_fla(small, tmp_path / 'copied', tokenizer=str(tmp_path / 'none' / 'config.json'))
    assert (tmp_path / 'copied' / 'config.json').exists()
    convert_to_fla(small, tmp_path / 'from-dir', tokenizer=str(tmp_path / 'world-dir'), dry_run=True)
    with pytest.raises(ConversionError, match='no tokenizer files found'):
        convert_to_fla(small, tmp_path / 'bad', tokenizer=str(tmp_path))
    assert not (tmp_path / 'bad').exists()
    # the World tokenizer on another vocabulary would pair ids with the wrong text: refused before anything is written
    for dry_run in (True, False):
        with pytest.raises(ConversionError, match='the model has 256 embedding rows, the RWKV World tokenizer needs 65536'):
            convert_to_fla(small, tmp_path / 'world-on-256', tokenizer='world', dry_run=dry_run)
    assert not (tmp_path / 'world-on-256').exists()
    convert_to_fla(world_checkpoint, tmp_path / 'world', tokenizer='world')
    assert WORLD_FILES <= {p.name for p in (tmp_path / 'world').iterdir()}


def test_verify_on_text_through_the_written_tokenizer(tmp_path, world_checkpoint):
    from fla.rwkv7_convert.proof.verify import verify
    convert_to_fla(world_checkpoint, tmp_path / 'out', precision='F32')
    text = tmp_path / 'prompt.txt'
    text.write_text('The Eiffel tower is in the city of Paris. 巴黎有埃菲尔铁塔。', encoding='utf-8')
    report = verify(world_checkpoint, tmp_path / 'out', text=str(text), tokens=64, batch=2)
    assert report.passed and report.batch == 2 and 10 <= report.tokens <= 64


def test_a_tokenizer_folder_saved_by_transformers_keeps_its_chat_template(tmp_path, world_checkpoint):
    """transformers 5's save_pretrained moves the chat template into chat_template.jinja: copied with the rest."""
    from transformers import AutoTokenizer
    convert_to_fla(world_checkpoint, tmp_path / 'first')
    AutoTokenizer.from_pretrained(tmp_path / 'first').save_pretrained(tmp_path / 'saved')
    result = convert_to_fla(world_checkpoint, tmp_path / 'out', tokenizer=str(tmp_path / 'saved'))
    assert 'chat_template.jinja' in result.files
    tok = AutoTokenizer.from_pretrained(tmp_path / 'out')
    rendered = tok.apply_chat_template([{'role': 'user', 'content': 'xxx'}], tokenize=False, add_generation_prompt=True)
    assert rendered == 'User: xxx\n\nAssistant:'


def test_a_tokenizer_path_with_more_ids_than_the_model_has_rows_is_refused(tmp_path, world_checkpoint):
    """A 65536-token World tokenizer copied next to a 512-row model would index past the embedding: one line, as
    --tokenizer world on that model is refused; a tokenizer that fits is copied."""
    convert_to_fla(world_checkpoint, tmp_path / 'world')
    small = save(make_state_dict(Goose(vocab=512, layers=1)), tmp_path / 'small.pth')
    for choice in (tmp_path / 'world', tmp_path / 'world' / 'tokenizer.json'):
        for dry_run in (True, False):
            with pytest.raises(ConversionError, match='the model has 512 embedding rows, this tokenizer has token ids '
                                                      'up to 65529') as e:
                convert_to_fla(small, tmp_path / 'small-out', tokenizer=str(choice), dry_run=dry_run)
            assert '\n' not in str(e.value) and str(small) in str(e.value)
    assert not (tmp_path / 'small-out').exists()
    result = convert_to_fla(world_checkpoint, tmp_path / 'fits', tokenizer=str(tmp_path / 'world'))
    assert 'tokenizer.json' in result.files
