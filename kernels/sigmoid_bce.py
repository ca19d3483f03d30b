"""Elementwise sigmoid + binary cross-entropy on the device: the math every loss kernel shares.

Everything derives from e = e^{-|x|} ∈ [0, 1] and r = 1 / (1 + e):

    σ(|x|) = r,  σ(-|x|) = e·r,  softplus(±x) = max(±x, 0) + log1p(e),

with log1p(e) a polynomial in e (FMAs, no libdevice log, no IEEE division). Two precisions, one constexpr:

- FAST (16-bit loss and 16-bit gradient): e from one MUFU ex2 of the rounded product -|x|·log2(e), r
  from one MUFU reciprocal (rcp.approx, ≤ 1 ulp), log1p(e) = e + e²·Q(e) with Q of degree 3 (relative
  error < 2^-13.8: ≤ 0.13 ulp of fp16, ≤ 0.02 of bf16, before the final rounding). The focal family's
  non-integer powers take log2 from the MUFU too (`power`).
- PRECISE (an fp32 loss or gradient): the product's rounding error and log2(e)'s own are carried into e
  (e ≈ 2^t·(1 + t_lo·ln 2)), r gets one Newton step, Q has degree 7 (relative error < 2^-24.8).

Measured against float64 (bench/accuracy.py, reports/accuracy/): where the result is a normal number, the
PRECISE loss term is within 3.3 ulps of float32 and the gradient within 3.9; FAST 16-bit results are within
one ulp of the correctly rounded value; NaN and ±inf fall where torch's do. That is under the interpreter,
whose exp2 and reciprocal are correctly rounded; on a GPU ex2.approx and rcp.approx (≤ 2 and ≤ 1 ulp)
add theirs, and MUFU ex2 flushes results below 2^-126 to zero: where |x| > 87.3 an fp32 computation gives
e = 0, so a loss term or gradient smaller than 2^-126 (in magnitude) comes out as 0.

float64 logits compute in float64 with libdevice's exp and log (the MUFU approximations are fp32-only).

Triton's CPU interpreter runs numpy, which has neither libdevice nor PTX: there the approximate reciprocal
is an exact division (the polynomials and the rest are the same code).
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _probe():
    pass


# Fixed when triton decorates this module's functions: TRITON_INTERPRET=1 at import selects the interpreter.
INTERPRETED: tl.constexpr = tl.constexpr(isinstance(_probe, InterpretedFunction))

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
# log2(e) = LOG2E_HI + LOG2E_LO, LOG2E_HI the float32 nearest: the compensated product keeps both.
LOG2E_HI: tl.constexpr = tl.constexpr(1.4426950216293335)
LOG2E_LO: tl.constexpr = tl.constexpr(1.925963033500011e-08)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def fast_reciprocal(u):
    """1/u for fp32 u in [2^-126, 2^126] by the MUFU (≤ 1 ulp); exact under the interpreter."""
    if INTERPRETED:
        return 1.0 / u
    else:
        return libdevice.fast_dividef(1.0, u)


@triton.jit
def fast_log2(u):
    """log2(u) for fp32 u by the MUFU (lg2.approx: absolute error ~2^-22, -inf at 0); exact under the
    interpreter."""
    if INTERPRETED:
        return tl.log2(u)
    else:
        return libdevice.fast_log2f(u)


@triton.jit
def exp_neg_abs(x, PRECISE: tl.constexpr):
    """e^{-|x|} in [0, 1] for x of the compute dtype (float32 or float64)."""
    if x.dtype == tl.float64:
        return tl.exp(-tl.abs(x))
    else:
        a = tl.abs(x)
        if PRECISE:
            # e^-104 rounds to 0 in fp32: clamped there (NaN kept), a = inf cannot make t_lo NaN below.
            a = tl.minimum(a, 104.0, propagate_nan=tl.PropagateNan.ALL)
        t = a * -LOG2E_HI
        e = tl.exp2(t)
        if PRECISE:
            # -a·log2(e) = t + t_lo exactly up to LOG2E_LO's rounding: the FMA recovers t's rounding
            # error, which alone would cost e a relative a·2^-24 (up to ~90 ulps).
            t_lo = tl.fma(-a, LOG2E_LO, tl.fma(a, -LOG2E_HI, -t))
            e = tl.fma(e, t_lo * LN2, e)
        return e


@triton.jit
def reciprocal(u, PRECISE: tl.constexpr):
    """1 / u for u in [2^-126, 2^126] of the compute dtype (fp32: the MUFU, plus a Newton step if PRECISE)."""
    if u.dtype == tl.float64:
        return 1.0 / u
    else:
        r = fast_reciprocal(u)
        if PRECISE:
            r = tl.fma(r, tl.fma(-u, r, 1.0), r)  # one Newton step: ≤ 1 ulp → ~0.5 ulp
        return r


@triton.jit
def reciprocal_one_plus(e, PRECISE: tl.constexpr):
    """1 / (1 + e) for e in [0, 1]: σ(|x|)."""
    return reciprocal(1.0 + e, PRECISE)


@triton.jit
def log1p_unit(e, PRECISE: tl.constexpr):
    """log(1 + e) for e in [0, 1] (NaN stays NaN), accurate where 1 + e rounds to 1.

    e + e²·Q(e), Q a minimax fit of (log1p(e) - e)/e² for the relative error of the result over [0, 1].
    """
    if e.dtype == tl.float64:
        u = 1.0 + e  # Goldberg: log(u)·e/(u - 1) corrects the rounding of 1 + e
        return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    else:
        if PRECISE:
            q = tl.fma(e, 0.005364758428186178, -0.030065545812249184)
            q = tl.fma(q, e, 0.07920416444540024)
            q = tl.fma(q, e, -0.13753773272037506)
            q = tl.fma(q, e, 0.19153642654418945)
            q = tl.fma(q, e, -0.24857160449028015)
            q = tl.fma(q, e, 0.333213210105896)
            q = tl.fma(q, e, -0.49999648332595825)
        else:
            q = tl.fma(e, 0.04310699179768562, -0.16136427223682404)
            q = tl.fma(q, e, 0.3092253506183624)
            q = tl.fma(q, e, -0.49777457118034363)
        return tl.fma(e * e, q, e)


@triton.jit
def sigmoid_bce(x, y, p, MLSM_FORM: tl.constexpr, HAS_POS_WEIGHT: tl.constexpr, PRECISE: tl.constexpr):
    """Unweighted elementwise loss and d loss / dx of sigmoid-BCE at logits x, targets y (any real
    values), pos_weight p, all of the compute dtype; NaN and ±inf where torch's formulas give them."""
    e = exp_neg_abs(x, PRECISE)
    r = reciprocal_one_plus(e, PRECISE)
    log1p_e = log1p_unit(e, PRECISE)
    positive = p * y if HAS_POS_WEIGHT else y
    negative = 1.0 - y
    # d loss / dx = (1 - y)·σ(x) - p·y·σ(-x) = r·((1 - y) - p·y·e) for x ≥ 0, r·((1 - y)·e - p·y) for x < 0:
    # exact for 0/1 targets even where σ(x) rounds to 1, folded in full precision before any rounding.
    nonnegative = x >= 0
    slope = tl.where(nonnegative, negative, -positive)
    grad = r * tl.fma(tl.where(nonnegative, -positive, negative), e, slope)
    # The two torch formulas agree on finite logits and differ only in where ±inf logits give NaN.
    if MLSM_FORM:
        # p·y·softplus(-x) + (1-y)·softplus(x) = x·slope + (p·y + 1 - y)·log1p(e): x·slope is (1-y)·max(x, 0)
        # + p·y·max(-x, 0), and at x = ±inf it is ±inf times the coefficient, NaN for a zero one, as torch.
        if HAS_POS_WEIGHT:
            loss = tl.fma(positive + negative, log1p_e, x * slope)
        else:
            loss = x * slope + log1p_e
    else:  # BCEWithLogitsLoss: (1-y)·x + ((p-1)·y + 1)·softplus(-x), with softplus(-x)'s log1p term added
        # last: for y = 0 and x < 0 the x and max(-x, 0) terms cancel exactly, the log1p term survives
        # (infinities combine as in torch's order, so NaN and ±inf appear where torch's do).
        c = positive + negative
        loss = (negative * x + c * tl.maximum(-x, 0.0)) + c * log1p_e
    return loss, grad


