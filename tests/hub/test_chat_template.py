"""The chat template renders BlinkDL's trained format exactly, and generation stops where BlinkDL's chat demo does.

The expected strings are written from BlinkDL's document (RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt`):

    "User: xxx\\n\\nAssistant:"
    "User: xxx\\n\\nAssistant: xxx\\n\\nUser: xxx\\n\\nAssistant:"
    "System: xxx\\n\\nUser: xxx\\n\\nAssistant:"
    "System: xxx\\n\\nUser: xxx\\n\\nAssistant: xxx\\n\\nUser: xxx\\n\\nAssistant:"
    "Assistant: <think"   (think mode)

and its cleaning rule, `re.sub(r'\\n{2,}', '\\n', txt.replace('\\r\\n','\\n')).strip()`.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fla.rwkv7_convert.hub import tokenizer as world
from fla.rwkv7_convert.hub.chat import TURN_END_TOKEN, TURN_END_TOKENS, generation_config

rwkv_tokenizer = pytest.importorskip('rwkv.rwkv_tokenizer')


def clean_txt(txt: str) -> str:  # the document's rule, as it states it
    return re.sub(r'\n{2,}', '\n', txt.replace('\r\n', '\n')).strip()


def blinkdl_format(messages: list[dict], add_generation_prompt: bool) -> str:
    """The format of the document: 'Role: text' turns, each followed by a blank line; 'Assistant:' to prompt."""
    names = {'system': 'System', 'user': 'User', 'assistant': 'Assistant'}
    text = ''.join(f'{names[m["role"]]}: {clean_txt(m["content"])}\n\n' for m in messages)
    return text + ('Assistant:' if add_generation_prompt else '')


def user(text):
    return {'role': 'user', 'content': text}


def assistant(text):
    return {'role': 'assistant', 'content': text}


def system(text):
    return {'role': 'system', 'content': text}


@pytest.mark.parametrize('messages, expected', [
    pytest.param([user('xxx')], 'User: xxx\n\nAssistant:', id='user'),
    pytest.param([user('xxx'), assistant('xxx'), user('xxx')], 'User: xxx\n\nAssistant: xxx\n\nUser: xxx\n\nAssistant:',
                 id='multi-turn'),
    pytest.param([system('xxx'), user('xxx')], 'System: xxx\n\nUser: xxx\n\nAssistant:', id='system'),
    pytest.param([system('xxx'), user('xxx'), assistant('xxx'), user('xxx')],
                 'System: xxx\n\nUser: xxx\n\nAssistant: xxx\n\nUser: xxx\n\nAssistant:', id='system-multi-turn'),
    # inputs cleaned: CRLF to LF, runs of newlines to one, outer whitespace stripped
    pytest.param([system(' Be brief.\r\n\r\nNo lists. '), user('line 1\n\n\n\nline 2\n\n')],
                 'System: Be brief.\nNo lists.\n\nUser: line 1\nline 2\n\nAssistant:', id='cleaned'),
    # the reply as generated: it follows "Assistant:" with a space, and ended at the blank line
    pytest.param([user('hi'), assistant(' Hello!\n\n'), user('bye')],
                 'User: hi\n\nAssistant: Hello!\n\nUser: bye\n\nAssistant:', id='generated-reply-in-history'),
])
def test_renders_blinkdls_documented_strings(hf, messages, expected):
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    # without the prompt, the conversation ends after its last turn's blank line
    without = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == expected.removesuffix('Assistant:')


def test_think_mode_opens_a_think_block(hf):
    messages = [user('xxx')]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                  enable_thinking=True) == 'User: xxx\n\nAssistant: <think'
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False) == 'User: xxx\n\nAssistant:'


@pytest.mark.parametrize('messages, message', [
    pytest.param([{'role': 'tool', 'content': 'x'}], 'roles are system, user and assistant, not tool', id='tool-role'),
    pytest.param([{'role': 'user', 'content': [{'type': 'image'}]}], 'content must be a string', id='not-text'),
])
def test_what_the_format_cannot_express_is_refused(hf, messages, message):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match=message):
        hf.apply_chat_template(messages, tokenize=False)


_text = st.lists(st.sampled_from(['a', 'Z', ' ', '\n', '\r', '\r\n', '\t', '你', '\u3000', ':']), max_size=40).map(''.join)
_message = st.builds(lambda role, content: {'role': role, 'content': content},
                     st.sampled_from(['system', 'user', 'assistant']), _text)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(_message, min_size=1, max_size=5), prompt=st.booleans())
def test_equals_the_documented_format_on_any_messages(hf, messages, prompt):
    got = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    assert got == blinkdl_format(messages, prompt)


def test_newline_runs_longer_than_any_single_pass(hf):
    text = 'a' + '\n' * 5000 + 'b' + '\r\n' * 77 + 'c'
    assert hf.apply_chat_template([user(text)], tokenize=False) == 'User: a\nb\nc\n\n'


def test_tokenized_chat_equals_blinkdls_tokenizer_on_the_rendered_text(hf, reference):
    messages = [system('You are terse.'), user('Bonjour! 你好 <|rwkv_tokenizer_end_of_text|>'), assistant('Salut.'),
                user('Why is the sky blue?')]
    ids = hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)['input_ids']
    text = blinkdl_format(messages, True)
    assert ids == reference.encode(text) and 0 not in ids  # the eos name typed by a user stays text


def test_turn_end_tokens_are_the_entries_holding_a_blank_line():
    vocab = world.read_world_vocab()
    assert TURN_END_TOKENS == tuple(sorted(i for i, token in vocab.items() if b'\n\n' in token))
    assert vocab[TURN_END_TOKEN] == b'\n\n' and TURN_END_TOKENS[0] == TURN_END_TOKEN
    assert generation_config(chat=True)['eos_token_id'] == [0, *TURN_END_TOKENS]
    assert generation_config(chat=False)['eos_token_id'] == 0


@pytest.mark.parametrize('reply, turn_end', [
    pytest.param('Hello!', [261], id='ascii'),
    pytest.param('def f():\n    return 1', [261], id='code'),
    pytest.param('42', [261], id='digits'),
    # after a Chinese full stop greedy matching takes "。\n" then "\n": not one token, so generation_config cannot
    # see it; stop_strings=['\n\n'] with the tokenizer does (chat.py)
    pytest.param('你好。', [28329, 11], id='chinese-full-stop'),
])
def test_where_a_reply_ends_in_the_trained_format(reference, reply, turn_end):
    """BlinkDL's chat demo stops when the decoded reply contains "\n\n"; in the trained text that blank line is the
    token(s) below, and a single token holding it is an eos of generation_config.json."""
    ids = reference.encode(blinkdl_format([user('hi'), assistant(reply), user('next')], False))
    done = f'User: hi\n\nAssistant: {reply}\n\n'.encode()
    stop = next(i for i in range(len(ids)) if reference.decodeBytes(ids[:i + 1]).startswith(done))  # where it stops
    assert ids[stop + 1 - len(turn_end):stop + 1] == turn_end
    assert (ids[stop] in TURN_END_TOKENS) == (len(turn_end) == 1)


def test_chat_template_is_in_tokenizer_config(tmp_path):
    world.write_world_tokenizer(tmp_path)
    config = json.loads((tmp_path / 'tokenizer_config.json').read_text())
    assert 'Assistant:' in config['chat_template'] and config['split_special_tokens'] is True


@pytest.mark.parametrize('tail, stops', [
    pytest.param([28329, 11], True, id='full-stop-newline-then-newline'),
    pytest.param([11, 11], True, id='two-newlines'),
    pytest.param([261], True, id='blank-line-token'),
    pytest.param([28329], False, id='one-newline'),
    pytest.param([11], False, id='newline'),
])
def test_stop_strings_catch_a_blank_line_split_over_two_tokens(hf, tail, stops):
    """The remedy the README gives for what generation_config.json cannot see: stop_strings=['\\n\\n'] with the
    tokenizer, which transformers checks on the decoded text."""
    import torch
    from transformers.generation.stopping_criteria import StopStringCriteria

    criterion = StopStringCriteria(tokenizer=hf, stop_strings=['\n\n'])
    ids = torch.tensor([hf.encode('User: hi\n\nAssistant: 你好') + tail])
    assert bool(criterion(ids, None)[0]) is stops
