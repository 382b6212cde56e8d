// Fused BERT ops over PACKED variable-length batches, for f32, f16 and bf16
// activations with f32 math (NVRTC source of `exec::cuda`, module `lanes_nn_fused`).
//
// Packed layout: the tokens of all sequences back to back, `rows` = total tokens;
// sequence b owns rows offsets[b] .. offsets[b + 1] (`offsets` u32 [batch + 1] in
// device memory, offsets[0] = 0, offsets[batch] = rows, non-decreasing). There is
// no padding and no mask: attention and pooling only ever see a sequence's own rows.
// Memory safety does not depend on the values of ids or offsets: a sequence is
// clamped to [0, tokens) (and to max_len in attention), ids, types and positions
// to their tables, so bad values give wrong numbers, never an out-of-bounds access.
//
// Dtypes (`T` = the activation dtype, one kernel per dtype, suffix _f32/_f16/_bf16):
//   activations, qkv, embedding tables, GEMM weights: T
//   GEMM biases: f32, or T (`bias_act*_t`; the encoder's 16-bit weights keep theirs in T)
//   attention bias, LayerNorm gamma/beta: f32 (always)
//   ids, token types, offsets: u32
//   pooled embeddings (pool_mean's output): f32 (always)
// Math is f32 everywhere (f64 for LayerNorm statistics, softmax sums and pooling
// sums, as `crate::cpu`); T values are converted on load and rounded (nearest-even)
// on store. For T = f32 the arithmetic is the same, op for op, as kernels.cu's
// padded kernels (and so `crate::cpu`): products rounded before adds with
// __fmul_rn/__fadd_rn, no fast math.
//
// No headers: NVRTC runs without an include path, so half and bfloat16 are raw
// 16-bit patterns converted with PTX `cvt` (sm_80 or newer for bf16).

typedef unsigned short u16;

// IEEE binary16 and bfloat16 bit patterns.
struct f16 {
    u16 b;
};
struct bf16 {
    u16 b;
};

template <class A, class B>
struct same_t {
    static constexpr bool v = false;
};
template <class A>
struct same_t<A, A> {
    static constexpr bool v = true;
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.b));
    return f;
}
__device__ __forceinline__ float to_f(bf16 x) { return __uint_as_float(((unsigned)x.b) << 16); }

template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ f16 from_f<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.b) : "f"(x));
    return r;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.b) : "f"(x));
    return r;
}

__device__ __forceinline__ double fw_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float fw_sum_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float fw_max_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Exact GELU, 0.5 x erfc(-x / sqrt 2): in f64 for f32 data (as `cpu::gelu`), in
// f32 for 16-bit data (whose rounding dwarfs the difference).
template <class T>
__device__ __forceinline__ float gelu_t(float x) {
    if constexpr (sizeof(T) == 4) {
        double xd = (double)x;
        return (float)(0.5 * xd * erfc(-xd * 0.70710678118654752440));
    } else {
        return 0.5f * x * erfcf(-x * 0.70710678118654752440f);
    }
}

// The sequence owning packed row `row`: the largest b with offsets[b] <= row.
__device__ __forceinline__ unsigned seq_of(const unsigned* __restrict__ offsets, unsigned batch, unsigned row) {
    unsigned lo = 0, hi = batch;
    while (hi - lo > 1) {
        const unsigned mid = (lo + hi) >> 1;
        if (offsets[mid] <= row)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

// Sequence b's rows [*start, *start + *len), clamped to [0, tokens].
__device__ __forceinline__ void fseq_range(const unsigned* __restrict__ offsets, unsigned b, unsigned tokens,
                                           unsigned* start, unsigned* len) {
    const unsigned s = min(offsets[b], tokens);
    const unsigned e = min(max(offsets[b + 1], s), tokens);
    *start = s;
    *len = e - s;
}

// ---------------------------------------------------------------------------
// LayerNorm, one warp per row, the row in registers (V values per lane,
// dim <= 32 * V); statistics in f64:
// out = T((float)((x - mean) * rstd) * gamma + beta), the last two ops rounded apart.

#define FLN_WARPS 4

template <class T, int V>
__device__ __forceinline__ void fln_finish(float (&v)[V], unsigned dim, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float eps, T* __restrict__ out) {
    const unsigned lane = threadIdx.x & 31u;
    double s = 0.0;
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) s += (double)v[t];
    }
    const double mean = fw_sum_d(s) / (double)dim;
    double q = 0.0;
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) {
            double d = (double)v[t] - mean;
            q += d * d;
        }
    }
    const double var = fw_sum_d(q) / (double)dim;
    const double rstd = 1.0 / sqrt(var + (double)eps);
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) {
            float y = (float)(((double)v[t] - mean) * rstd);
            out[i] = from_f<T>(__fadd_rn(__fmul_rn(y, gamma[i]), beta[i]));
        }
    }
}

// out[r] = LayerNorm((x[r] + bias) + res[r]); `bias` (f32 [dim]) may be null.
// Each warp reads its whole row before writing, so `out` may alias `x` or `res`.
template <class T, int V>
__device__ __forceinline__ void fadd_ln(const T* x, const float* __restrict__ bias, const T* res,
                                        const float* __restrict__ gamma, const float* __restrict__ beta, T* out,
                                        unsigned rows, unsigned dim, float eps) {
    const unsigned row = blockIdx.x * FLN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31u;
    const size_t base = (size_t)row * dim;
    float v[V];
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) {
            float a = to_f(x[base + i]);
            if (bias) a = __fadd_rn(a, bias[i]);
            v[t] = __fadd_rn(a, to_f(res[base + i]));
        } else {
            v[t] = 0.0f;
        }
    }
    fln_finish<T, V>(v, dim, gamma, beta, eps, out + base);
}

// out[r] = LayerNorm((word[ids[r]] + token_type[types[r]]) + position[r - offsets[b]])
// for the row's sequence b; ids, types and positions clamped to their tables
// (vocab, max_pos, type_vocab rows, each >= 1).
template <class T, int V>
__device__ __forceinline__ void fembed_ln(const unsigned* __restrict__ ids, const unsigned* __restrict__ types,
                                          const unsigned* __restrict__ offsets, unsigned batch,
                                          const T* __restrict__ word, const T* __restrict__ position,
                                          const T* __restrict__ token_type, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, T* __restrict__ out, unsigned rows,
                                          unsigned dim, float eps, unsigned vocab, unsigned max_pos,
                                          unsigned type_vocab) {
    const unsigned row = blockIdx.x * FLN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31u;
    const unsigned first = offsets[seq_of(offsets, batch, row)];
    const unsigned pos = min(row >= first ? row - first : 0u, max_pos - 1);
    const T* w = word + (size_t)min(ids[row], vocab - 1) * dim;
    const T* tt = token_type + (size_t)min(types[row], type_vocab - 1) * dim;
    const T* p = position + (size_t)pos * dim;
    float v[V];
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        v[t] = i < dim ? __fadd_rn(__fadd_rn(to_f(w[i]), to_f(tt[i])), to_f(p[i])) : 0.0f;
    }
    fln_finish<T, V>(v, dim, gamma, beta, eps, out + (size_t)row * dim);
}