@triton.jit
def negative_bce(x, PRECISE: tl.constexpr):
    """(loss, d loss / dx) of a label whose target is 0: softplus(x) (NaN at x = -inf, as torch's
    0·log σ(x) there) and σ(x)."""
    e = exp_neg_abs(x, PRECISE)
    r = reciprocal_one_plus(e, PRECISE)
    # (x + |x|)/2 as one FMA: max(x, 0), but NaN at -inf where -inf + inf is.
    loss = tl.fma(x, 0.5, tl.abs(x) * 0.5) + log1p_unit(e, PRECISE)
    return loss, tl.where(x >= 0, r, e * r)


@triton.jit
def positive_bce(x, PRECISE: tl.constexpr):
    """(loss, d loss / dx) of a label whose target is 1: softplus(-x) (NaN at x = +inf, as torch's
    0·log σ(-x) there) and -σ(-x)."""
    loss, grad = negative_bce(-x, PRECISE)
    return loss, -grad


@triton.jit
def power(base, exponent, PRECISE: tl.constexpr):
    """base ** exponent for base ≥ 0, as torch.pow: 1 where the exponent is 0 (0 ** 0 included), and
    0 ** positive = 0, 0 ** negative = inf through log2(0) = -inf. FAST fp32 takes log2 from the MUFU: its
    absolute error ε moves the result by a relative |exponent|·ε·ln 2, far below a 16-bit ulp for any
    focusing exponent (libdevice's log2, which tl.log2 lowers to, costs ~12 more instructions)."""
    if PRECISE or (base.dtype != tl.float32):
        log2_base = tl.log2(base)
    else:
        log2_base = fast_log2(base)
    return tl.where(exponent == 0, 1.0, tl.exp2(exponent * log2_base))


