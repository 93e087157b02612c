"""A regular expression whose leftmost match is the greedy longest-match token, built from a vocabulary's trie.

Greedy longest match (RWKV's TRIE_TOKENIZER) walks the trie as deep as the text allows and cuts at the deepest
node that is a token. A backtracking engine (Oniguruma, inside `tokenizers`) does the same with this pattern:
at each trie node an alternation over the next characters, where every child that is itself a token makes the
rest optional. Greedy `?` tries the longer path first and backtracking unwinds to the deepest token passed, so
the first match found is the longest token. At most one alternative can match a given character, so their order
changes speed only, never the result.

Speed: a failed alternative costs Oniguruma a stack push and pop, so nodes with many children are split into
groups of a few alternatives, each behind a one-character lookahead class, and the likelier branches come first.
Likelihood is estimated from the vocabulary alone (the number of tokens under a branch) so that the pattern is a
pure function of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ['greedy_longest_match_regex']

# Oniguruma (Ruby syntax) metacharacters, outside and inside a character class.
_META = frozenset('\\^$.|?*+()[]{}')
_CLASS_META = frozenset('\\^-[]&')
# Alternatives per lookahead group (a node with more is split). Groups measured 1.1-1.3x faster than none on
# most texts; sizes from 4 to 16 were within noise of each other.
GROUP_SIZE = 8

_END = ''  # key marking "a token ends here" in a trie node; never a character


def _escape(ch: str) -> str:
    return '\\' + ch if ch in _META else ch


def _char_class(chars: Iterable[str]) -> str:
    chars = sorted(chars)
    if len(chars) == 1:
        return _escape(chars[0])
    return '[' + ''.join('\\' + c if c in _CLASS_META else c for c in chars) + ']'


def _trie(tokens: Iterable[str]) -> dict:
    root: dict = {}
    for token in tokens:
        if not token:
            raise ValueError('empty token')
        node = root
        for ch in token:
            node = node.setdefault(ch, {})
        node[_END] = True
    return root


def _count_tokens(node: dict, counts: dict[int, int]) -> int:
    n = 0
    for ch, child in node.items():
        n += 1 if ch == _END else _count_tokens(child, counts)
    counts[id(node)] = n
    return n


def _alternation(branches: list[tuple[str, set[str]]], group_size: int) -> str:
    """branches: (pattern, first characters), likeliest first."""
    if len(branches) == 1:
        return branches[0][0]
    if not group_size or len(branches) <= group_size:
        return '(?:' + '|'.join(p for p, _ in branches) + ')'
    groups = []
    for i in range(0, len(branches), group_size):
        group = branches[i:i + group_size]
        if len(group) == 1:
            groups.append(group[0][0])
        else:
            first = set().union(*(chars for _, chars in group))
            groups.append('(?=' + _char_class(first) + ')(?:' + '|'.join(p for p, _ in group) + ')')
    return '(?:' + '|'.join(groups) + ')'


def _node_pattern(node: dict, counts: dict[int, int], group_size: int) -> str:
    """Pattern for the longest token continuing from this node (at least one more character)."""
    inner, leaves = [], []
    for ch, child in node.items():
        if ch == _END:
            continue
        if len(child) == 1 and _END in child:
            leaves.append(ch)
            continue
        rest = _node_pattern(child, counts, group_size)
        # A child that is a token may stop here: greedy `?` still tries the longer path first.
        pattern = _escape(ch) + (f'(?:{rest})?' if _END in child else rest)
        inner.append((counts[id(child)], ch, pattern, {ch}))
    if leaves:
        # Children with nothing below them share one character class: one test instead of one alternative each.
        weight = len(leaves)
        inner.append((weight, min(leaves), _char_class(leaves), set(leaves)))
    inner.sort(key=lambda b: (-b[0], b[1]))
    return _alternation([(pattern, chars) for _, _, pattern, chars in inner], group_size)


def greedy_longest_match_regex(tokens: Iterable[str], per_match: int = 1, group_size: int = GROUP_SIZE) -> str:
    """Pattern whose leftmost-first match at any position is the longest token starting there.

    With per_match > 1 one match covers up to that many consecutive greedy tokens (a subroutine call repeats the
    one-token pattern, so the text does not grow); a model doing greedy longest match inside the piece (WordPiece
    with no continuation prefix) then splits it exactly the same way. Every character of the input must be a
    token on its own, or the pattern can fail to match. group_size 0 turns the lookahead groups off.
    """
    if per_match < 1:
        raise ValueError(f'per_match must be >= 1, got {per_match}')
    root = _trie(tokens)
    counts: dict[int, int] = {}
    _count_tokens(root, counts)
    one = _node_pattern(root, counts, group_size)
    if per_match == 1:
        return one
    # Each extra call tries to take one more token; nothing follows, so no call ever backtracks into a shorter token.
    return f'(?<t>{one})' + '\\g<t>?' * (per_match - 1)