#define FLN_KERNELS(T, S, V)                                                                                  \
    extern "C" __global__ void __launch_bounds__(FLN_WARPS * 32) add_ln_##S##_##V(                          \
        const T* x, const float* __restrict__ bias, const T* res, const float* __restrict__ gamma,           \
        const float* __restrict__ beta, T* out, unsigned rows, unsigned dim, float eps) {                     \
        fadd_ln<T, V>(x, bias, res, gamma, beta, out, rows, dim, eps);                                        \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(FLN_WARPS * 32) embed_ln_##S##_##V(                        \
        const unsigned* __restrict__ ids, const unsigned* __restrict__ types,                                \
        const unsigned* __restrict__ offsets, unsigned batch, const T* __restrict__ word,                    \
        const T* __restrict__ position, const T* __restrict__ token_type, const float* __restrict__ gamma,   \
        const float* __restrict__ beta, T* __restrict__ out, unsigned rows, unsigned dim, float eps,         \
        unsigned vocab, unsigned max_pos, unsigned type_vocab) {                                              \
        fembed_ln<T, V>(ids, types, offsets, batch, word, position, token_type, gamma, beta, out, rows, dim,  \
                        eps, vocab, max_pos, type_vocab);                                                     \
    }

// The same LayerNorm with 4 consecutive values a lane per access (one 8-byte
// load of 16-bit data, one 16-byte load of f32): value 4 * (lane + 32 * c) + j is
// v[4 * c + j]. For dim % 4 == 0 with x, res, out aligned to 4 values and gamma,
// beta to 16 bytes (the host checks); the statistics are the same f64 sums
// (only their order differs), so results match the scalar kernel's.
__device__ __forceinline__ void ld4(const float* p, float (&o)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
template <class T>
__device__ __forceinline__ void ld4(const T* p, float (&o)[4]) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    T a, b, c, d;
    a.b = (u16)(v.x & 0xffffu), b.b = (u16)(v.x >> 16), c.b = (u16)(v.y & 0xffffu), d.b = (u16)(v.y >> 16);
    o[0] = to_f(a), o[1] = to_f(b), o[2] = to_f(c), o[3] = to_f(d);
}
__device__ __forceinline__ void st4(float* p, const float (&o)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(o[0], o[1], o[2], o[3]);
}
template <class T>
__device__ __forceinline__ void st4(T* p, const float (&o)[4]) {
    uint2 v;
    v.x = (unsigned)from_f<T>(o[0]).b | ((unsigned)from_f<T>(o[1]).b << 16);
    v.y = (unsigned)from_f<T>(o[2]).b | ((unsigned)from_f<T>(o[3]).b << 16);
    *reinterpret_cast<uint2*>(p) = v;
}

template <class T, int V>
__device__ __forceinline__ void fadd_ln4(const T* x, const T* res, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, T* out, unsigned rows, unsigned dim,
                                         float eps) {
    const unsigned row = blockIdx.x * FLN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31u;
    const size_t base = (size_t)row * dim;
    float v[V];
    double s = 0.0;
#pragma unroll
    for (int c = 0; c < V / 4; c++) {
        const unsigned i = 4u * (lane + 32u * c);
        float a[4], r[4];
        if (i < dim) {
            ld4(x + base + i, a);
            ld4(res + base + i, r);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[4 * c + j] = i < dim ? __fadd_rn(a[j], r[j]) : 0.0f;
            s += (double)v[4 * c + j];
        }
    }
    const double mean = fw_sum_d(s) / (double)dim;
    double q = 0.0;
#pragma unroll
    for (int c = 0; c < V / 4; c++) {
        const unsigned i = 4u * (lane + 32u * c);
        if (i < dim) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const double d = (double)v[4 * c + j] - mean;
                q += d * d;
            }
        }
    }
    const double rstd = 1.0 / sqrt(fw_sum_d(q) / (double)dim + (double)eps);
#pragma unroll
    for (int c = 0; c < V / 4; c++) {
        const unsigned i = 4u * (lane + 32u * c);
        if (i < dim) {
            float g[4], b[4], y[4];
            ld4(gamma + i, g);
            ld4(beta + i, b);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float n = (float)(((double)v[4 * c + j] - mean) * rstd);
                y[j] = __fadd_rn(__fmul_rn(n, g[j]), b[j]);
            }
            st4(out + base + i, y);
        }
    }
}

#define FLN4_KERNEL(T, S, V)                                                                                  \
    extern "C" __global__ void __launch_bounds__(FLN_WARPS * 32) add_ln4_##S##_##V(                         \
        const T* x, const T* res, const float* __restrict__ gamma, const float* __restrict__ beta, T* out,   \
        unsigned rows, unsigned dim, float eps) {                                                             \
        fadd_ln4<T, V>(x, res, gamma, beta, out, rows, dim, eps);                                             \
    }

// dim <= 128, <= 384 (MiniLM), <= 1024.
#define FLN_ALL(T, S)                                                                                         \
    FLN_KERNELS(T, S, 4) FLN_KERNELS(T, S, 12) FLN_KERNELS(T, S, 32) FLN4_KERNEL(T, S, 4) FLN4_KERNEL(T, S, 12) \
        FLN4_KERNEL(T, S, 32)
FLN_ALL(float, f32)
FLN_ALL(f16, f16)
FLN_ALL(bf16, bf16)

// ---------------------------------------------------------------------------
// GEMM epilogue, in place: out[r, j] = T(act(out[r, j] + bias[j])), bias f32 or T.
// `bias_act_vec` moves 16 bytes a thread (4 f32 or 8 halves): n % (16 / sizeof T)
// == 0 and `out` 16-byte aligned (the host checks); `bias_act` is the scalar
// fallback. total = rows * n < 2^31.

template <class T, class B>
__device__ __forceinline__ void fbias_act_vec(T* __restrict__ out, const B* __restrict__ bias, unsigned total,
                                              unsigned n, int gelu) {
    constexpr unsigned VEC = 16 / sizeof(T);
    const unsigned nv = total / VEC;
    uint4* o4 = reinterpret_cast<uint4*>(out);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        uint4 raw = o4[i];
        T* v = reinterpret_cast<T*>(&raw);
        const unsigned col = (i * VEC) % n;
#pragma unroll
        for (unsigned e = 0; e < VEC; e++) {
            float f = __fadd_rn(to_f(v[e]), to_f(bias[col + e]));
            if (gelu) f = gelu_t<T>(f);
            v[e] = from_f<T>(f);
        }
        o4[i] = raw;
    }
}

template <class T, class B>
__device__ __forceinline__ void fbias_act(T* __restrict__ out, const B* __restrict__ bias, unsigned total,
                                          unsigned n, int gelu) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        float f = __fadd_rn(to_f(out[i]), to_f(bias[i % n]));
        if (gelu) f = gelu_t<T>(f);
        out[i] = from_f<T>(f);
    }
}

// bias_act[_vec]_{S}: f32 bias; bias_act[_vec]_{S}_t: the bias in T (the 16-bit
// models keep their biases in the activation dtype, as cuBLASLt's epilogue needs).
#define FBIAS_KERNELS(T, S, B, BS)                                                                            \
    extern "C" __global__ void bias_act_vec_##S##BS(T* __restrict__ out, const B* __restrict__ bias,         \
                                                    unsigned total, unsigned n, int gelu) {                   \
        fbias_act_vec<T, B>(out, bias, total, n, gelu);                                                       \
    }                                                                                                         \
    extern "C" __global__ void bias_act_##S##BS(T* __restrict__ out, const B* __restrict__ bias,             \
                                                unsigned total, unsigned n, int gelu) {                       \
        fbias_act<T, B>(out, bias, total, n, gelu);                                                           \
    }
