"""The README.md (model card) of a converted directory, and the source facts it and rwkv7_convert.json record.

The card is rendered from what the finished directory holds (config.json, and rwkv7_convert.json, which also names
the tokenizer files), so it can be rendered again: after `--verify` the converter rewrites it with the verdict,
atomically, leaving every other file as it was. Nothing in it depends on where the files lie or when they were
written (no paths, no dates): converting the same file twice gives the same directory, byte for byte, and the
folder can be published as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fla.rwkv7_convert.formats.display import human_count
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE

CARD_FILE = 'README.md'


def runs_fused(config: dict) -> bool:
    """Whether fla runs a config.json with its fused norms: RWKV7Config's default (True) when the key is absent, and
    fla tests the value's truth (`if config.fuse_norm`), so the string "false" runs fused too."""
    return bool(config.get('fuse_norm', True))


def fuse_norm_line(fuse_norm: bool) -> str:
    """What config.json's `fuse_norm` makes fla compute, and what it costs: one line, shown by the card, the converter's
    --dry-run and inspect (its default: mapping.config.DEFAULT_FUSE_NORM; the measurements: docs/verification.md)."""
    if fuse_norm:
        return ("fuse_norm: true (fla's fused Triton norms; they round in float32 as well as torch's; its fused "
                "l2-norm of kk adds 1e-6 inside the root where BlinkDL's F.normalize does not: ~2e-9 relative logits "
                'on trained-like weights, up to ~2e-6 where keys are small beside that eps, measured by verify; '
                "false, the converter's --fuse-norm false, gives BlinkDL's exact function with torch's unfused norms)")
    return ("fuse_norm: false (torch's unfused LayerNorm/GroupNorm and F.normalize: BlinkDL's function exactly; true, "
            "fla's default, uses its fused Triton norms instead)")


def _tokenizer_section(meta: dict) -> list[str]:
    tok = meta.get('tokenizer', 'none')
    if tok == 'world':
        return [
            'The RWKV World tokenizer (`rwkv_vocab_v20230424`, 65529 tokens; id 0 ends text and pads) as a stock',
            '`PreTrainedTokenizerFast` (`tokenizer.json`, no remote code) that gives exactly the ids of BlinkDL\'s',
            '`rwkv.rwkv_tokenizer.TRIE_TOKENIZER`; the name `<|rwkv_tokenizer_end_of_text|>` written in text is encoded',
            'as text, as BlinkDL\'s tokenizer does. `rwkv_vocab_v20230424.txt` is the vocabulary itself, which',
            "llama.cpp's `convert_hf_to_gguf.py` reads.",
            '',
            "Provenance and licence: the vocabulary is copied unchanged from BlinkDL's `rwkv` Python package (0.8.32,",
            'developed in https://github.com/BlinkDL/ChatRWKV by Bo PENG) and is distributed under the Apache License 2.0',
            '(https://www.apache.org/licenses/LICENSE-2.0); `tokenizer.json` is generated from it and carries the same',
            'licence.',
            '',
            "Chat: `tokenizer.apply_chat_template` renders BlinkDL's trained format (RWKV-LM",
            '`RWKV-v7/RWKV7-G1x-templates.txt`): `System: ...\\n\\nUser: ...\\n\\nAssistant:`, inputs cleaned of runs of',
            'newlines; `enable_thinking=True` opens a `<think` block. BlinkDL\'s chat demo ends a reply where its text',
            'holds `"\\n\\n"`: `generation_config.json` stops on token 0 and on the 34 tokens holding `"\\n\\n"` (261 is',
            '`"\\n\\n"` itself); for a blank line split over two tokens (after `。`) pass `stop_strings=["\\n\\n"],',
            'tokenizer=tokenizer` to `generate`. For plain text continuation pass `eos_token_id=0`.',
        ]
    if tok == 'copied':
        names = ', '.join(f'`{n}`' for n in meta.get('tokenizer_files', []))
        return [f'Copied by the converter from the tokenizer given with `--tokenizer` ({names}); its provenance and '
                'licence are those of that tokenizer.']
    return ['None: this directory has no tokenizer (the vocabulary is not the 65536-row RWKV World vocabulary, or',
            '`--tokenizer none` was given). Pass token ids, or add the tokenizer the model was trained with.']


def _state_section(meta: dict) -> list[str]:
    """How to start from the tuned state, when the directory carries one (provenance 'state')."""
    st = meta.get('state')
    if not st:
        return []
    return [
        '## Tuned initial state',
        '',
        f'This model was state-tuned: `{st["file"]}` holds its tuned wkv state, {st["layers"]} tensors '
        f'`model.layers.N.attn.initial_state` {st["shape"]} {st["dtype"]} ([heads, key, value]: fla\'s orientation, '
        f'transposed per head from the source\'s `{st["from"]}`). config.json and the weights are the base model\'s, '
        'so every loader reads them as usual; the state is what the model starts from:',
        '',
        '```python',
        'from fla.rwkv7_convert.api import initial_cache  # the converter\'s package',
        "cache = initial_cache(model, '.', batch_size=1)  # a fresh cache per generation: it is consumed",
        'out = model(input_ids, past_key_values=cache, use_cache=True)',
        '```',
        '',
    ]


