#!/usr/bin/env python3
"""CPU emulation (numpy) of tc2_attn's index and fragment mapping (exec/fused.cu), f16:
ldmatrix (.trans), mma.m16n8k16 fragments per the PTX ISA, cp.async groups, the two
stages, 32-key softmax steps, masking, output staging; compared with a float64
reference. A hand transliteration of the kernel: keep it in step when editing
tc2_attn. Usage: python3 scripts/tc2-attn-emu.py [long]  (needs numpy)
"""
import sys

import numpy as np

f16 = np.float16
WARPS, BQ, BK, SK = 8, 128, 64, 32
NT = WARPS * 32

def ldsm_x4(sm, addrs, trans):
    # addrs[lane] = element index of the row start supplied by that lane.
    # returns regs[lane][i] = (lo, hi) for matrix i
    out = [[None]*4 for _ in range(32)]
    for i in range(4):
        rows = [sm[addrs[i*8 + r]: addrs[i*8 + r] + 8] for r in range(8)]
        M = np.array(rows)  # 8x8, M[r][c]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            if not trans:
                out[lane][i] = (M[g][2*t], M[g][2*t+1])
            else:
                out[lane][i] = (M[2*t][g], M[2*t+1][g])
    return out

def mma(c, a, b0, b1):
    # c[lane] = [4 floats], a[lane] = 4 regs (lo,hi), b0/b1[lane] = (lo,hi)
    A = np.zeros((16,16)); B = np.zeros((16,8)); C = np.zeros((16,8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        A[g][2*t], A[g][2*t+1] = a[lane][0]
        A[g+8][2*t], A[g+8][2*t+1] = a[lane][1]
        A[g][2*t+8], A[g][2*t+9] = a[lane][2]
        A[g+8][2*t+8], A[g+8][2*t+9] = a[lane][3]
        B[2*t][g], B[2*t+1][g] = b0[lane]
        B[2*t+8][g], B[2*t+9][g] = b1[lane]
        C[g][2*t], C[g][2*t+1], C[g+8][2*t], C[g+8][2*t+1] = c[lane]
    R = A.astype(np.float64) @ B.astype(np.float64) + C
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        c[lane] = [R[g][2*t], R[g][2*t+1], R[g+8][2*t], R[g+8][2*t+1]]

def pack2(lo, hi):
    return (f16(lo), f16(hi))

def kernel(qkv, bias, offsets, out, tokens, max_len, heads, scale, D, b, h, bx):
    LD, CH = D + 8, D // 8
    STAGE = 2 * BK * LD
    assert STAGE == BQ * LD
    sm = np.full(2 * STAGE, f16(np.nan), dtype=f16)  # garbage = NaN
    s0 = min(offsets[b], tokens); e = min(max(offsets[b+1], s0), tokens)
    start, ln = s0, e - s0
    ln = min(ln, max_len)
    q0 = bx * BQ
    if q0 >= ln: return
    hidden = heads * D; rs = 3 * hidden
    base = start * rs + h * D  # element offset into flat qkv
    nq = min(BQ, ln - q0)
    ntiles = (ln - 1) // BK + 1
    pending = []  # list of groups; each group: list of (dst, values)
    cur = []
    def cp(dst, src):
        cur.append((dst, qkv[src:src+8].copy()))
    def commit():
        nonlocal cur
        pending.append(cur); cur = []
    def wait1():
        while len(pending) > 1:
            for dst, v in pending.pop(0): sm[dst:dst+8] = v
    def add_bias8(p, bo):
        for i in range(8):
            sm[p+i] = f16(np.float32(sm[p+i]) + np.float32(bias[bo+i]))
    def load_kv(tile, st):
        k0 = tile * BK; kn = min(BK, ln - k0)
        for tid in range(NT):
            for n in range(2*BK*CH // NT):
                i = tid + n*NT; r, c = i // CH, (i % CH) * 8
                part, j = r // BK, r % BK
                dst = st + r*LD + c
                if j < kn: cp(dst, base + (k0 + j)*rs + (part+1)*hidden + c)
                else: sm[dst:dst+8] = 0
    def bias_kv(tile, st):
        k0 = tile * BK; kn = min(BK, ln - k0)
        for tid in range(NT):
            for n in range(2*BK*CH // NT):
                i = tid + n*NT; r, c = i // CH, (i % CH) * 8
                part, j = r // BK, r % BK
                if j < kn: add_bias8(st + r*LD + c, (part+1)*hidden + h*D + c)
    qs = STAGE
    for tid in range(NT):
        for n in range(BQ*CH // NT):
            i = tid + n*NT; r, c = i // CH, (i % CH)*8
            dst = qs + r*LD + c
            if r < nq: cp(dst, base + (q0 + r)*rs + c)
            else: sm[dst:dst+8] = 0
    commit(); load_kv(0, 0); commit(); wait1()
    if bias is not None:
        for tid in range(NT):
            for n in range(BQ*CH // NT):
                i = tid + n*NT; r, c = i // CH, (i % CH)*8
                if r < nq: add_bias8(qs + r*LD + c, h*D + c)
    qa = []
    for warp in range(WARPS):
        per = []
        for ks in range(D // 16):
            addrs = [qs + (warp*16 + (lane & 7) + ((lane >> 3) & 1)*8)*LD + (lane >> 4)*8 + ks*16 for lane in range(32)]
            per.append(ldsm_x4(sm, addrs, False))
        qa.append(per)  # qa[warp][ks][lane][i]
    if ntiles > 1: load_kv(1, STAGE)
    commit()
    sl2 = np.float32(scale * 1.4426950408889634)
    W = []
    for warp in range(WARPS):
        W.append(dict(m0=[-np.inf]*32, m1=[-np.inf]*32, l0=[0.0]*32, l1=[0.0]*32,
                      o=[[[0.0]*4 for _ in range(32)] for _ in range(D//8)]))
    for it in range(ntiles):
        st = (it & 1) * STAGE
        kn = min(BK, ln - it*BK)
        wait1()
        if bias is not None: bias_kv(it, st)
        for warp in range(WARPS):
            if not (q0 + warp*16 < ln): continue
            w = W[warp]
            for sub in range(BK // SK):
                kb = sub * SK
                if kb >= kn: break
                skn = min(SK, kn - kb)
                ksm = st + kb*LD; vsm = st + (BK + kb)*LD
                s = [[[0.0]*4 for _ in range(32)] for _ in range(SK//8)]
                for nt in range(SK // 8):
                    if nt*8 < skn:
                        for kp in range(D // 32):
                            addrs = [ksm + (nt*8 + (lane & 7))*LD + kp*32 + (lane >> 3)*8 for lane in range(32)]
                            kf = ldsm_x4(sm, addrs, False)
                            a = [qa[warp][2*kp][lane] for lane in range(32)]
                            mma(s[nt], a, [kf[l][0] for l in range(32)], [kf[l][1] for l in range(32)])
                            a = [qa[warp][2*kp+1][lane] for lane in range(32)]
                            mma(s[nt], a, [kf[l][2] for l in range(32)], [kf[l][3] for l in range(32)])
                mt0 = [-np.inf]*32; mt1 = [-np.inf]*32
                for lane in range(32):
                    tig = lane & 3
                    for nt in range(SK // 8):
                        for e in range(4):
                            key = nt*8 + tig*2 + (e & 1)
                            s[nt][lane][e] = s[nt][lane][e]*sl2 if key < skn else -np.inf
                        mt0[lane] = max(mt0[lane], s[nt][lane][0], s[nt][lane][1])
                        mt1[lane] = max(mt1[lane], s[nt][lane][2], s[nt][lane][3])
                for x in (1, 2):
                    mt0 = [max(mt0[l], mt0[l ^ x]) for l in range(32)]
                    mt1 = [max(mt1[l], mt1[l ^ x]) for l in range(32)]
                p = [[None]*32 for _ in range(SK//8)]
                for lane in range(32):
                    mn0 = max(w['m0'][lane], mt0[lane]); mn1 = max(w['m1'][lane], mt1[lane])
                    a0 = 2.0 ** (w['m0'][lane] - mn0); a1 = 2.0 ** (w['m1'][lane] - mn1)
                    w['m0'][lane] = mn0; w['m1'][lane] = mn1
                    ls0 = ls1 = 0.0
                    for nt in range(SK // 8):
                        e0, e1 = 2.0 ** (s[nt][lane][0] - mn0), 2.0 ** (s[nt][lane][1] - mn0)
                        e2, e3 = 2.0 ** (s[nt][lane][2] - mn1), 2.0 ** (s[nt][lane][3] - mn1)
                        ls0 += e0 + e1; ls1 += e2 + e3
                        p[nt][lane] = (pack2(e0, e1), pack2(e2, e3))
                    w['l0'][lane] = w['l0'][lane]*a0 + ls0; w['l1'][lane] = w['l1'][lane]*a1 + ls1
                    for dt in range(D // 8):
                        o = w['o'][dt][lane]
                        o[0] *= a0; o[1] *= a0; o[2] *= a1; o[3] *= a1
                for kk in range(SK // 16):
                    if kk*16 < skn:
                        pa = [(p[2*kk][l][0], p[2*kk][l][1], p[2*kk+1][l][0], p[2*kk+1][l][1]) for l in range(32)]
                        for dp in range(D // 16):
                            addrs = [vsm + (kk*16 + (lane & 7) + ((lane >> 3) & 1)*8)*LD + dp*16 + (lane >> 4)*8 for lane in range(32)]
                            vf = ldsm_x4(sm, addrs, True)
                            mma(w['o'][2*dp], pa, [vf[l][0] for l in range(32)], [vf[l][1] for l in range(32)])
                            mma(w['o'][2*dp+1], pa, [vf[l][2] for l in range(32)], [vf[l][3] for l in range(32)])
        if it + 2 < ntiles: load_kv(it + 2, st)
        commit()
    assert all(len(gp) == 0 for gp in pending) and len(cur) == 0, "copies in flight at the end"
    for warp in range(WARPS):
        if not (q0 + warp*16 < ln): continue
        w = W[warp]
        l0 = [sum(w['l0'][(l & ~3) + k] for k in range(4)) for l in range(32)]
        l1 = [sum(w['l1'][(l & ~3) + k] for k in range(4)) for l in range(32)]
        os_ = warp*16*LD
        for lane in range(32):
            g, tig = lane >> 2, lane & 3
            i0, i1 = 1.0 / l0[lane], 1.0 / l1[lane]
            for dt in range(D // 8):
                c = dt*8 + tig*2
                o = w['o'][dt][lane]
                sm[os_ + g*LD + c], sm[os_ + g*LD + c + 1] = pack2(o[0]*i0, o[1]*i0)
                sm[os_ + (g+8)*LD + c], sm[os_ + (g+8)*LD + c + 1] = pack2(o[2]*i1, o[3]*i1)
        for lane in range(32):
            for n in range(CH // 2):
                i = lane + n*32; r, c = i // CH, (i % CH)*8
                q = q0 + warp*16 + r
                if q < ln:
                    o0 = (start + q)*hidden + h*D + c
                    out[o0:o0+8] = sm[os_ + r*LD + c: os_ + r*LD + c + 8]

def reference(qkv, bias, offsets, tokens, max_len, heads, D, scale, out):
    hidden = heads*D
    X = qkv.astype(np.float64).reshape(tokens, 3*hidden)
    if bias is not None:
        X = (X.astype(np.float32) + bias.astype(np.float32)).astype(f16).astype(np.float64)
    for b in range(len(offsets)-1):
        s0 = min(offsets[b], tokens); e = min(max(offsets[b+1], s0), tokens)
        ln = min(e - s0, max_len)
        if ln == 0: continue
        for h in range(heads):
            Q = X[s0:s0+ln, h*D:(h+1)*D]; K = X[s0:s0+ln, hidden+h*D:hidden+(h+1)*D]; V = X[s0:s0+ln, 2*hidden+h*D:2*hidden+(h+1)*D]
            S = Q @ K.T * scale
            P = np.exp(S - S.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
            out.reshape(tokens, hidden)[s0:s0+ln, h*D:(h+1)*D] = P @ V

def run(lens, heads, D, max_len=None, use_bias=False, offsets=None, tokens=None, seed=0):
    rng = np.random.default_rng(seed)
    if offsets is None:
        offsets = [0]
        for l in lens: offsets.append(offsets[-1] + l)
    if tokens is None: tokens = offsets[-1]
    if max_len is None: max_len = max(lens)
    hidden = heads*D
    qkv = rng.uniform(-1.5, 1.5, tokens*3*hidden).astype(f16)
    bias = rng.uniform(-0.3, 0.3, 3*hidden).astype(np.float32) if use_bias else None
    scale = 1.0/np.sqrt(D)
    out = np.full(tokens*hidden, f16(7.0), dtype=f16)
    for b in range(len(offsets)-1):
        for h in range(heads):
            for bx in range((max_len + BQ - 1)//BQ):
                kernel(qkv, bias, offsets, out, tokens, max_len, heads, scale, D, b, h, bx)
    want = np.full(tokens*hidden, 7.0)
    reference(qkv, bias, offsets, tokens, max_len, heads, D, scale, want)
    got = out.astype(np.float64)
    d = np.abs(got - want) / (1 + np.abs(want))
    print(f"lens {lens} heads {heads} D {D} max_len {max_len} bias {use_bias}: max scaled diff {d.max():.2e}", flush=True)
    assert np.isfinite(got).all()
    assert d.max() < 2e-3, d.max()

if __name__ == "__main__":
    run([1, 7, 63], 1, 32)
    run([64, 65], 1, 64, use_bias=True)
    run([129, 0, 5], 1, 32, use_bias=True)
    run([200], 1, 32, max_len=150)
    run([130, 3], 1, 64, max_len=100)
    run([], 1, 32, offsets=[0, 50, 20, 9999, 7], tokens=60, max_len=40)
    if len(sys.argv) > 1:
        run([512, 127, 128], 1, 32)
