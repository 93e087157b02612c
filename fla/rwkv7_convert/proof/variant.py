"""Which function a converted directory computes, and every way it differs from BlinkDL's, named by its config key.

fla's RWKV-7 is BlinkDL's function up to three constants, which config.json sets (fla 0.6.0: fla/layers/rwkv7.py,
fla/models/rwkv7/modeling_rwkv7.py, fla/modules/norm/l2norm.py):
- every LayerNorm eps is `norm_eps` (BlinkDL: 1e-5);
- the per-head GroupNorm `ln_x` eps is `head_dim * norm_eps` (BlinkDL: 64e-5 for every head size);
- `kk` is normalised by the fused `l2_norm`, x / sqrt(|x|^2 + 1e-6), when `fuse_norm` is true, and by F.normalize,
  x / max(|x|, 1e-12), as BlinkDL does, when it is false.

The exact proof runs the reference as the variant a correct conversion configures (`fla_variant`: the eps the
converter must write, kk's l2-norm as config.json's fuse_norm chooses), so fla is proven against the function it runs;
how far that variant is from BlinkDL's function is measured separately and reported with the key and the alternative
(`differences`), never called a broken directory. BlinkDL's constants are literals here, read from BlinkDL's code
(BlinkDL/RWKV-LM RWKV-v7/rwkv_v7_demo.py @02bc67aa: `nn.LayerNorm(C)`, `nn.GroupNorm(H, C, eps=64e-5)`, `F.normalize(k
* self.k_k, dim=-1, p=2.0)`), never from mapping/: a slip in the converter's constants is caught (`config_problems`),
not shared."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fla.rwkv7_convert.formats.dtypes import TORCH_NAME

BLINKDL_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which RWKV-LM keeps
BLINKDL_LN_X_EPS = 64e-5  # nn.GroupNorm(H, C, eps=64e-5), for every head size
FLA_L2_EPS = 1e-6  # fla.modules.norm.l2norm's default eps, inside the root
FLA_NORM_EPS = 1e-5  # RWKV7Config's default norm_eps, for a config.json without the key
FLA_FUSE_NORM = True  # RWKV7Config's default fuse_norm


@dataclass(frozen=True)
class Variant:
    """The constants of one RWKV-7 function: LayerNorm eps, ln_x eps, and kk's l2 eps (None: F.normalize)."""

    norm_eps: float
    ln_x_eps: float
    l2_eps: float | None

    def reference(self) -> dict:
        """RWKV7Reference's keyword arguments for this variant."""
        return {'norm_eps': self.norm_eps, 'ln_x_eps': self.ln_x_eps, 'l2_eps': self.l2_eps}


BLINKDL = Variant(BLINKDL_NORM_EPS, BLINKDL_LN_X_EPS, None)


def fla_variant(config: dict, head_size: int) -> Variant:
    """The function a correct conversion makes fla run: the eps a conversion of the file writes (converted_norm_eps;
    a config.json with another is a FAIL, named by config_problems, and the proof parts from it where fla does), and
    kk's l2-norm as config.json's fuse_norm chooses (both values are correct conversions; fla's default if absent)."""
    eps = converted_norm_eps(head_size)
    return Variant(eps, head_size * eps, FLA_L2_EPS if config.get('fuse_norm', FLA_FUSE_NORM) else None)


def converted_norm_eps(head_size: int) -> float:
    """The norm_eps a conversion of a BlinkDL file writes: ln_x exact (64e-5 = head_dim * norm_eps) for every head
    size, so the LayerNorms are exact for head size 64 only (fla ties the two eps; docs/verification.md)."""
    return BLINKDL_LN_X_EPS / head_size


@dataclass(frozen=True)
class Difference:
    """One way the function fla runs differs from BlinkDL's."""

    what: str
    key: str  # the config.json key that causes it, or 'precision' (the converter's --precision)
    fla: str
    blinkdl: str
    alternative: str  # how to get BlinkDL's, or why there is no way

    def render(self) -> str:
        where = '--precision' if self.key == 'precision' else f'config.json {self.key}'
        return f'{self.what}: fla {self.fla}, BlinkDL {self.blinkdl} ({where}; {self.alternative})'