FBIAS_KERNELS(float, f32, float, )
FBIAS_KERNELS(f16, f16, float, )
FBIAS_KERNELS(bf16, bf16, float, )
FBIAS_KERNELS(f16, f16, f16, _t)
FBIAS_KERNELS(bf16, bf16, bf16, _t)

// ---------------------------------------------------------------------------
// Flash-style multi-head attention from the fused projection qkv [rows, 3 * hidden]
// (q, k, v side by side; head h in columns h * D ..), optional f32 bias
// [3 * hidden] added on load; writes ctx [rows, hidden]. One block per (query
// tile, head, sequence); FA_WARPS warps of FA_Q queries each. Keys and values go
// through shared memory FA_KT(C) at a time; softmax is online (running max and
// f64 running sum per query), so no score row reaches global memory. A sequence
// of at most FA_KT keys is one tile: then the probabilities are normalized before
// P·V, exactly the padded kernel's order (for f32, the same results).
//
// Dynamic shared memory (floats): Ks [KT][D+1], Vs [KT][D+1], Qs [QB][D],
// Ps [FA_WARPS][FA_Q][KT] with KT = 128 / C; head_dim D <= 32 * C, C in {1, 2, 4}
// (under 48 KiB for D = 32, 64, 128).

#define FA_WARPS 4
#define FA_Q 4

template <int C>
struct FaTile {
    static constexpr unsigned KT = 128 / C;
};

template <class T, int C>
__device__ __forceinline__ void flash_attn(const T* __restrict__ qkv, const float* __restrict__ bias,
                                           const unsigned* __restrict__ offsets, T* __restrict__ out,
                                           unsigned tokens, unsigned max_len, unsigned heads, unsigned D,
                                           float scale) {
    constexpr unsigned KT = FaTile<C>::KT;
    constexpr unsigned JJ = KT / 32;  // keys per lane per tile
    constexpr unsigned QB = FA_WARPS * FA_Q;
    extern __shared__ float fa_smem[];
    const unsigned b = blockIdx.z, h = blockIdx.y;
    unsigned start, len;
    fseq_range(offsets, b, tokens, &start, &len);
    len = min(len, max_len);
    const unsigned q0 = blockIdx.x * QB;
    if (q0 >= len) return;  // uniform over the block
    const unsigned hidden = heads * D;
    const unsigned ld = D + 1;
    float* Ks = fa_smem;
    float* Vs = Ks + KT * ld;
    float* Qs = Vs + KT * ld;
    float* Ps = Qs + QB * D;
    const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const unsigned my0 = warp * FA_Q;
    float* Pw = Ps + warp * FA_Q * KT;
    const size_t rs = 3 * (size_t)hidden;
    const T* base = qkv + (size_t)start * rs + (size_t)h * D;
    const unsigned hq = h * D, hk = hidden + h * D, hv = 2 * hidden + h * D;

    for (unsigned idx = threadIdx.x; idx < QB * D; idx += blockDim.x) {
        const unsigned qi = idx / D, c = idx - qi * D;
        const unsigned q = q0 + qi;
        float v = 0.0f;
        if (q < len) {
            v = to_f(base[(size_t)q * rs + c]);
            if (bias) v = __fadd_rn(v, bias[hq + c]);
        }
        Qs[idx] = v;
    }

    const bool single = len <= KT;
    float m[FA_Q];
    double l[FA_Q];
    float o[FA_Q][C];
#pragma unroll
    for (int qi = 0; qi < FA_Q; qi++) {
        m[qi] = -__int_as_float(0x7f800000);
        l[qi] = 0.0;
#pragma unroll
        for (int t = 0; t < C; t++) o[qi][t] = 0.0f;
    }

    for (unsigned k0 = 0; k0 < len; k0 += KT) {
        const unsigned kn = min(KT, len - k0);
        __syncthreads();  // the previous tile's Ks / Vs / Ps reads are done
        for (unsigned idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
            const unsigned j = idx / D, c = idx - j * D;
            const T* r = base + (size_t)(k0 + j) * rs;
            float kv = to_f(r[hidden + c]);
            float vv = to_f(r[2 * hidden + c]);
            if (bias) {
                kv = __fadd_rn(kv, bias[hk + c]);
                vv = __fadd_rn(vv, bias[hv + c]);
            }
            Ks[j * ld + c] = kv;
            Vs[j * ld + c] = vv;
        }
        __syncthreads();

        // Scores: lane takes keys lane, lane + 32, ... of the tile.
        float s[FA_Q][JJ];
#pragma unroll
        for (unsigned jj = 0; jj < JJ; jj++) {
            const unsigned j = lane + 32u * jj;
            float acc[FA_Q];
#pragma unroll
            for (int qi = 0; qi < FA_Q; qi++) acc[qi] = 0.0f;
            if (j < kn) {
                const float* kr = Ks + j * ld;
                const float* qr = Qs + my0 * D;
                for (unsigned c = 0; c < D; c++) {
                    const float kv = kr[c];
#pragma unroll
                    for (int qi = 0; qi < FA_Q; qi++) acc[qi] = fmaf(qr[qi * D + c], kv, acc[qi]);
                }
            }
#pragma unroll
            for (int qi = 0; qi < FA_Q; qi++)
                s[qi][jj] = j < kn ? __fmul_rn(acc[qi], scale) : -__int_as_float(0x7f800000);
        }

        // Online softmax per query; probabilities to this warp's Ps rows.
        float alpha[FA_Q];
#pragma unroll
        for (int qi = 0; qi < FA_Q; qi++) {
            float mt = s[qi][0];
#pragma unroll
            for (unsigned jj = 1; jj < JJ; jj++) mt = fmaxf(mt, s[qi][jj]);
            mt = fw_max_f(mt);
            const float mn = fmaxf(m[qi], mt);
            alpha[qi] = expf(m[qi] - mn);  // 0 on the first tile
            m[qi] = mn;
            double sum = 0.0;
            float e[JJ];
#pragma unroll
            for (unsigned jj = 0; jj < JJ; jj++) {
                e[jj] = expf(s[qi][jj] - mn);  // 0 past the tile's keys
                sum += (double)e[jj];
            }
            l[qi] = l[qi] * (double)alpha[qi] + fw_sum_d(sum);
            if (single) {
                const float inv = (float)(1.0 / l[qi]);
#pragma unroll
                for (unsigned jj = 0; jj < JJ; jj++) e[jj] = __fmul_rn(e[jj], inv);
            }
#pragma unroll
            for (unsigned jj = 0; jj < JJ; jj++) Pw[qi * KT + lane + 32u * jj] = e[jj];
        }
        __syncwarp();

        // o = alpha * o + P · V; lane owns columns lane, lane + 32.
#pragma unroll
        for (int qi = 0; qi < FA_Q; qi++)
#pragma unroll
            for (int t = 0; t < C; t++) o[qi][t] = __fmul_rn(o[qi][t], alpha[qi]);
        for (unsigned j = 0; j < kn; j++) {
            float vv[C];
#pragma unroll
            for (int t = 0; t < C; t++) {
                const unsigned c = lane + 32u * t;
                vv[t] = c < D ? Vs[j * ld + c] : 0.0f;
            }
#pragma unroll
            for (int qi = 0; qi < FA_Q; qi++) {
                const float p = Pw[qi * KT + j];
#pragma unroll
                for (int t = 0; t < C; t++) o[qi][t] = fmaf(p, vv[t], o[qi][t]);
            }
        }
    }

#pragma unroll
    for (int qi = 0; qi < FA_Q; qi++) {
        const unsigned q = q0 + my0 + qi;
        if (q >= len) continue;
        const float inv = single ? 1.0f : (float)(1.0 / l[qi]);
        T* dst = out + (size_t)(start + q) * hidden + (size_t)h * D;
#pragma unroll
        for (int t = 0; t < C; t++) {
            const unsigned c = lane + 32u * t;
            if (c < D) dst[c] = from_f<T>(single ? o[qi][t] : __fmul_rn(o[qi][t], inv));
        }
    }
}

