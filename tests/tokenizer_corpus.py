"""Deterministic text for checking and timing the World tokenizer: many scripts, code, emoji, whitespace, rare bytes.

Everything is generated here (seeded), so tests and benchmarks need no downloads and see the same text everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable

ENGLISH = (
    'The converter reads a checkpoint once and writes it once. It refuses what it cannot express, names the tensor '
    "that is wrong, and never guesses. Isn't that what you'd expect? We measured it: 1.5B parameters in 3.2 s, "
    'about 0.9 GB/s on a laptop SSD (NVMe, PCIe 3.0). "Quoted text", (parentheses), [brackets], {braces}; '
    'semicolons; colons: dashes - and -- and \u2014 em dashes \u2014 ellipses... and e.g. abbreviations, U.S.A., Dr. Smith.\n'
)
CHINESE = (
    '这个转换器只读一次模型文件，也只写一次。它不会猜测：遇到无法表达的结构就直接拒绝，并指出是哪个张量出'
    '了问题。我们在笔记本上测试过，十五亿参数的模型只需三秒。“引号”《书名号》（括号）——破折号……省略'
    '号。今天天气很好，我们去公园散步吧！龘齉屮驫\n'
)
JAPANESE = (
    'この変換器はチェックポイントを一度だけ読み、一度だけ書きます。カタカナとひらがな、漢字が混ざった文章'
    'です。「かぎ括弧」や、ﾊﾝｶｸｶﾀｶﾅもあります。東京都でラーメンを食べました。\n'
)
OTHER_SCRIPTS = (
    '한국어 문장입니다. Русский текст. Ελληνικά. العربية نص. עברית. हिन्दी पाठ। ภาษาไทย Ạệ́ Tiếng Việt.'
    ' Straße, naïve, café, åäö, Łódź, ıİşğ.\n'
)
EMOJI = (
    '\U0001f389\U0001f389 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 '
    '\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8 \u2764\ufe0f \u263a \U0001f600\U0001f923\U0001f9e0 '
    '\U00020000\U0002a6d6 \U0001d518\U0001d4d7 \U00010348 \u00a9\u00ae\u2122 \u2211\u222b\u221e\u2248\u2260 '
    '\ufffd \ufeff \u200b \u3000 \u00a0 \U0010fffd\n'
)
CODE = '''def greedy(text: bytes, trie) -> list[int]:
    """Longest match first."""
    i, out = 0, []
    while i < len(text):
        j, tok = trie.longest(text, i)  # never empty
        out.append(tok); i = j
    return out

if __name__ == "__main__":
\tprint(greedy(b"hello", None) or {"a": [1, 2.5e-3, None, True]})

#include <stdio.h>
int main(void) { for (int i = 0; i < 10; ++i) printf("%d\\n", i << 2); return 0; }
<div class="x"><a href="https://example.com/a?b=1&amp;c=2#frag">link</a></div>
$ git log --oneline | head -n 3 && echo "$HOME" > /tmp/x.txt 2>&1
| col | value |\r\n|-----|------:|\r\n| a   |  1.00 |\r\n
'''
CONTROL = ''.join(map(chr, range(32))) + '\x7f' + ''.join(map(chr, range(0x80, 0xA0))) + '\n'


def whitespace_runs() -> str:
    parts = []
    for n in (*range(1, 20), 31, 32, 33, 63, 64, 65, 127, 128, 129, 130, 255, 256, 257, 300):
        parts += [' ' * n, 'x', '\t' * n, 'y', '\n' * (n % 40 + 1), '\r\n' * (n % 7 + 1), ' \n' * (n % 9), '\u3000' * (n % 5)]
        parts += ['-' * n, '=' * (n % 90), '#' * (n % 85), '.' * (n % 17), '_' * (n % 33), '*' * (n % 25)]
    return ''.join(parts)


SAMPLES = {
    'english': ENGLISH,
    'chinese': CHINESE,
    'japanese': JAPANESE,
    'other-scripts': OTHER_SCRIPTS,
    'emoji': EMOJI,
    'code': CODE,
    'control': CONTROL,
    'whitespace': whitespace_runs(),
}


def valid_tokens(vocab: dict[int, bytes]) -> list[str]:
    out = []
    for _, token in sorted(vocab.items()):
        try:
            out.append(token.decode('utf-8'))
        except UnicodeDecodeError:
            pass
    return out


def random_token_text(vocab: dict[int, bytes], n_tokens: int, seed: int = 0) -> str:
    """Vocabulary entries glued together at random: every boundary is a chance to cut in the wrong place."""
    rng = random.Random(seed)
    tokens = valid_tokens(vocab)
    return ''.join(rng.choice(tokens) for _ in range(n_tokens))


_CONT = (0x80, 0x8F, 0x9F, 0xA0, 0xBF)


def _seq_len(lead: int) -> int:
    return 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0


def _completions(token: bytes) -> list[bytes]:
    """Valid UTF-8 strings that contain `token`, made by adding a partial character before and/or after it."""
    k = len(token) - len(token.lstrip(bytes(range(0x80, 0xC0))))  # leading continuation bytes
    prefixes = [b''] if k == 0 else [
        bytes([lead, *mid]) for lead in range(0xC2, 0xF5) if _seq_len(lead) - 1 >= k
        for mid in ([()] if _seq_len(lead) - 1 == k else [(c,) * (_seq_len(lead) - 1 - k) for c in _CONT])
    ]
    # A token that starts a character may be shadowed by longer tokens for most completions: try them all.
    firsts = range(0x80, 0xC0) if k == 0 else _CONT
    tails = [b''] + [bytes([c]) + b'\x80' * extra for c in firsts for extra in range(3)]
    out = []
    for prefix in prefixes:
        for tail in tails:
            candidate = prefix + token + tail
            try:
                candidate.decode('utf-8')
            except UnicodeDecodeError:
                continue
            out.append(candidate)
    return out


def invalid_token_contexts(vocab: dict[int, bytes], encode_bytes: Callable[[bytes], list[int]]) -> dict[int, str]:
    """For each entry that is not valid UTF-8, a short valid text whose reference tokenization uses it, if any."""
    out = {}
    for idx, token in sorted(vocab.items()):
        try:
            token.decode('utf-8')
            continue
        except UnicodeDecodeError:
            pass
        for middle in _completions(token):
            for before, after in ((b'', b''), (b'a', b' '), (' \u4e2d'.encode(), b'\n')):
                text = before + middle + after
                if idx in encode_bytes(text):
                    out[idx] = text.decode('utf-8')
                    break
            if idx in out:
                break
    return out


def mixed_text(vocab: dict[int, bytes], size: int, seed: int = 0) -> str:
    """About `size` characters of samples, random-token text and random slices of both, shuffled together."""
    rng = random.Random(seed)
    pool = [*SAMPLES.values(), random_token_text(vocab, 5000, seed)]
    parts, total = [], 0
    while total < size:
        piece = rng.choice(pool)
        if rng.random() < 0.5:
            a, b = sorted(rng.randrange(len(piece) + 1) for _ in range(2))
            piece = piece[a:b]
        parts.append(piece)
        total += len(piece)
    return ''.join(parts)