def differences(variant: Variant, head_size: int) -> list[Difference]:
    """Every constant in which `variant` is not BlinkDL's function, for a model of `head_size`."""
    found = []
    if variant.l2_eps is not None:
        found.append(Difference('kk l2-norm', 'fuse_norm', f'x / sqrt(|x|^2 + {variant.l2_eps:g}) (fused l2_norm)',
                                'F.normalize, x / max(|x|, 1e-12)',
                                '"fuse_norm": false runs F.normalize and torch\'s unfused norms'))
    if not math.isclose(variant.norm_eps, BLINKDL_NORM_EPS, rel_tol=1e-9):
        found.append(Difference('LayerNorm eps', 'norm_eps', f'{variant.norm_eps:.6g}', f'{BLINKDL_NORM_EPS:g}',
                                _eps_alternative(head_size)))
    if not math.isclose(variant.ln_x_eps, BLINKDL_LN_X_EPS, rel_tol=1e-9):
        found.append(Difference('ln_x GroupNorm eps', 'norm_eps', f'head_dim x norm_eps = {variant.ln_x_eps:.6g}',
                                f'{BLINKDL_LN_X_EPS:g}', _eps_alternative(head_size)))
    return found


# bits of each stored floating-point dtype (formats.dtypes.FLOATING)
_BITS = {'F64': 64, 'F32': 32, 'F16': 16, 'BF16': 16}


def narrowed(stored: list[tuple[str, str, str]]) -> dict[str, str]:
    """(canonical name, the file's dtype, the directory's dtype) -> {name: the directory's dtype} for each tensor the
    directory holds in fewer bits, or in the other 16-bit format, than the file: a conversion with --precision. The
    exact proof runs the reference on those values as the directory rounds them (the function the conversion
    promises) and reports the rounding as a difference from BlinkDL's (storage_difference)."""
    return {name: to for name, frm, to in stored if frm != to and (_BITS[to] < _BITS[frm] or _BITS[to] == 16)}


def storage_difference(rounded: dict[str, str], stored: dict[str, str]) -> Difference | None:
    """The rounding of `rounded` (name -> the directory's dtype; `stored`: name -> the file's) as a named difference."""
    if not rounded:
        return None
    to = ', '.join(sorted({TORCH_NAME[d] for d in rounded.values()}))
    frm = ', '.join(sorted({TORCH_NAME[stored[name]] for name in rounded}))
    return Difference('stored weights', 'precision', f'{to} ({len(rounded)} tensors)', f'{frm}, as the file stores them',
                      'convert without --precision to keep each tensor\'s stored dtype')


def _eps_alternative(head_size: int) -> str:
    if head_size == 64:
        return f'norm_eps {BLINKDL_NORM_EPS:g} gives both'
    return (f'fla derives ln_x\'s eps from the LayerNorms\' (head_dim x norm_eps), so at head size {head_size} one '
            'of the two differs whatever norm_eps is; the converter keeps ln_x exact')


def config_problems(config: dict, head_size: int) -> list[str]:
    """config.json values no conversion of a BlinkDL file writes: a norm_eps other than `converted_norm_eps`
    computes another function than the file's (a damaged or edited directory, or a converter slip)."""
    eps, want = config.get('norm_eps', FLA_NORM_EPS), converted_norm_eps(head_size)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isclose(float(eps), want, rel_tol=1e-9):
        return [f'config.json norm_eps = {eps!r}, but the file converts to 64e-5 / head_size = {want:.6g} '
                f'(BlinkDL: LayerNorm eps {BLINKDL_NORM_EPS:g}, ln_x eps {BLINKDL_LN_X_EPS:g}; fla: norm_eps and '
                'head_dim x norm_eps)']
    return []