#define FA_KERNEL(T, S, C)                                                                                    \
    extern "C" __global__ void __launch_bounds__(FA_WARPS * 32) flash_attn_##S##_c##C(                       \
        const T* __restrict__ qkv, const float* __restrict__ bias, const unsigned* __restrict__ offsets,      \
        T* __restrict__ out, unsigned tokens, unsigned max_len, unsigned heads, unsigned D, float scale) {    \
        flash_attn<T, C>(qkv, bias, offsets, out, tokens, max_len, heads, D, scale);                          \
    }
FA_KERNEL(float, f32, 1)
FA_KERNEL(float, f32, 2)
FA_KERNEL(float, f32, 4)
FA_KERNEL(f16, f16, 1)
FA_KERNEL(f16, f16, 2)
FA_KERNEL(f16, f16, 4)
FA_KERNEL(bf16, bf16, 1)
FA_KERNEL(bf16, bf16, 2)
FA_KERNEL(bf16, bf16, 4)

// ---------------------------------------------------------------------------
// f32 attention, one thread per query row: the f32 path's kernel (no tensor
// cores). One block per (RA_Q-query tile, head, sequence); the sequence's keys
// and values go through shared memory RA_KC rows at a time (16-byte loads; the
// optional f32 bias [3 * hidden] added on load) and every thread reads the same
// key row at once (a broadcast). Each thread keeps its query and its context
// accumulator in registers and runs an online softmax over groups of RA_G keys:
// s = scale * (q · k) (the dot in d order with fused multiply-adds: one rounding
// per step where `cpu::attention` rounds the product and the sum, so results
// differ from it by f32 rounding, ~1e-7 relative), one rescale of the
// accumulator per group, f32 exp, f32 running sum; out = acc / sum. head_dim D in {32, 64}; qkv and out 16-byte
// aligned and hidden % 4 == 0 (the host checks).

#define RA_Q 64
#define RA_KC 64
#define RA_G 16