@triton.jit
def integer_power(base, N: tl.constexpr):
    """base ** N for a constexpr integer N ≥ 0 by N - 1 products (1 for N = 0, as torch.pow's 0 ** 0)."""
    result = tl.full(base.shape, 1.0, base.dtype)
    if N > 0:
        result = base
        for _ in tl.static_range(N - 1):
            result = result * base
    return result


@triton.jit
def log_probability(q, one_minus_q, PRECISE: tl.constexpr):
    """log(q) for q in (0, 1], given w = 1 - q formed without cancellation (`one_minus_q`).

    PRECISE fp32: libdevice's correctly rounded log(q). FAST fp32: where w < 2^-5, -w·(1 + w·(1/2 + w/3))
    (relative error < w³/4 ≤ 2^-17, and w carries none of q's rounding near 1); elsewhere the MUFU's
    log2 (absolute error ~2^-22: relative to |log q| > 2^-5, below 2^-16). Either is far below a 16-bit
    ulp, at a third of libdevice's instructions. float64: libdevice's log."""
    if q.dtype != tl.float32 or (PRECISE and INTERPRETED):
        return tl.log(q)
    elif PRECISE:
        return libdevice.log(q)
    else:
        series = -one_minus_q * tl.fma(one_minus_q, tl.fma(one_minus_q, 1.0 / 3.0, 0.5), 1.0)
        return tl.where(one_minus_q < 0.03125, series, fast_log2(q) * LN2)


