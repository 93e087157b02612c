"""Inputs that are not convertible RWKV-7 checkpoints: each is refused with the right error and a useful message."""

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, add_prefix, flatten_r_k, make_state_dict, save, to_rc4a_demo, to_rc4a_train, to_st

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_OS_ERROR,
    EXIT_USAGE,
    ConversionError,
    KeyMismatchError,
    NonFiniteError,
    NotACheckpointError,
    UnsafeCheckpointError,
    UnsupportedVariantError,
    error_classes,
    refusal_exit_codes,
)


def base(**kw):
    return make_state_dict(Goose(layers=2, **kw))


def with_extra(sd, **extra):
    return {**sd, **extra}


C = 128


def preview(kind: str) -> dict[str, torch.Tensor]:
    """x070 previews (RWKV-LM history): rc2 e1d143f and rc4 c453b42 add a token-shift LoRA and extra LoRAs to the
    rc4a training names; 6b44d24 has a per-head value gate mv_w [C,H] and time_aaa."""
    sd = to_rc4a_train(base())
    if kind == 'rc2':
        return {**sd, 'blocks.0.att.time_maa_x': torch.zeros(1, 1, C), 'blocks.0.att.time_maa_w1': torch.zeros(C, 160),
                'blocks.0.att.time_kkk_w1': torch.zeros(C, 16)}
    if kind == 'rc4':
        return {**sd, 'blocks.0.att.time_maa_x': torch.zeros(1, 1, C), 'blocks.0.att.mk_w1': torch.zeros(C, 16),
                'blocks.0.att.ma_w1': torch.zeros(C, 16), 'blocks.0.att.time_misc_k': torch.zeros(1, 1, C)}
    sd = {k.replace('time_aaaaa', 'time_aaa'): v for k, v in sd.items() if '.mv_w' not in k}
    return {**sd, **{f'blocks.{i}.att.mv_w': torch.zeros(C, 2) for i in range(2)}}


def mixed_layouts() -> dict[str, torch.Tensor]:
    train, demo = to_rc4a_train(base()), to_rc4a_demo(base())
    return {**{k: v for k, v in train.items() if not k.startswith('blocks.1.')},
            **{k: v for k, v in demo.items() if k.startswith('blocks.1.')}}


REFUSED = [
    pytest.param(lambda: with_extra(base(), **{'blocks.0.ffn.s_emb.weight': torch.zeros(256, 1024),
                                              'blocks.0.ffn.s1': torch.zeros(C, 32)}), 'RWKV-7a "DeepEmbed"',
                 id='rwkv7a-deepembed'),
    pytest.param(lambda: with_extra(base(), **{'blocks.0.qkv.qq.weight': torch.zeros(256, C),
                                              'blocks.0.qkv.k1': torch.zeros(C, 32)}), 'RWKV-7b "DEA"', id='rwkv7b-dea'),
    pytest.param(lambda: with_extra(base(), **{'blocks.1.ffn.enn.weight': torch.zeros(256, C)}), 'RWKV-8', id='rwkv8'),
    pytest.param(lambda: {'emb.weight': torch.zeros(256, C), 'blocks.0.att.time_decay': torch.zeros(2, 64),
                          'blocks.0.att.time_faaaa': torch.zeros(2, 64)}, 'RWKV-6 or older', id='rwkv6'),
    pytest.param(lambda: {'emb.weight': torch.zeros(256, C), 'blocks.0.att.time_first': torch.zeros(C),
                          'blocks.0.att.time_mix_k': torch.zeros(1, 1, C)}, 'RWKV-6 or older', id='rwkv4'),
    pytest.param(lambda: with_extra(base(), **{'blocks.0.att.receptance.lora_A': torch.zeros(8, C),
                                              'blocks.0.att.receptance.lora_B': torch.zeros(C, 8)}),
                 'RWKV-PEFT adapter tensors .*--rwkv7 BASE.pth --adapter ADAPTER.pth', id='lora'),
    pytest.param(lambda: with_extra(base(), **{'blocks.0.att.receptance.lora.A': torch.zeros(8, C)}),
                 'unmerged LoRA of another trainer', id='lora-other-trainer'),
    pytest.param(lambda: {'base_model.model.model.layers.0.attn.r_proj.lora_A.weight': torch.zeros(8, C)},
                 'Hugging Face PEFT adapter.*PeftModel.from_pretrained', id='peft-adapter'),
    pytest.param(lambda: {f'blocks.{i}.att.time_state': torch.zeros(2, 64, 64) for i in range(2)},
                 'holds only tuned initial states.*--base BASE_OUTDIR', id='state-tuning-without-base'),
    pytest.param(lambda: {f'init_state.{i}.wkv': torch.zeros(2, 64, 64) for i in range(2)},
                 'holds only tuned initial states .blocks.0.att.time_state', id='rwkv-block-state-without-base'),
    pytest.param(lambda: {k: v for k, v in base().items() if not k.startswith('blocks.0.ln0')}, 'ln0 was probably folded',
                 id='ln0-folded'),
    pytest.param(lambda: {'model.embeddings.weight': torch.zeros(256, C), 'model.layers.0.attn.r_k': torch.zeros(2, 64)},
                 'already in fla', id='fla-format'),
    pytest.param(lambda: {'weight': torch.zeros(3), 'bias': torch.zeros(3)}, 'not an RWKV-7 checkpoint', id='unrelated'),
    *[pytest.param(lambda k=k: preview(k), 'RWKV-7 preview', id=f'preview-{k}') for k in ('rc2', 'rc4', '6b44d24')],
    pytest.param(lambda: {'blocks.0.att.receptance.init_lora_A': torch.zeros(8, C),
                          'blocks.0.att.receptance.init_lora_B': torch.zeros(C, 8)},
                 'RWKV-PEFT adapter tensors .*--pissa-init', id='pissa-init'),
    pytest.param(lambda: with_extra(base(), **{'blocks.0.att.key.disha': torch.zeros(8, C)}),
                 'RWKV-PEFT adapter tensors .blocks.0.att.key.disha', id='disha'),
    pytest.param(lambda: {'model.embed_tokens.weight': torch.zeros(256, C), 'model.layers.0.self_attn.x_r': torch.zeros(C),
                          'model.layers.0.self_attn.q_proj.weight': torch.zeros(C, C)}, 'RWKV7-Qwen2 hybrid',
                 id='rwkv7-qwen2-hybrid'),
    pytest.param(lambda: with_extra(base(), **{'blocks.0.qkv.emm.weight': torch.zeros(256, C)}), 'RWKV-8 hybrid',
                 id='rwkv8-hybrid'),
    pytest.param(mixed_layouts, 'mixes two layouts, rc4a training names .* and rc4a demo names', id='mixed-layouts'),
]