template <int D, int KS>
__device__ __forceinline__ void row_attn(const float* __restrict__ qkv, const float* __restrict__ bias,
                                         const unsigned* __restrict__ offsets, float* __restrict__ out,
                                         unsigned tokens, unsigned max_len, unsigned heads, float scale) {
    constexpr unsigned QB = RA_Q / KS;            // queries a block
    constexpr unsigned LD = D / 4 + (KS > 1);     // a key row in float4s (padded when split)
    constexpr unsigned STEP = KS * RA_G;          // keys a group spans
    constexpr unsigned LOADS = RA_KC * (D / 4) / RA_Q;  // float4s of K (and of V) a thread stages
    constexpr unsigned LB = LOADS < 8 ? LOADS : 8;      // loads in flight at once
    static_assert(RA_KC * (D / 4) % RA_Q == 0 && LOADS % LB == 0, "whole batches of loads");
    const float NEG_INF = -__int_as_float(0x7f800000);
    __shared__ float4 Ks[RA_KC][LD];
    __shared__ float4 Vs[RA_KC][LD];
    const unsigned b = blockIdx.z, h = blockIdx.y;
    unsigned start, len;
    fseq_range(offsets, b, tokens, &start, &len);
    len = min(len, max_len);
    const unsigned q0 = blockIdx.x * QB;
    if (q0 >= len) return;  // uniform over the block
    const unsigned hidden = heads * D;
    const size_t rs = 3 * (size_t)hidden;
    const float* base = qkv + (size_t)start * rs + (size_t)h * D;
    const unsigned ks = threadIdx.x % KS;  // a query's KS threads are adjacent lanes
    const unsigned qi = q0 + threadIdx.x / KS;
    const bool active = qi < len;
    float q[D], acc[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        q[d] = active ? base[(size_t)qi * rs + d] : 0.0f;
        if (bias) q[d] = __fadd_rn(q[d], bias[h * D + d]);
        acc[d] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (unsigned c0 = 0; c0 < len; c0 += RA_KC) {
        const unsigned n = min(RA_KC, len - c0);
        __syncthreads();  // the previous chunk is no longer read
        // RA_LOADS float4s of K and of V per thread, RA_LB at a time: each batch's
        // loads are all issued before its stores (unrolled, in registers), so a
        // chunk costs RA_LOADS / RA_LB memory round trips, not RA_LOADS.
#pragma unroll
        for (unsigned e0 = 0; e0 < LOADS; e0 += LB) {
            float4 kr[LB], vr[LB];
#pragma unroll
            for (unsigned e = 0; e < LB; e++) {
                const unsigned idx = threadIdx.x + (e0 + e) * RA_Q;
                const unsigned r = idx / (D / 4), c4 = idx - r * (D / 4);
                kr[e] = make_float4(0.f, 0.f, 0.f, 0.f), vr[e] = kr[e];
                if (r < n) {
                    const float* row = base + (size_t)(c0 + r) * rs;
                    kr[e] = *reinterpret_cast<const float4*>(row + hidden + 4 * c4);
                    vr[e] = *reinterpret_cast<const float4*>(row + 2 * hidden + 4 * c4);
                }
            }
#pragma unroll
            for (unsigned e = 0; e < LB; e++) {
                const unsigned idx = threadIdx.x + (e0 + e) * RA_Q;
                const unsigned r = idx / (D / 4), c4 = idx - r * (D / 4);
                float4 kv = kr[e], vv = vr[e];
                if (bias && r < n) {
                    const float* bk = bias + hidden + h * D + 4 * c4;
                    const float* bv = bias + 2 * hidden + h * D + 4 * c4;
                    kv.x = __fadd_rn(kv.x, bk[0]), kv.y = __fadd_rn(kv.y, bk[1]);
                    kv.z = __fadd_rn(kv.z, bk[2]), kv.w = __fadd_rn(kv.w, bk[3]);
                    vv.x = __fadd_rn(vv.x, bv[0]), vv.y = __fadd_rn(vv.y, bv[1]);
                    vv.z = __fadd_rn(vv.z, bv[2]), vv.w = __fadd_rn(vv.w, bv[3]);
                }
                Ks[r][c4] = kv;
                Vs[r][c4] = vv;
            }
        }
        __syncthreads();
        if (!active) continue;
        // This thread's keys of the chunk: ks, ks + KS, ks + 2 KS, ...
        for (unsigned g = 0; g < n; g += STEP) {
            float sc[RA_G];
            float gm = m;
#pragma unroll
            for (int j = 0; j < RA_G; j++) {
                const unsigned key = g + ks + KS * j;
                float dot = 0.0f;
                if (key < n) {
#pragma unroll
                    for (int d4 = 0; d4 < D / 4; d4++) {
                        const float4 k = Ks[key][d4];
                        dot = fmaf(q[4 * d4], k.x, dot);
                        dot = fmaf(q[4 * d4 + 1], k.y, dot);
                        dot = fmaf(q[4 * d4 + 2], k.z, dot);
                        dot = fmaf(q[4 * d4 + 3], k.w, dot);
                    }
                    sc[j] = __fmul_rn(scale, dot);
                } else {
                    sc[j] = NEG_INF;
                }
                gm = fmaxf(gm, sc[j]);
            }
            if (gm == NEG_INF) continue;  // no key of this thread in the group yet
            const float corr = expf(m - gm);  // 0 on this thread's first keys (m = -inf)
            l *= corr;
#pragma unroll
            for (int d = 0; d < D; d++) acc[d] *= corr;
#pragma unroll
            for (int j = 0; j < RA_G; j++) {
                const unsigned key = g + ks + KS * j;
                const float p = expf(sc[j] - gm);  // 0 past the chunk's end
                l += p;
                if (key < n) {
#pragma unroll
                    for (int d4 = 0; d4 < D / 4; d4++) {
                        const float4 v = Vs[key][d4];
                        acc[4 * d4] = fmaf(p, v.x, acc[4 * d4]);
                        acc[4 * d4 + 1] = fmaf(p, v.y, acc[4 * d4 + 1]);
                        acc[4 * d4 + 2] = fmaf(p, v.z, acc[4 * d4 + 2]);
                        acc[4 * d4 + 3] = fmaf(p, v.w, acc[4 * d4 + 3]);
                    }
                }
            }
            m = gm;
        }
    }
    if (KS > 1) {
        // Merge the KS partial softmaxes of each query (every lane takes part: the
        // shuffles need the whole warp; a thread without keys has m = -inf, l = 0).
        float mall = m;
#pragma unroll
        for (int o = 1; o < KS; o <<= 1) mall = fmaxf(mall, __shfl_xor_sync(0xffffffffu, mall, o));
        const float f = m == NEG_INF ? 0.0f : expf(m - mall);
        l *= f;
#pragma unroll
        for (int o = 1; o < KS; o <<= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
#pragma unroll
        for (int d = 0; d < D; d++) {
            float a = acc[d] * f;
#pragma unroll
            for (int o = 1; o < KS; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            acc[d] = a;
        }
    }
    if (!active) return;
    const float inv = 1.0f / l;
    float4* o = reinterpret_cast<float4*>(out + (size_t)(start + qi) * hidden + (size_t)h * D);
#pragma unroll
    for (int d4 = 0; d4 < D / 4; d4++)
        if (d4 % KS == ks)
            o[d4] = make_float4(acc[4 * d4] * inv, acc[4 * d4 + 1] * inv, acc[4 * d4 + 2] * inv,
                                acc[4 * d4 + 3] * inv);
}

// row_attn_f32_d{D}: a thread per query; row_attn4_f32_d{D}: four threads per query,
// each a quarter of the keys, merged by shuffles (more parallelism for small batches).
#define RA_KERNEL(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(RA_Q) row_attn_f32_d##D(                                     \
        const float* __restrict__ qkv, const float* __restrict__ bias, const unsigned* __restrict__ offsets,  \
        float* __restrict__ out, unsigned tokens, unsigned max_len, unsigned heads, float scale) {            \
        row_attn<D, 1>(qkv, bias, offsets, out, tokens, max_len, heads, scale);                               \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(RA_Q) row_attn4_f32_d##D(                                    \
        const float* __restrict__ qkv, const float* __restrict__ bias, const unsigned* __restrict__ offsets,  \
        float* __restrict__ out, unsigned tokens, unsigned max_len, unsigned heads, float scale) {            \
        row_attn<D, 4>(qkv, bias, offsets, out, tokens, max_len, heads, scale);                               \
    }
RA_KERNEL(32)
RA_KERNEL(64)

// ---------------------------------------------------------------------------
// Tensor-core flash attention for 16-bit data (f16 / bf16), head_dim D in {32, 64}:
// mma.sync m16n8k16 with f32 accumulation. v1, kept for comparison (`LANES_ATTN=v1`,
// `AttnKernel::V1`); `tc2_attn` below is the default. One block per (64-query tile, head,
// sequence), TC_WARPS warps of 16 queries. Per 64-key tile: K [key][D] and Vᵀ
// [D][key] staged in shared memory as T (bias added in f32 on load, rounded to
// T); S = Q·Kᵀ in f32 registers, scaled, keys past the sequence at -inf; online
// softmax (f32 running max and sum, per query row); P rounded to T and fed
// straight from the S accumulators into P·V (the m16n8 C fragment of two adjacent
// key tiles is the A fragment of one k16 step). Output rounded to T.

#define TC_WARPS 4
#define TC_KT 64

template <class T>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    if constexpr (same_t<T, f16>::v) {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if constexpr (same_t<T, f16>::v) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

template <class T, int D>
__device__ __forceinline__ void tc_attn(const T* __restrict__ qkv, const float* __restrict__ bias,
                                        const unsigned* __restrict__ offsets, T* __restrict__ out, unsigned tokens,
                                        unsigned max_len, unsigned heads, float scale) {
    constexpr int KT = TC_KT;
    constexpr int KLD = D + 8;   // halves per K row (conflict-free fragment loads)
    constexpr int VLD = KT + 8;  // halves per Vᵀ row
    __shared__ __align__(16) u16 Ks[KT * KLD];
    __shared__ __align__(16) u16 Vt[D * VLD];
    const unsigned b = blockIdx.z, h = blockIdx.y;
    unsigned start, len;
    fseq_range(offsets, b, tokens, &start, &len);
    len = min(len, max_len);
    const unsigned q0 = blockIdx.x * (TC_WARPS * 16);
    if (q0 >= len) return;  // uniform over the block
    const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const unsigned g = lane >> 2, tig = lane & 3u;
    const unsigned hidden = heads * D;
    const size_t rs = 3 * (size_t)hidden;
    const T* base = qkv + (size_t)start * rs + (size_t)h * D;
    const unsigned hq = h * D, hk = hidden + h * D, hv = 2 * hidden + h * D;

    // Q fragments (A, row-major 16 × 16 per k step): rows r0, r0 + 8.
    const unsigned r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const unsigned c = ks * 16 + half * 8 + tig * 2;
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                const unsigned r = rr ? r1 : r0;
                float x0 = 0.0f, x1 = 0.0f;
                if (r < len) {
                    x0 = to_f(base[(size_t)r * rs + c]);
                    x1 = to_f(base[(size_t)r * rs + c + 1]);
                    if (bias) {
                        x0 = __fadd_rn(x0, bias[hq + c]);
                        x1 = __fadd_rn(x1, bias[hq + c + 1]);
                    }
                }
                qa[ks][half * 2 + rr] = pack2<T>(x0, x1);
            }
        }
    }

    float m0 = -__int_as_float(0x7f800000), m1 = m0;
    float l0 = 0.0f, l1 = 0.0f;  // this lane's share of the row sums
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[dt][e] = 0.0f;

    for (unsigned k0 = 0; k0 < len; k0 += KT) {
        const unsigned kn = min((unsigned)KT, len - k0);
        __syncthreads();  // the previous tile's reads are done
        for (unsigned idx = threadIdx.x; idx < KT * D; idx += blockDim.x) {
            const unsigned j = idx / D, c = idx - j * D;
            float kv = 0.0f, vv = 0.0f;
            if (j < kn) {
                const T* r = base + (size_t)(k0 + j) * rs;
                kv = to_f(r[hidden + c]);
                vv = to_f(r[2 * hidden + c]);
                if (bias) {
                    kv = __fadd_rn(kv, bias[hk + c]);
                    vv = __fadd_rn(vv, bias[hv + c]);
                }
            }
            Ks[j * KLD + c] = from_f<T>(kv).b;
            Vt[c * VLD + j] = from_f<T>(vv).b;
        }
        __syncthreads();

        // S = Q · Kᵀ, KT / 8 key tiles of 8.
        float s[KT / 8][4];
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
            const u16* kr = Ks + (nt * 8 + g) * KLD + tig * 2;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                const unsigned b0 = *reinterpret_cast<const unsigned*>(kr + ks * 16);
                const unsigned b1 = *reinterpret_cast<const unsigned*>(kr + ks * 16 + 8);
                mma16816<T>(s[nt], qa[ks], b0, b1);
            }
        }
        float mt0 = -__int_as_float(0x7f800000), mt1 = mt0;
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const unsigned key = nt * 8 + tig * 2 + (e & 1);
                s[nt][e] = key < kn ? s[nt][e] * scale : -__int_as_float(0x7f800000);
            }
            mt0 = fmaxf(mt0, fmaxf(s[nt][0], s[nt][1]));
            mt1 = fmaxf(mt1, fmaxf(s[nt][2], s[nt][3]));
        }