@triton.jit
def focal_bce(
    x,
    y,
    alpha,
    gamma_pos,
    gamma_neg,
    clip,
    log_eps,
    ASYMMETRIC: tl.constexpr,
    ALPHA_WEIGHT: tl.constexpr,
    CLIP: tl.constexpr,
    FOCUS_GRAD: tl.constexpr,
    INTEGER_GAMMA: tl.constexpr,
    PRECISE: tl.constexpr,
):
    """(loss, d loss / dx) of the focal family at logits x and targets y (any real values):

        loss = α_t · (1 - p_t)^γ_t · ce,  p = σ(x),  q = min(σ(-x) + clip, 1) (σ(-x) without CLIP),
        p_t = p·y + q·(1 - y),  γ_t = γ+·y + γ-·(1 - y),  α_t = α·y + (1 - α)·(1 - y) (ALPHA_WEIGHT; else 1),

    INTEGER_GAMMA ≥ 0 says γ+ = γ- = INTEGER_GAMMA, an integer: the powers are then products (the focal
    loss's γ = 2); -1 for any other γ+, γ-, which costs a log2 (the MUFU's in FAST fp32, libdevice's
    otherwise) and a MUFU ex2 per power.
    ce = BCE with logits, torch's formula (torchvision's sigmoid_focal_loss: γ+ = γ-, no clip), or with
    ASYMMETRIC the ASL reference's -(y·max(log p, log ε) + (1 - y)·max(log q, log ε)). The focusing
    factor's own gradient is included with FOCUS_GRAD (ASL's disable_torch_grad_focal_loss=False and
    torchvision), left out otherwise. 1 - p_t is formed as y·σ(-x) + (1 - y)·(1 - q), never as a
    difference near 1, and log p, log σ(-x) as -softplus: accurate where the references' float32 σ rounds
    to 0 or 1 (there the references clamp at ε or give 0).
    """
    e = exp_neg_abs(x, PRECISE)
    r = reciprocal_one_plus(e, PRECISE)
    nonnegative = x >= 0
    p = tl.where(nonnegative, r, e * r)  # σ(x)
    p_neg = tl.where(nonnegative, e * r, r)  # σ(-x) = 1 - p, without the cancellation
    if CLIP:
        q_unclamped = p_neg + clip
        q = tl.minimum(q_unclamped, 1.0)
        # clamp(max=1) passes the gradient where its input is ≤ 1, as torch's
        dq = tl.where(q_unclamped <= 1.0, -p * p_neg, 0.0)
        one_minus_q = tl.maximum(p - clip, 0.0, propagate_nan=tl.PropagateNan.ALL)
    else:
        dq = -p * p_neg
        one_minus_q = p
    if ASYMMETRIC:
        log1p_e = log1p_unit(e, PRECISE)
        log_p = -(tl.maximum(-x, 0.0) + log1p_e)
        if CLIP:
            log_q = log_probability(q, one_minus_q, PRECISE)
            dlog_q = dq * reciprocal(q, PRECISE)
        else:
            log_q = -(tl.maximum(x, 0.0) + log1p_e)
            dlog_q = -p
        # clamp(min=ε) before the log, as max in log space; the gradient passes where input ≥ ε, as torch's
        positive_term = tl.maximum(log_p, log_eps, propagate_nan=tl.PropagateNan.ALL)
        negative_term = tl.maximum(log_q, log_eps, propagate_nan=tl.PropagateNan.ALL)
        ce = -(y * positive_term + (1.0 - y) * negative_term)
        dce = -(
            y * tl.where(log_p >= log_eps, p_neg, 0.0) + (1.0 - y) * tl.where(log_q >= log_eps, dlog_q, 0.0)
        )
    else:
        ce, dce = sigmoid_bce(x, y, 1.0, False, False, PRECISE)
    base = y * p_neg + (1.0 - y) * one_minus_q  # 1 - p_t
    if INTEGER_GAMMA >= 0:  # γ+ = γ- = INTEGER_GAMMA: products in place of two MUFU ops a power
        focus = integer_power(base, INTEGER_GAMMA)
    else:
        gamma = gamma_pos * y + gamma_neg * (1.0 - y)
        focus = power(base, gamma, PRECISE)
    loss = ce * focus
    grad = dce * focus
    if FOCUS_GRAD:
        # d focus / dx = γ·base^(γ-1)·(-dp_t/dx), 0 where γ = 0 (torch.pow's backward)
        dp_t = y * (p * p_neg) + (1.0 - y) * dq
        if INTEGER_GAMMA > 0:
            grad = tl.fma(ce, INTEGER_GAMMA * integer_power(base, INTEGER_GAMMA - 1) * -dp_t, grad)
        elif INTEGER_GAMMA < 0:
            dfocus = tl.where(gamma == 0, 0.0, gamma * power(base, gamma - 1.0, PRECISE)) * -dp_t
            grad = tl.fma(ce, dfocus, grad)
    if ALPHA_WEIGHT:
        alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y)
        loss = loss * alpha_t
        grad = grad * alpha_t
    return loss, grad
