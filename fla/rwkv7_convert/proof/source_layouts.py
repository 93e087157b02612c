"""The reference's own normalisers: each way RWKV-7 files are stored in practice, brought to RWKV-LM's canonical names,
written here from the producers' code and NOT from the converter's table (mapping/table.py), so a slip in the table
cannot make the reference wrong the same way (issue 29). source_reader.py applies them; nothing here imports mapping.

Each normaliser says where it was read (repository, path, commit). A stored key goes through, in order: wrapper
containers (WRAPPERS), wrapper prefixes (PREFIXES, GUARDED_PREFIXES), whole-name renames (NAMES), per-block renames
(RC4A_TRAINING, RC4A_DEMO, LINEAR_FACTORS). Orientation and unit-dim reshapes are decided from shapes by
source_reader.py.
"""

from __future__ import annotations

import re

# Containers around the state dict, looked into in this order: Lightning / RWKV-LM trainer checkpoints keep
# {"state_dict": ...}, DeepSpeed {"module": ...}, plain scripts {"model": ...}.
WRAPPERS = ('state_dict', 'module', 'model')

# Prefixes every name gets from a training wrapper: torch.compile's OptimizedModule (`_orig_mod.`), DDP / DeepSpeed
# (`module.`), Lightning's strategy wrappers (`_forward_module.`).
PREFIXES = ('_orig_mod.', 'module.', '_forward_module.')

# Module names some ports nest RWKV-LM's names under; stripped only before a top-level RWKV-LM name, since fla's
# own names start with `model.` too. `model.`: a Lightning module holding the RWKV model as self.model
# (JL-er/RWKV-PEFT rwkvt/lightning_train/light_rwkv.py @ 5b8aac9c), and Hugging Face ports (RWKV/RWKV-block
# hf_builder). `rwkv7.`: Hugging Face ports naming their module rwkv7.
GUARDED_PREFIXES = ('model.', 'rwkv7.')
TOP = re.compile(r'^(emb|blocks|ln_out|head)\.')

# Whole names: rwkv-rs/transformers-rwkv src/transformers/models/rwkv7/convert_rwkv7_checkpoint_to_hf.py
# @ 9b08710f keeps the embedding as model.embeddings.weight.
NAMES = {'model.embeddings.weight': 'emb.weight'}

# RWKV-LM RWKV-v5/src/model.py @ 69bb5852 (x070 "rc4a", 2024-11-23): RWKV_Tmix_x070.__init__ and forward, read one
# by one: xr = x + xx * time_maa_r ...; w = time_decay + tanh(xw @ time_decay_w1) @ time_decay_w2;
# a = sigmoid(time_aaaaa + (xa @ time_aaa_w1) @ time_aaa_w2); v gate time_misc_v + (xv @ mv_w1) @ mv_w2;
# g = sigmoid(xg @ gate_w1) @ gate_w2; kk = k * time_misc_kkk; k * (1 + (a-1) * time_misc_a); the bonus
# r * k * time_faaaa ([1,1,H,N]); CMix xk = x + xx * time_maa_k. Renamed one to one at 348e56ec ("better names").
RC4A_TRAINING = {
    'att.time_maa_r': 'att.x_r', 'att.time_maa_w': 'att.x_w', 'att.time_maa_k': 'att.x_k',
    'att.time_maa_v': 'att.x_v', 'att.time_maa_a': 'att.x_a', 'att.time_maa_g': 'att.x_g',
    'att.time_decay': 'att.w0', 'att.time_decay_w1': 'att.w1', 'att.time_decay_w2': 'att.w2',
    'att.time_aaaaa': 'att.a0', 'att.time_aaa_w1': 'att.a1', 'att.time_aaa_w2': 'att.a2',
    'att.time_misc_v': 'att.v0', 'att.mv_w1': 'att.v1', 'att.mv_w2': 'att.v2',
    'att.gate_w1': 'att.g1', 'att.gate_w2': 'att.g2',
    'att.time_misc_kkk': 'att.k_k', 'att.time_misc_a': 'att.k_a', 'att.time_faaaa': 'att.r_k',
    'ffn.time_maa_k': 'ffn.x_k',
}