#pragma unroll
        for (int x = 1; x <= 2; x <<= 1) {
            mt0 = fmaxf(mt0, __shfl_xor_sync(0xffffffffu, mt0, x));
            mt1 = fmaxf(mt1, __shfl_xor_sync(0xffffffffu, mt1, x));
        }
        const float mn0 = fmaxf(m0, mt0), mn1 = fmaxf(m1, mt1);
        const float a0 = expf(m0 - mn0), a1 = expf(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
            s[nt][0] = expf(s[nt][0] - mn0);
            s[nt][1] = expf(s[nt][1] - mn0);
            s[nt][2] = expf(s[nt][2] - mn1);
            s[nt][3] = expf(s[nt][3] - mn1);
            ls0 += s[nt][0] + s[nt][1];
            ls1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * a0 + ls0;
        l1 = l1 * a1 + ls1;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o[dt][0] *= a0;
            o[dt][1] *= a0;
            o[dt][2] *= a1;
            o[dt][3] *= a1;
        }
        // O += P · V, KT / 16 k steps of 16 keys.
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            const unsigned pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                const u16* vr = Vt + (dt * 8 + g) * VLD + kk * 16 + tig * 2;
                const unsigned b0 = *reinterpret_cast<const unsigned*>(vr);
                const unsigned b1 = *reinterpret_cast<const unsigned*>(vr + 8);
                mma16816<T>(o[dt], pa, b0, b1);
            }
        }
    }

#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, x);
        l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const unsigned c = dt * 8 + tig * 2;
        if (r0 < len) {
            T* dst = out + (size_t)(start + r0) * hidden + (size_t)h * D + c;
            dst[0] = from_f<T>(o[dt][0] * i0);
            dst[1] = from_f<T>(o[dt][1] * i0);
        }
        if (r1 < len) {
            T* dst = out + (size_t)(start + r1) * hidden + (size_t)h * D + c;
            dst[0] = from_f<T>(o[dt][2] * i1);
            dst[1] = from_f<T>(o[dt][3] * i1);
        }
    }
}

#define TC_KERNEL(T, S, D)                                                                                    \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) tc_attn_##S##_d##D(                          \
        const T* __restrict__ qkv, const float* __restrict__ bias, const unsigned* __restrict__ offsets,      \
        T* __restrict__ out, unsigned tokens, unsigned max_len, unsigned heads, float scale) {                \
        tc_attn<T, D>(qkv, bias, offsets, out, tokens, max_len, heads, scale);                                \
    }
TC_KERNEL(f16, f16, 32)
TC_KERNEL(f16, f16, 64)
TC_KERNEL(bf16, bf16, 32)
TC_KERNEL(bf16, bf16, 64)

// ---------------------------------------------------------------------------
// Tensor-core flash attention v2 for 16-bit data (f16 / bf16), head_dim D in {32, 64}
// (`tc2_attn_{T}_d{D}`, the default; `tc_attn` above stays as v1). Same signature,
// contract and numerics as `tc_attn` (f32 accumulation, f32 online softmax, P rounded
// to T for the P·V mma, output rounded to T), laid out for bandwidth:
//   * one block per (128-query tile, head, sequence), TC2_WARPS = 8 warps of 16 queries;
//   * Q, K and V rows move as 16-byte cp.async copies (global -> shared, no register
//     staging) into padded shared rows of D + 8 halves (conflict-free ldmatrix);
//   * K and V in 64-key tiles, two stages (the next tile loads while this one
//     computes); the Q tile first lands in stage 1, is read into registers with
//     ldmatrix, then stage 1 takes key tile 1; a tile is consumed in 32-key softmax
//     steps (fewer live scores: 80 registers a thread for D = 32, 3 blocks an SM);
//   * B fragments of K via ldmatrix, of V via ldmatrix.trans (V stays [key][d]);
//   * exp2 with log2(e) folded into the scale (ex2.approx.ftz: |rel err| < 2^-22);
//   * the output tile goes through shared memory to 16-byte global stores.
// Needs qkv and out 16-byte aligned (the host checks; hidden = heads * D is a
// multiple of 8, so every row and head offset is too). Keys past the sequence are
// masked (their K and V rows are zero-filled), rows past it are neither loaded nor
// written; sequences are clamped to [0, tokens) and to max_len as everywhere.

#define TC2_WARPS 8
#define TC2_BQ (TC2_WARPS * 16)
#define TC2_BK 64
#define TC2_SK 32
// Blocks per SM the register budget allows: 80 registers a thread for D = 32 (no
// spills with ptxas 13), 128 for D = 64.
#define TC2_MIN_BLOCKS(D) ((D) == 32 ? 3 : 2)

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most one committed group of this thread is pending.
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