@pytest.mark.parametrize('make, message', REFUSED)
def test_other_architectures_are_refused_by_name(tmp_path, make, message):
    path = save(make(), tmp_path / 'm.pth')
    with pytest.raises(UnsupportedVariantError, match=message) as info:
        convert_to_fla(path, tmp_path / 'out')
    assert str(path) in info.value.one_line()
    assert not (tmp_path / 'out').exists()


def test_state_tuned_merge_converts_without_its_state_when_asked(tmp_path):
    sd = base()
    merged = with_extra(sd, **{f'blocks.{i}.att.time_state': torch.ones(2, 64, 64) for i in range(2)})
    plain = convert_to_fla(save(sd, tmp_path / 'base.pth'), tmp_path / 'a', tokenizer='none')
    dropped = convert_to_fla(save(merged, tmp_path / 'merged.pth'), tmp_path / 'b', tokenizer='none', drop_state=True)
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / 'a' / 'model.safetensors'), load_file(tmp_path / 'b' / 'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.plan.dims == dropped.plan.dims
    assert any('--drop-state: 2 tuned initial state(s)' in n for n in dropped.plan.notes)
    assert not (tmp_path / 'b' / 'rwkv7_state.safetensors').exists() and dropped.state_file is None


def test_rwkv_package_dump_is_refused(tmp_path):
    """`torch.save(model.z)` of BlinkDL's package: head [C,V], transposed matrices, empty layer-0 v0/v1/v2."""
    from blinkdl_rwkv import rwkv_model_module  # imports rwkv.model without leaving its env/TF32 switches behind
    RWKV = rwkv_model_module().RWKV
    save(base(), tmp_path / 'm.pth')
    torch.save(RWKV(model=str(tmp_path / 'm'), strategy='cpu fp32').z, tmp_path / 'dump.pth')
    with pytest.raises(UnsupportedVariantError, match="in-memory dump of BlinkDL's `rwkv` package") as info:
        convert_to_fla(tmp_path / 'dump.pth', tmp_path / 'out')
    assert 'convert the .pth the package loaded' in info.value.one_line()


def test_st_file_with_rank_equal_to_hidden_size_is_refused(tmp_path):
    from safetensors.torch import save_file
    sd = to_st(make_state_dict(Goose(layers=2, w_rank=C)))  # w1, w2 are [C,C]: orientation unreadable
    save_file(sd, str(tmp_path / 'model.st'))
    with pytest.raises(UnsupportedVariantError, match=r'\.st` file whose LoRA rank equals the hidden size C = 128'):
        convert_to_fla(tmp_path / 'model.st', tmp_path / 'out')


@pytest.mark.parametrize('head, suffix, message', [
    pytest.param(b'GGUF\x03\x00\x00\x00', '.gguf', 'GGUF file', id='gguf'),
    pytest.param(struct.pack('<ii', 0x67676d66, 101), '.bin', 'rwkv.cpp ggml file', id='rwkv.cpp'),
    pytest.param(b'\xa5dtype', '.prefab', 'prefab', id='ai00-prefab'),
])
def test_foreign_formats_are_named(tmp_path, head, suffix, message):
    path = tmp_path / f'model{suffix}'
    path.write_bytes(head + bytes(64))
    with pytest.raises(UnsupportedVariantError, match=message) as info:
        convert_to_fla(path, tmp_path / 'out')
    assert '\n' not in info.value.one_line() and 'convert the original' in info.value.one_line()


def test_all_key_problems_are_reported_together(tmp_path):
    sd = base()
    del sd['blocks.1.att.k_k']  # missing
    sd['blocks.1.att.kk'] = torch.zeros(1, 1, C)  # unknown, close to k_k
    sd['blocks.0.att.w1'] = torch.zeros(C, 7, 2)  # mis-shaped
    sd['blocks.1.att.a1'] = torch.zeros(C, 16)  # rank differs from layer 0's
    sd['blocks.7.att.x_r'] = torch.zeros(1, 1, C)  # a block beyond... makes L = 8: many missing
    sd.pop('blocks.7.att.x_r')
    sd['ln_out.weight'] = torch.zeros(C + 1)
    path = save(sd, tmp_path / 'm.pth')
    with pytest.raises(KeyMismatchError) as info:
        convert_to_fla(path, tmp_path / 'out')
    problems = info.value.problems
    text = ' | '.join(problems)
    assert 'missing tensor blocks.1.att.k_k [1,1,128]' in text
    assert 'unexpected tensor blocks.1.att.kk (closest known name: blocks.1.att.k_k)' in text
    assert 'blocks.0.att.w1 has shape [128, 7, 2], expected [128, 32] (C,Dw)' in text
    assert 'blocks.1.att.a1 has shape [128, 16], expected [128, 32] (C,Da)' in text
    assert 'ln_out.weight has shape [129], expected [128] (C)' in text
    assert len(problems) == 5
    line = info.value.one_line()
    assert '\n' not in line and line.startswith(str(path)) and '5 key problem(s)' in line


def test_head_size_is_never_assumed(tmp_path):
    path = save(flatten_r_k(base()), tmp_path / 'm.pth')
    with pytest.raises(KeyMismatchError, match='pass --head-size'):
        convert_to_fla(path, tmp_path / 'out')
    with pytest.raises(KeyMismatchError, match='--head-size 32 contradicts'):
        convert_to_fla(save(base(), tmp_path / 'n.pth'), tmp_path / 'out', head_size=32)


def test_duplicates_after_prefix_stripping_are_refused(tmp_path):
    sd = base()
    sd.update(add_prefix({'emb.weight': sd['emb.weight']}, 'module.'))
    with pytest.raises(KeyMismatchError, match="duplicate tensor emb.weight .*'module.emb.weight'"):
        convert_to_fla(save(sd, tmp_path / 'm.pth'), tmp_path / 'out')


def test_non_tensor_values_are_refused(tmp_path):
    sd = {**base(), 'step': 1000}
    with pytest.raises(NotACheckpointError, match="'step' \\(int\\)"):
        convert_to_fla(save(sd, tmp_path / 'm.pth'), tmp_path / 'out')


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path):
    sd = base()
    sd['blocks.1.ffn.value.weight'][3, 5] = float('nan')
    path = save(sd, tmp_path / 'm.pth')
    with pytest.raises(NonFiniteError, match='blocks.1.ffn.value.weight holds NaN'):
        convert_to_fla(path, tmp_path / 'out', tokenizer='none')
    assert not (tmp_path / 'out').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['m.pth']  # no scratch folder left behind
    convert_to_fla(path, tmp_path / 'out', tokenizer='none', allow_nonfinite=True)
    assert (tmp_path / 'out' / 'model.safetensors').exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'emb.weight': torch.zeros(2)}, path)
    # swap the pickle inside the archive for one that calls os.system
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith('data.pkl'))
    members[pkl] = pickle.dumps({'emb.weight': _Exploit()}, protocol=2)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    os.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r'asks for (posix|os)\.system'):
        convert_to_fla(path, tmp_path / 'out')
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('make, message', [
    pytest.param(lambda p: p.write_bytes(b''), 'empty file', id='empty'),
    pytest.param(lambda p: p.write_bytes(b'hello world, not a model'), 'not a PyTorch zip', id='text'),
    pytest.param(lambda p: p.mkdir(), 'is a directory', id='directory'),
    pytest.param(lambda p: None, 'no such file', id='missing'),
    pytest.param(lambda p: torch.save([torch.zeros(2)], p), 'holds a list', id='not-a-dict'),
    pytest.param(lambda p: torch.save({}, p), 'empty state dict', id='empty-dict'),
    pytest.param(lambda p: torch.save(torch.zeros(3), p, _use_new_zipfile_serialization=False), 'legacy', id='legacy'),
])
def test_files_that_are_not_checkpoints(tmp_path, make, message):
    path = tmp_path / 'x.pth'
    make(path)
    with pytest.raises(NotACheckpointError, match=message):
        convert_to_fla(path, tmp_path / 'out')


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('fraction', [0.02, 0.5, 0.999], ids=['head', 'middle', 'tail'])
def test_truncated_files_are_refused(tmp_path, suffix, fraction):
    path = save(base(), tmp_path / f'm{suffix}')
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(NotACheckpointError, match='truncated|corrupt|ends early|header'):
        convert_to_fla(path, tmp_path / 'out', tokenizer='none')
    assert not (tmp_path / 'out').exists()


