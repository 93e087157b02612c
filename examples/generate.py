"""Generate with a converted directory: on a GPU, or on the CPU (float32; fla's modules with torch stand-ins for its
Triton kernels, or --device cpu: the kernels through Triton's interpreter, slow).

    python examples/generate.py --model out/goose-mini --ids 1,2,3 --max-new-tokens 8
    python examples/generate.py --model out/world --prompt 'Hello' --chat      # needs the directory's tokenizer

--chat wraps the prompt as one user turn in the tokenizer's chat template and stops at a blank line (the turn-end
tokens of hub/chat.py) or token 0. Greedy unless --sample. --json prints the prompt ids, new ids and text as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, type=Path, help='a directory written by rwkv7-convert')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--prompt', help='text (needs a tokenizer in the directory)')
    src.add_argument('--ids', help='token ids, comma-separated, e.g. 1,2,3')
    p.add_argument('--max-new-tokens', type=int, default=16)
    p.add_argument('--device', choices=('auto', 'cpu-torch', 'cpu', 'cuda'), default='auto',
                   help="auto (default): cuda when there is one, else cpu-torch (torch stand-ins for fla's kernels); "
                        "cpu: fla's Triton kernels through Triton's interpreter")
    p.add_argument('--chat', action='store_true', help="one user turn through the tokenizer's chat template")
    p.add_argument('--sample', action='store_true', help='sample (temperature 1) instead of greedy decoding')
    p.add_argument('--seed', type=int, default=0, help='seed for --sample')
    p.add_argument('--json', action='store_true', help='print {"prompt_ids", "new_ids", "text"} as one JSON line')
    args = p.parse_args(argv)
    if args.ids is not None:
        try:
            args.ids = [int(t) for t in args.ids.split(',') if t.strip()]
        except ValueError:
            p.error(f'--ids {args.ids!r}: expected comma-separated integers')
        if args.chat:
            p.error('--chat needs --prompt (text for the chat template)')
    if args.max_new_tokens < 1:
        p.error('--max-new-tokens must be at least 1')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)  # before anything heavy is imported or set up: --help does nothing else
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from rwkv7_convert_entry import light_fla
    light_fla()  # fla's models (and triton) not imported yet, so load_model can still choose the CPU interpreter
    import torch

    from fla.rwkv7_convert.api import ConversionError, generate, load_model
    from fla.rwkv7_convert.hub.chat import TURN_END_TOKENS

    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda: torch sees no CUDA device here; leave --device out (auto), or use --device '
              'cpu-torch', file=sys.stderr)
        return 1
    try:
        model, tokenizer = load_model(args.model, device=args.device)
        if args.prompt is not None:
            if tokenizer is None:
                raise ConversionError('the directory has no tokenizer: use --ids, or convert with --tokenizer world '
                                      'or --tokenizer PATH', str(args.model))
            if args.chat:
                ids = tokenizer.apply_chat_template([{'role': 'user', 'content': args.prompt}], add_generation_prompt=True,
                                                    return_tensors='pt', return_dict=True)['input_ids']
            else:
                ids = tokenizer(args.prompt, return_tensors='pt')['input_ids']
        else:
            ids = torch.tensor([args.ids])
        # a chat turn ends at a blank line (BlinkDL's chat demo), else at generation_config.json's end tokens
        eos = [0, *TURN_END_TOKENS] if args.chat else None
        out = generate(model, ids, args.max_new_tokens, do_sample=args.sample, eos_token_id=eos, seed=args.seed)
    except ConversionError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    new = out[0, ids.shape[1]:].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else None
    if args.json:
        print(json.dumps({'prompt_ids': ids[0].tolist(), 'new_ids': new, 'text': text}, ensure_ascii=False))
    else:
        print(text if text is not None else ','.join(map(str, new)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