__device__ __forceinline__ float ex2f(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// 8 T values in shared memory += 8 f32 biases, rounded back to T.
template <class T>
__device__ __forceinline__ void add_bias8(u16* p, const float* __restrict__ bias) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        T lo, hi;
        lo.b = (u16)(w[i] & 0xffffu);
        hi.b = (u16)(w[i] >> 16);
        w[i] = pack2<T>(__fadd_rn(to_f(lo), bias[2 * i]), __fadd_rn(to_f(hi), bias[2 * i + 1]));
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

template <class T, int D>
__device__ __forceinline__ void tc2_attn(const T* __restrict__ qkv, const float* __restrict__ bias,
                                         const unsigned* __restrict__ offsets, T* __restrict__ out,
                                         unsigned tokens, unsigned max_len, unsigned heads, float scale) {
    constexpr unsigned BQ = TC2_BQ, BK = TC2_BK, SK = TC2_SK, NT = TC2_WARPS * 32;
    constexpr unsigned LD = D + 8;           // halves per shared row
    constexpr unsigned CH = D / 8;           // 16-byte chunks per row
    constexpr unsigned STAGE = 2 * BK * LD;  // halves per stage: BK K rows, then BK V rows
    static_assert(STAGE == BQ * LD, "the Q tile fills one stage exactly");
    static_assert(D == 32 || D == 64, "D is 32 or 64");
    constexpr unsigned Q_PER_THREAD = BQ * CH / NT, KV_PER_THREAD = 2 * BK * CH / NT;
    static_assert(Q_PER_THREAD * NT == BQ * CH && KV_PER_THREAD * NT == 2 * BK * CH, "whole chunks a thread");
    __shared__ __align__(16) u16 sm[2 * STAGE];
    const unsigned b = blockIdx.z, h = blockIdx.y;
    unsigned start, len;
    fseq_range(offsets, b, tokens, &start, &len);
    len = min(len, max_len);
    const unsigned q0 = blockIdx.x * BQ;
    if (q0 >= len) return;  // uniform over the block
    const unsigned tid = threadIdx.x, warp = tid >> 5, lane = tid & 31u;
    const unsigned g = lane >> 2, tig = lane & 3u;
    const unsigned hidden = heads * D;
    const size_t rs = 3 * (size_t)hidden;
    // Row 0 of the sequence, head h: q at +0, k at +hidden, v at +2 * hidden.
    const T* base = qkv + (size_t)start * rs + (size_t)h * D;
    const unsigned nq = min(BQ, len - q0);  // query rows of this block
    const unsigned ntiles = (len - 1) / BK + 1;

    // Stage s: K rows [s * STAGE, + BK * LD), V rows after them.
    auto load_kv = [&](unsigned tile, u16* st) {
        const unsigned k0 = tile * BK, kn = min(BK, len - k0);
#pragma unroll
        for (unsigned n = 0; n < KV_PER_THREAD; n++) {
            const unsigned i = tid + n * NT;
            const unsigned r = i / CH, c = (i % CH) * 8;  // r < BK: K row r, else V row r - BK
            const unsigned part = r / BK, j = r % BK;
            u16* dst = st + r * LD + c;
            if (j < kn)
                cp_async16(dst, base + (size_t)(k0 + j) * rs + (part + 1) * hidden + c);
            else
                *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
        }
    };
    // The bias of the chunks this thread copied (visible to it after the wait).
    auto bias_kv = [&](unsigned tile, u16* st) {
        const unsigned k0 = tile * BK, kn = min(BK, len - k0);
#pragma unroll
        for (unsigned n = 0; n < KV_PER_THREAD; n++) {
            const unsigned i = tid + n * NT;
            const unsigned r = i / CH, c = (i % CH) * 8;
            const unsigned part = r / BK, j = r % BK;
            if (j < kn) add_bias8<T>(st + r * LD + c, bias + (part + 1) * hidden + h * D + c);
        }
    };

    // Q tile -> stage 1 (rows past the sequence zeroed), key tile 0 -> stage 0.
    u16* qs = sm + STAGE;
#pragma unroll
    for (unsigned n = 0; n < Q_PER_THREAD; n++) {
        const unsigned i = tid + n * NT;
        const unsigned r = i / CH, c = (i % CH) * 8;
        u16* dst = qs + r * LD + c;
        if (r < nq)
            cp_async16(dst, base + (size_t)(q0 + r) * rs + c);
        else
            *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
    cp_async_commit();
    load_kv(0, sm);
    cp_async_commit();
    cp_async_wait1();  // the Q group is done
    if (bias) {
#pragma unroll
        for (unsigned n = 0; n < Q_PER_THREAD; n++) {
            const unsigned i = tid + n * NT;
            const unsigned r = i / CH, c = (i % CH) * 8;
            if (r < nq) add_bias8<T>(qs + r * LD + c, bias + h * D + c);
        }
    }
    __syncthreads();
    // Q A fragments (16 × 16 per k step): matrices rows 0-7 / 8-15 × cols 0-7 / 8-15.
    unsigned qa[D / 16][4];
    {
        const u16* p = qs + (warp * 16 + (lane & 7u) + ((lane >> 3) & 1u) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) ldsm_x4(qa[ks], p + ks * 16);
    }
    __syncthreads();  // every warp has its Q: stage 1 is free
    if (ntiles > 1) load_kv(1, sm + STAGE);
    cp_async_commit();

    // Warps whose 16 rows all lie past the sequence only help load.
    const bool active = q0 + warp * 16 < len;
    const float sl2 = scale * 1.44269504088896340736f;  // scores in log2 units
    float m0 = -__int_as_float(0x7f800000), m1 = m0;     // running max (log2 units), rows g, g + 8
    float l0 = 0.0f, l1 = 0.0f;                          // this lane's share of the row sums
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[dt][e] = 0.0f;

    for (unsigned it = 0; it < ntiles; it++) {
        u16* st = sm + (it & 1u) * STAGE;
        const unsigned kn = min(BK, len - it * BK);
        cp_async_wait1();  // this tile's group is done (the newest may still fly)
        if (bias) bias_kv(it, st);
        __syncthreads();
        if (active) {
            // The tile in steps of SK keys (online softmax per step; steps past the
            // tile's keys are skipped).
#pragma unroll
            for (int sub = 0; sub < (int)(BK / SK); sub++) {
                const unsigned kb = sub * SK;
                if (kb >= kn) break;  // uniform
                const unsigned skn = min(SK, kn - kb);  // keys of this step, >= 1
                const u16* ksm = st + kb * LD;
                const u16* vsm = st + (BK + kb) * LD;
                // S = Q · Kᵀ over 8-key tiles; ldmatrix x4 gives b0, b1 of two k steps.
                float s[SK / 8][4];
#pragma unroll
                for (int nt = 0; nt < (int)(SK / 8); nt++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
                    if (nt * 8u < skn) {
#pragma unroll
                        for (int kp = 0; kp < D / 32; kp++) {
                            unsigned kf[4];
                            ldsm_x4(kf, ksm + (nt * 8 + (lane & 7u)) * LD + kp * 32 + (lane >> 3) * 8);
                            mma16816<T>(s[nt], qa[2 * kp], kf[0], kf[1]);
                            mma16816<T>(s[nt], qa[2 * kp + 1], kf[2], kf[3]);
                        }
                    }
                }
                float mt0 = -__int_as_float(0x7f800000), mt1 = mt0;
#pragma unroll
                for (int nt = 0; nt < (int)(SK / 8); nt++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const unsigned key = nt * 8 + tig * 2 + (e & 1);
                        s[nt][e] = key < skn ? s[nt][e] * sl2 : -__int_as_float(0x7f800000);
                    }
                    mt0 = fmaxf(mt0, fmaxf(s[nt][0], s[nt][1]));
                    mt1 = fmaxf(mt1, fmaxf(s[nt][2], s[nt][3]));
                }
#pragma unroll
                for (int x = 1; x <= 2; x <<= 1) {
                    mt0 = fmaxf(mt0, __shfl_xor_sync(0xffffffffu, mt0, x));
                    mt1 = fmaxf(mt1, __shfl_xor_sync(0xffffffffu, mt1, x));
                }
                const float mn0 = fmaxf(m0, mt0), mn1 = fmaxf(m1, mt1);  // finite: skn >= 1
                const float a0 = ex2f(m0 - mn0), a1 = ex2f(m1 - mn1);    // 0 on the first step
                m0 = mn0;
                m1 = mn1;
                // P rounded to T, packed as the A fragments of P · V: for 16-key step kk,
                // {p[2kk][0], p[2kk][1], p[2kk+1][0], p[2kk+1][1]} (the m16n8 C fragment
                // of two adjacent 8-key tiles is the A fragment of one k16 step).
                unsigned p[SK / 8][2];
                float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
                for (int nt = 0; nt < (int)(SK / 8); nt++) {
                    const float e0 = ex2f(s[nt][0] - mn0), e1 = ex2f(s[nt][1] - mn0);  // 0 if masked
                    const float e2 = ex2f(s[nt][2] - mn1), e3 = ex2f(s[nt][3] - mn1);
                    ls0 += e0 + e1;
                    ls1 += e2 + e3;
                    p[nt][0] = pack2<T>(e0, e1);
                    p[nt][1] = pack2<T>(e2, e3);
                }
                l0 = l0 * a0 + ls0;
                l1 = l1 * a1 + ls1;
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++) {
                    o[dt][0] *= a0;
                    o[dt][1] *= a0;
                    o[dt][2] *= a1;
                    o[dt][3] *= a1;
                }
                // O += P · V per 16 keys (16-key steps past the keys hold P = 0 and are
                // skipped); ldmatrix.trans x4 gives b0, b1 of two 8-column tiles of V.
#pragma unroll
                for (int kk = 0; kk < (int)(SK / 16); kk++) {
                    if (kk * 16u < skn) {
                        const unsigned pa[4] = {p[2 * kk][0], p[2 * kk][1], p[2 * kk + 1][0], p[2 * kk + 1][1]};
#pragma unroll
                        for (int dp = 0; dp < D / 16; dp++) {
                            unsigned vf[4];
                            ldsm_x4_t(vf, vsm + (kk * 16 + (lane & 7u) + ((lane >> 3) & 1u) * 8) * LD + dp * 16 +
                                              (lane >> 4) * 8);
                            mma16816<T>(o[2 * dp], pa, vf[0], vf[1]);
                            mma16816<T>(o[2 * dp + 1], pa, vf[2], vf[3]);
                        }
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this stage
        if (it + 2 < ntiles) load_kv(it + 2, st);
        cp_async_commit();
    }

    if (!active) return;
    // No copy is in flight (the newest groups are empty) and the last barrier above
    // ended every read of the stages: this warp's 16 rows of stage 0 take its output.
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, x);
        l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    u16* os = sm + warp * 16 * LD;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const unsigned c = dt * 8 + tig * 2;
        *reinterpret_cast<unsigned*>(os + g * LD + c) = pack2<T>(o[dt][0] * i0, o[dt][1] * i0);
        *reinterpret_cast<unsigned*>(os + (g + 8) * LD + c) = pack2<T>(o[dt][2] * i1, o[dt][3] * i1);
    }
    __syncwarp();
#pragma unroll
    for (unsigned n = 0; n < CH / 2; n++) {
        const unsigned i = lane + n * 32;  // 16 rows × CH chunks
        const unsigned r = i / CH, c = (i % CH) * 8;
        const unsigned q = q0 + warp * 16 + r;
        if (q < len)
            *reinterpret_cast<uint4*>(out + (size_t)(start + q) * hidden + (size_t)h * D + c) =
                *reinterpret_cast<const uint4*>(os + r * LD + c);
    }
}

#define TC2_KERNEL(T, S, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(TC2_WARPS * 32, TC2_MIN_BLOCKS(D))                           \
        tc2_attn_##S##_d##D(                                                                                  \
        const T* __restrict__ qkv, const float* __restrict__ bias, const unsigned* __restrict__ offsets,      \
        T* __restrict__ out, unsigned tokens, unsigned max_len, unsigned heads, float scale) {                \
        tc2_attn<T, D>(qkv, bias, offsets, out, tokens, max_len, heads, scale);                               \
    }
TC2_KERNEL(f16, f16, 32)
TC2_KERNEL(f16, f16, 64)
TC2_KERNEL(bf16, bf16, 32)
TC2_KERNEL(bf16, bf16, 64)

// ---------------------------------------------------------------------------
// Mean pooling over each sequence's rows; out f32
// [batch, dim]. Block (b, c) pools columns [32c, 32c + 32) of sequence b with
// FPOOL_GROUPS warps: lane x owns a column, warp y sums rows y, y + GROUPS, ...
// in f64 (each row's 32 columns one coalesced load), then warp 0 adds the
// groups' partial sums in group order (a fixed order: the same bits on every
// run). Many blocks even at batch 1, where one block per sequence left 1 of the
// GPU's 132 SMs to walk 128 rows. As `cpu::mean_pool`: count clamped to 1e-9,
// out = (float)(sum / count) (the f64 sum in another order than the host's,
// within rounding of f32's). An empty sequence gives zeros. (The encoder
// L2-normalizes on the host, after the copy, unless the caller asked for the
// raw mean.)

#define FPOOL_GROUPS 16

template <class T>
__device__ __forceinline__ void fpool(const T* __restrict__ hidden, const unsigned* __restrict__ offsets,
                                      float* __restrict__ out, unsigned tokens, unsigned dim) {
    __shared__ double part[FPOOL_GROUPS][32];
    const unsigned b = blockIdx.x, x = threadIdx.x & 31, y = threadIdx.x >> 5;
    const unsigned i = blockIdx.y * 32 + x;
    unsigned start, len;
    fseq_range(offsets, b, tokens, &start, &len);
    const T* hb = hidden + (size_t)start * dim;
    double acc = 0.0;
    if (i < dim)
        for (unsigned s = y; s < len; s += FPOOL_GROUPS) acc += (double)to_f(hb[(size_t)s * dim + i]);
    part[y][x] = acc;
    __syncthreads();
    if (y == 0 && i < dim) {
        double sum = 0.0;
        for (unsigned g = 0; g < FPOOL_GROUPS; g++) sum += part[g][x];
        const double count = (double)len;
        out[(size_t)b * dim + i] = (float)(sum / (count > 1e-9 ? count : 1e-9));
    }
}

#define FPOOL_KERNEL(T, S)                                                                                    \
    extern "C" __global__ void pool_mean_##S(const T* __restrict__ hidden, const unsigned* __restrict__ offsets, \
                                             float* __restrict__ out, unsigned tokens, unsigned dim) {        \
        fpool<T>(hidden, offsets, out, tokens, dim);                                                          \
    }
FPOOL_KERNEL(float, f32)
FPOOL_KERNEL(f16, f16)
FPOOL_KERNEL(bf16, bf16)

// ---------------------------------------------------------------------------
// Dtype conversion (weights at upload, test inputs): out[i] = To(in[i]).

#define FCVT_KERNEL(TI, SI, TO, SO)                                                                           \
    extern "C" __global__ void convert_##SI##_##SO(const TI* __restrict__ in, TO* __restrict__ out,          \
                                                   unsigned n) {                                              \
        for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)          \
            out[i] = from_f<TO>(to_f(in[i]));                                                                 \
    }
FCVT_KERNEL(float, f32, f16, f16)
FCVT_KERNEL(float, f32, bf16, bf16)
FCVT_KERNEL(f16, f16, float, f32)
FCVT_KERNEL(bf16, bf16, float, f32)