def test_safetensors_header_that_lies_about_offsets(tmp_path):
    import json
    import struct
    path = save({'emb.weight': torch.zeros(4, 4), 'head.weight': torch.zeros(4, 4)}, tmp_path / 'm.safetensors')
    raw = path.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header['head.weight']['data_offsets'] = header['emb.weight']['data_offsets']  # overlap
    new = json.dumps(header, separators=(',', ':')).encode().ljust(n)
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n:])
    with pytest.raises(NotACheckpointError, match='overlap'):
        convert_to_fla(path, tmp_path / 'out')


def test_corrupt_record_is_caught_on_the_kernel_copy_path(tmp_path):
    sd = base()
    path = save(sd, tmp_path / 'm.pth')
    raw = bytearray(path.read_bytes())
    # flip one byte inside the data of head.weight (an identity tensor: copied without being loaded)
    needle = sd['head.weight'].contiguous().view(torch.uint8).numpy().tobytes()[:64]
    at = raw.find(needle)
    assert at > 0
    raw[at + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(NotACheckpointError, match='checksum'):
        convert_to_fla(path, tmp_path / 'out', tokenizer='none')
    assert not (tmp_path / 'out').exists()


def test_copy_falls_back_when_the_kernel_cannot_copy(tmp_path, monkeypatch):
    import errno

    from safetensors.torch import load_file
    path = save(base(), tmp_path / 'm.safetensors')
    convert_to_fla(path, tmp_path / 'fast', tokenizer='none')

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, 'cross-device')
    monkeypatch.setattr(os, 'copy_file_range', refuse)
    convert_to_fla(path, tmp_path / 'slow', tokenizer='none')
    fast, slow = load_file(tmp_path / 'fast' / 'model.safetensors'), load_file(tmp_path / 'slow' / 'model.safetensors')
    assert fast.keys() == slow.keys() and all(torch.equal(fast[k], slow[k]) for k in fast)


