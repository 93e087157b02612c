"""The chat format RWKV-7 G1 models were trained on, as a Hugging Face chat template, and when a chat turn ends.

BlinkDL documents the format in RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt`:

    "System: xxx\\n\\nUser: xxx\\n\\nAssistant: xxx\\n\\nUser: xxx\\n\\nAssistant:"

the system turn optional, turns separated by a blank line, and every input cleaned first with
`re.sub(r'\\n{2,}', '\\n', txt.replace('\\r\\n', '\\n')).strip()`, since a blank line is what ends a turn. Jinja has no
regular expressions: replacing "\\n\\n" by "\\n" halves every run of newlines, so 32 passes collapse runs of up to
2**32. Cleaning is applied to assistant turns too: the model's own replies never hold a blank line (generation
stops there), and a history edited by hand keeps the trained format. `enable_thinking=True` opens a think block
("Assistant: <think"), the G1 think mode of the same document.

A turn ends where the model writes a blank line: ChatRWKV's API_DEMO_CHAT.py stops as soon as the decoded reply
contains "\\n\\n" (and bans the end-of-text token 0 while chatting). generation_config.json cannot hold a text
condition that works without the tokenizer (transformers' `stop_strings` makes `generate` fail unless it is also
given `tokenizer=`), so it stops on the tokens whose own text contains "\\n\\n": 261 ("\\n\\n", the separator greedy
matching gives after ordinary text) and the 33 longer ones ("\\n\\n\\n", " \\n\\n", "\\n\\n  ", ...), plus 0. Left out
is a blank line written as two tokens, such as "。\\n" then "\\n" (how greedy matching cuts a blank line after a
Chinese full stop): for BlinkDL's rule in full pass `stop_strings=['\\n\\n'], tokenizer=tokenizer` to `generate`.
"""

from __future__ import annotations

# World-vocabulary ids whose text contains "\n\n" (tests/hub/test_chat_template.py derives them from the vocabulary)
TURN_END_TOKENS = (261, 3327, 3328, 3329, 3336, 19238, 19239, 19240, 19241, 28348, 28349, 28350, 36205, 36206, 36207,
                   36208, 43907, 43908, 49921, 49922, 54805, 58650, 58651, 61269, 63121, 64157, 64781, 65083, 65248,
                   65309, 65395, 65432, 65446, 65464)
TURN_END_TOKEN = 261  # "\n\n" itself

CHAT_TEMPLATE = (
    "{%- set roles = {'system': 'System', 'user': 'User', 'assistant': 'Assistant'} -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in roles -%}"
    "{{- raise_exception('RWKV chat roles are system, user and assistant, not ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('RWKV chat messages hold text: content must be a string') -}}"
    "{%- endif -%}"
    "{%- set ns = namespace(text=message['content'] | replace('\\r\\n', '\\n')) -%}"
    "{%- for _ in range(32) -%}{%- set ns.text = ns.text | replace('\\n\\n', '\\n') -%}{%- endfor -%}"
    "{{- roles[message['role']] ~ ': ' ~ (ns.text | trim) ~ '\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- 'Assistant: <think' if enable_thinking is defined and enable_thinking else 'Assistant:' -}}"
    "{%- endif -%}"
)


def generation_config(chat: bool = False) -> dict:
    """generation_config.json. With the World tokenizer a reply also ends at a token holding "\n\n", where BlinkDL's
    chat demo stops a turn (see above); without it the only end is token 0."""
    eos = [0, *TURN_END_TOKENS] if chat else 0
    return {'bos_token_id': None, 'eos_token_id': eos, 'pad_token_id': 0, '_from_model_config': False}