def render_card(config: dict, meta: dict, verify: tuple[bool, str] | None = None) -> str:
    """The card's text. `verify`: (passed, rendered report) of the converter's --verify, if it ran."""
    src = meta['source']
    N, H, C, L = config['head_dim'], config['num_heads'], config['hidden_size'], config['num_hidden_layers']
    ranks = (config['decay_low_rank_dim'], config['a_low_rank_dim'], config['v_low_rank_dim'],
             config['gate_low_rank_dim'])
    chat = meta.get('tokenizer') == 'world'
    lines = [
        '---',
        'library_name: transformers',
        'pipeline_tag: text-generation',
        'tags:',
        '- rwkv',
        '- rwkv7',
        '- flash-linear-attention',
        '---',
        '',
        f'# {Path(src["name"]).stem} (RWKV-7 "Goose", flash-linear-attention format)',
        '',
        f'Converted from BlinkDL\'s RWKV-LM checkpoint `{src["name"]}` by {meta["converter"]}',
        '(https://github.com/fla-org/flash-linear-attention model classes; the converter proves the result with logits',
        'against a float64 reference run on the source file).',
        '',
        '| source | |',
        '|---|---|',
        f'| file | `{src["name"]}` ({src["format"]}) |',
        f'| size | {src["bytes"]:,} bytes |',
        *([f'| weight files | {", ".join(f"`{f}`" for f in src["files"])} |'] if src.get('files') else []),
        f'| sha256 | `{src["sha256"]}`' + (' (of the weight files, one after another)' if src.get('files') else '') + ' |',
        f'| stored dtypes | {", ".join(meta["stored_dtypes"])} |',
        f'| written as | {config["dtype"]} ({meta["precision"]}) |',
        '',
        '## Model',
        '',
        '| | |',
        '|---|---|',
        f'| parameters | {human_count(meta["parameters"])} |',
        f'| layers × hidden | {L} × {C} |',
        f'| heads × head size | {H} × {N} |',
        f'| FFN width | {config["intermediate_size"]} |',
        f'| vocabulary | {config["vocab_size"]} rows |',
        f'| LoRA ranks (decay, a, v, gate) | {", ".join(map(str, ranks))} |',
        f'| LayerNorm eps | {config["layer_norm_epsilon"]:g} (`layer_norm_epsilon`; fla uses `norm_eps` = '
        f'{config["norm_eps"]:g}, see below) |',
        '',
        'BlinkDL uses eps 1e-5 for every LayerNorm and 64e-5 for the `ln_x` GroupNorm; fla uses `norm_eps` for the',
        'LayerNorms and `head_dim × norm_eps` for `ln_x`, so `norm_eps = 64e-5 / head size` keeps `ln_x` exact (for',
        'head size 64 both are exact). `head_size` and `layer_norm_epsilon` are read by llama.cpp\'s converter, which',
        'then uses BlinkDL\'s eps everywhere; fla ignores them.',
        '',
        f'Norms: {fuse_norm_line(runs_fused(config))}.',
        '',
        '## How to load',
        '',
        '```python',
        'import fla  # registers RWKV-7 with transformers; without it AutoModelForCausalLM does not know "rwkv7"',
        'from transformers import AutoModelForCausalLM' + (', AutoTokenizer' if chat else ''),
        '',
        "model = AutoModelForCausalLM.from_pretrained('.', dtype='auto').to('cuda')",
    ]
    if chat:
        lines += [
            "tokenizer = AutoTokenizer.from_pretrained('.')",
            "messages = [{'role': 'user', 'content': 'What is RWKV?'}]  # rendered 'User: What is RWKV?\\n\\nAssistant:'",
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt',",
            "                                       return_dict=True).to(model.device)",
            'out = model.generate(**inputs, max_new_tokens=200)',
            "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
        ]
    lines += [
        '```',
        '',
        *_state_section(meta),
        "fla's kernels are Triton kernels for GPUs. On a CPU-only machine the converter's `load_model` runs fla's modules",
        "with torch stand-ins for them in float32 (see the converter's README, \"Run a converted model\"), or run the",
        "source checkpoint with BlinkDL's `rwkv` package, or llama.cpp after its `convert_hf_to_gguf.py`.",
        '',
        '## Tokenizer',
        '',
        *_tokenizer_section(meta),
        '',
        '## Verification',
        '',
    ]
    if verify is None:
        lines += ['The converter\'s `--verify` did not run for this directory. To check it: `python utils/verify_rwkv7.py',
                  f'--rwkv7 {src["name"]} --model .` (the converter\'s repository; exit status 0 only on PASS).']
    else:
        passed, text = verify
        lines += [f'`--verify` after converting: **{"PASS" if passed else "FAIL"}**', '', '```', text.rstrip('\n'), '```']
    lines += [
        '',
        '## Licence',
        '',
        'The weights keep the licence of the source checkpoint (BlinkDL\'s released RWKV-7 models are Apache-2.0); add',
        'a `license:` line to the header above before publishing.',
    ]
    return '\n'.join(lines) + '\n'


def _read_json(path: Path) -> dict:
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def write_model_card(model_dir: str | os.PathLike, verify: tuple[bool, str] | None = None) -> Path:
    """Render README.md from the directory's own files and put it in place atomically (a temporary file in the same
    folder, fsynced, then renamed over the old card): a reader sees the old card or the new one, never half of one."""
    model_dir = Path(model_dir)
    text = render_card(_read_json(model_dir / 'config.json'), _read_json(model_dir / PROVENANCE_FILE), verify)
    target = model_dir / CARD_FILE
    tmp = model_dir / f'.{CARD_FILE}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