# RWKV-LM RWKV-v7/rwkv_v7_demo.py @ 218a94cf (the rc4a release demo), RWKV_Tmix_x070.forward read one by one:
# xr = x + xx * xx_r ...; w = ww_b + tanh(xw @ ww_w1) @ ww_w2; v gate vv_b + (xv @ vv_w1) @ vv_w2 (layer > 0 only);
# a = sigmoid(aa_b + (xa @ aa_w1) @ aa_w2); g = sigmoid(xg @ gg_w1) @ gg_w2; kk = k * kk_s; k * (1 + (a-1) * ka_s);
# bonus r * k * rk_s ([H,N]); CMix k = x + xx * xx_k. Renamed one to one at 02bc67aa ("better names").
RC4A_DEMO = {
    'att.xx_r': 'att.x_r', 'att.xx_w': 'att.x_w', 'att.xx_k': 'att.x_k',
    'att.xx_v': 'att.x_v', 'att.xx_a': 'att.x_a', 'att.xx_g': 'att.x_g',
    'att.ww_b': 'att.w0', 'att.ww_w1': 'att.w1', 'att.ww_w2': 'att.w2',
    'att.aa_b': 'att.a0', 'att.aa_w1': 'att.a1', 'att.aa_w2': 'att.a2',
    'att.vv_b': 'att.v0', 'att.vv_w1': 'att.v1', 'att.vv_w2': 'att.v2',
    'att.gg_w1': 'att.g1', 'att.gg_w2': 'att.g2',
    'att.kk_s': 'att.k_k', 'att.ka_s': 'att.k_a', 'att.rk_s': 'att.r_k',
    'ffn.xx_k': 'ffn.x_k',
}

# rwkv-rs/transformers-rwkv src/transformers/models/rwkv7/modeling_rwkv7.py @ 9b08710f: the LoRA factors are
# nn.Linear (self.w1 = nn.Linear(hidden_size, decay_low_rank_dim)), so `att.w1.weight` is RWKV-LM's w1 transposed.
LINEAR_FACTORS = {f'att.{c}{j}.weight': f'att.{c}{j}' for c in 'wavg' for j in '12'}

# Tuned initial states, read by proof/state_pair.py and never as weights: RWKV-PEFT's `blocks.N.att.time_state`
# (rwkvt/rwkv7/att.py @ 5b8aac9c) and RWKV-block's `init_state.N.wkv` (rwkv_block/v7_goose/model/
# rwkv7_goose_model.py @ 060d03ac).
STATE = re.compile(r'^(blocks\.\d+\.att\.time_state|init_state\.\d+\.wkv)$')

_BLOCK = re.compile(r'^blocks\.(0|[1-9][0-9]*)\.(.+)$')


def strip_wrapper_prefixes(name: str) -> str:
    """`name` without training-wrapper prefixes, any number in any order, and the guarded module prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        for prefix in GUARDED_PREFIXES:
            if name.startswith(prefix) and TOP.match(name[len(prefix):]):
                name, changed = name[len(prefix):], True
    return name


def canonical_name(name: str) -> tuple[str, bool, str | None]:
    """(canonical RWKV-LM name, transposed as stored, the layout that renamed it or None) for a stored name without
    its prefixes; names no layout knows come back unchanged."""
    if name in NAMES:
        return NAMES[name], False, 'transformers-rwkv'
    m = _BLOCK.match(name)
    if m is None:
        return name, False, None
    block, rest = m.groups()
    for table, layout, transposed in ((RC4A_TRAINING, 'rc4a training names', False),
                                      (RC4A_DEMO, 'rc4a demo names', False),
                                      (LINEAR_FACTORS, 'transformers-rwkv', True)):
        if rest in table:
            return f'blocks.{block}.{table[rest]}', transposed, layout
    return name, False, None