def test_each_error_class_has_its_own_documented_exit_status():
    """errors.py is the table's source; docs/export.md ("Exit status") lists each status with its class, and no
    status is shared or taken from argparse (2), an interrupt (128 + a signal) or a closed stdout (141)."""
    classes = error_classes()
    codes = [cls.exit_code for cls in classes]
    assert len(set(codes)) == len(codes) > 1, {cls.__name__: cls.exit_code for cls in classes}
    assert ConversionError.exit_code == 1 and EXIT_BROKEN_PIPE == 141
    reserved = {0, EXIT_USAGE, EXIT_OS_ERROR, *range(128, 256)}
    assert not reserved & set(codes) and refusal_exit_codes() == {*codes, EXIT_OS_ERROR}
    doc = (Path(__file__).resolve().parents[1] / 'docs' / 'export.md').read_text(encoding='utf-8')
    table = dict(re.findall(r'^\| (\d+) \| `?(\w+)`?', doc.split('### Exit status', 1)[1], flags=re.M))
    documented = {**{cls.exit_code: cls.__name__ for cls in classes}, EXIT_USAGE: 'EXIT_USAGE', EXIT_OS_ERROR: 'EXIT_OS_ERROR'}
    assert {int(k): v for k, v in table.items() if 0 < int(k) < 128} == documented, table
