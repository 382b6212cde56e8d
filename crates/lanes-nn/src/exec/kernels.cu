// The fused ops of a BERT forward on CUDA (NVRTC source of `exec::cuda`).
//
// Numerics follow `crate::cpu` (the reference forward): fp32 data; LayerNorm
// statistics, softmax sums, and mean pooling accumulated in f64; the
// exact (erfc) GELU evaluated in f64; products that the CPU rounds before an add
// are written with __fmul_rn/__fadd_rn so that NVRTC's default FMA contraction
// cannot fuse them. Compiled without --use_fast_math.
//
// Layouts: the batch is packed: activations row-major [tokens, dim], the
// sequences back to back; offsets (u32 [batch + 1]) mark where each starts and
// ends. The fused projection qkv is [tokens, 3 * hidden] (q, k, v side by side,
// head h in columns h * head_dim ..).
//
// Memory safety does not depend on the values of ids or offsets: every kernel
// clamps them (a sequence to [0, tokens) and to max_len, an id to its table), so
// bad values give wrong numbers, never an access outside a buffer.

// Sequence b's token range [*start, *end), clamped to [0, tokens].
__device__ __forceinline__ void seq_range(const unsigned* __restrict__ offsets, unsigned b, unsigned tokens,
                                          unsigned* start, unsigned* end) {
    unsigned s = min(offsets[b], tokens);
    unsigned e = min(max(offsets[b + 1], s), tokens);
    *start = s;
    *end = e;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// 0.5 * x * erfc(-x / sqrt(2)) in f64, as `cpu::gelu`.
__device__ __forceinline__ float gelu_exact(float x) {
    double xd = (double)x;
    return (float)(0.5 * xd * erfc(-xd * 0.70710678118654752440));
}

// The same GELU through f32 erfcf (a few ulp from the f64 one): the
// standalone epilogue over big GEMM outputs (`bias_act*`), where the f64 erfc
// cost a third of the up projection's time at batch 512 on the H200.
__device__ __forceinline__ float gelu_f32(float x) {
    return __fmul_rn(__fmul_rn(0.5f, x), erfcf(__fmul_rn(-x, 0.70710678118654752440f)));
}

// ---------------------------------------------------------------------------
// LayerNorm, one warp per row; the row lives in registers (V values per lane,
// dim <= 32 * V). Statistics in f64 as `cpu::layer_norm_inplace`:
// out = (float)((x - mean) * rstd) * gamma + beta, the last two ops rounded
// separately.

#define LN_WARPS 4

template <int V>
__device__ __forceinline__ void ln_finish(float (&v)[V], unsigned dim, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float eps, float* __restrict__ out) {
    const unsigned lane = threadIdx.x & 31u;
    double s = 0.0;
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) s += (double)v[t];
    }
    const double mean = warp_sum_d(s) / (double)dim;
    double q = 0.0;
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) {
            double d = (double)v[t] - mean;
            q += d * d;
        }
    }
    const double var = warp_sum_d(q) / (double)dim;
    const double rstd = 1.0 / sqrt(var + (double)eps);
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        if (i < dim) {
            float y = (float)(((double)v[t] - mean) * rstd);
            out[i] = __fadd_rn(__fmul_rn(y, gamma[i]), beta[i]);
        }
    }
}

// out[r] = LayerNorm(x[r] + res[r]).
template <int V>
__device__ __forceinline__ void add_ln_impl(const float* __restrict__ x, const float* __restrict__ res,
                                            const float* __restrict__ gamma, const float* __restrict__ beta,
                                            float* __restrict__ out, unsigned rows, unsigned dim, float eps) {
    const unsigned row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31u;
    const size_t base = (size_t)row * dim;
    float v[V];
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        v[t] = i < dim ? __fadd_rn(x[base + i], res[base + i]) : 0.0f;
    }
    ln_finish<V>(v, dim, gamma, beta, eps, out + base);
}

// out[r] = LayerNorm((word[ids[r]] + token_type[types[r]]) + position[p]) where p
// is r's index within its sequence (found by binary search in offsets). tables:
// vocab, max_pos, type_vocab rows (each >= 1); out-of-range values are clamped.
template <int V>
__device__ __forceinline__ void embed_ln_impl(const unsigned* __restrict__ ids, const unsigned* __restrict__ types,
                                              const unsigned* __restrict__ offsets, unsigned batch,
                                              const float* __restrict__ word, const float* __restrict__ position,
                                              const float* __restrict__ token_type,
                                              const float* __restrict__ gamma, const float* __restrict__ beta,
                                              float* __restrict__ out, unsigned rows, unsigned dim, float eps,
                                              unsigned vocab, unsigned max_pos, unsigned type_vocab) {
    const unsigned row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31u;
    // The last sequence b with offsets[b] <= row.
    unsigned lo = 0, hi = batch;  // answer in [lo, hi)
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) >> 1;
        if (offsets[mid] <= row) lo = mid; else hi = mid;
    }
    const unsigned first = offsets[lo];
    const unsigned pos = min(row >= first ? row - first : 0u, max_pos - 1);
    const unsigned id = min(ids[row], vocab - 1);
    const unsigned ty = min(types[row], type_vocab - 1);
    const float* w = word + (size_t)id * dim;
    const float* tt = token_type + (size_t)ty * dim;
    const float* p = position + (size_t)pos * dim;
    float v[V];
#pragma unroll
    for (int t = 0; t < V; t++) {
        unsigned i = lane + 32u * t;
        v[t] = i < dim ? __fadd_rn(__fadd_rn(w[i], tt[i]), p[i]) : 0.0f;
    }
    ln_finish<V>(v, dim, gamma, beta, eps, out + (size_t)row * dim);
}

#define LN_KERNELS(V)                                                                                          \
    extern "C" __global__ void __launch_bounds__(LN_WARPS * 32) add_ln_##V(                                  \
        const float* __restrict__ x, const float* __restrict__ res, const float* __restrict__ gamma,          \
        const float* __restrict__ beta, float* __restrict__ out, unsigned rows, unsigned dim, float eps) {     \
        add_ln_impl<V>(x, res, gamma, beta, out, rows, dim, eps);                                              \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(LN_WARPS * 32) embed_ln_##V(                                \
        const unsigned* __restrict__ ids, const unsigned* __restrict__ types,                                 \
        const unsigned* __restrict__ offsets, unsigned batch, const float* __restrict__ word,                 \
        const float* __restrict__ position, const float* __restrict__ token_type,                             \
        const float* __restrict__ gamma, const float* __restrict__ beta, float* __restrict__ out,             \
        unsigned rows, unsigned dim, float eps, unsigned vocab, unsigned max_pos, unsigned type_vocab) {       \
        embed_ln_impl<V>(ids, types, offsets, batch, word, position, token_type, gamma, beta, out, rows, dim,  \
                         eps, vocab, max_pos, type_vocab);                                                     \
    }

// dim <= 128, <= 384 (MiniLM), <= 1024 (BERT-large).
LN_KERNELS(4)
LN_KERNELS(12)
LN_KERNELS(32)

// ---------------------------------------------------------------------------
// Linear epilogue: out[r, j] += bias[j] (nothing when bias is null), then
// optionally the erf GELU in f32 (`gelu_f32`).
// `out` holds x · wᵀ (cuBLAS). n4 = n / 4 when vectorized (n % 4 == 0, 16-byte
// aligned buffers), total = rows * n (or rows * n4) < 2^31.

extern "C" __global__ void bias_act(float* __restrict__ out, const float* __restrict__ bias, unsigned total,
                                    unsigned n, int gelu) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        float v = bias ? __fadd_rn(out[i], bias[i % n]) : out[i];
        out[i] = gelu ? gelu_f32(v) : v;
    }
}

extern "C" __global__ void bias_act4(float4* __restrict__ out, const float4* __restrict__ bias, unsigned total4,
                                     unsigned n4, int gelu) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total4; i += gridDim.x * blockDim.x) {
        float4 v = out[i];
        if (bias) {
            const float4 b = bias[i % n4];
            v.x = __fadd_rn(v.x, b.x);
            v.y = __fadd_rn(v.y, b.y);
            v.z = __fadd_rn(v.z, b.z);
            v.w = __fadd_rn(v.w, b.w);
        }
        if (gelu) {
            v.x = gelu_f32(v.x);
            v.y = gelu_f32(v.y);
            v.z = gelu_f32(v.z);
            v.w = gelu_f32(v.w);
        }
        out[i] = v;
    }
}

// ---------------------------------------------------------------------------
// Linear as one kernel: out[m, n] = act(Σ_k x[m, k] · w[n, k] + bias[n]) with
// x [M, K] and w [N, K] row-major (both K-contiguous). Tiles of GM × GN outputs,
// GK-deep slices of K through shared memory; 256 threads, each a 4 × 4 block of
// outputs, accumulated in f32 in k order. Split-K: blockIdx.z takes the k range
// [z * kchunk, (z + 1) * kchunk) and, when gridDim.z > 1, writes its partial sums
// to ws [gridDim.z, M, N] for `splitk_reduce` (fixed order: deterministic).

#define GM 64
#define GN 64
#define GK 16
#define GPAD 4

extern "C" __global__ void __launch_bounds__(256)
    linear_tn(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
              float* __restrict__ out, float* __restrict__ ws, unsigned M, unsigned N, unsigned K, unsigned kchunk,
              int gelu) {
    __shared__ __align__(16) float Xs[GK][GM + GPAD];
    __shared__ __align__(16) float Ws[GK][GN + GPAD];
    const unsigned tx = threadIdx.x & 15u, ty = threadIdx.x >> 4;
    const unsigned m0 = blockIdx.y * GM, n0 = blockIdx.x * GN;
    const unsigned kbeg = blockIdx.z * kchunk;
    const unsigned kend = min(K, kbeg + kchunk);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (unsigned k0 = kbeg; k0 < kend; k0 += GK) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const unsigned idx = threadIdx.x + 256u * e;
            const unsigned r = idx >> 4, kk = idx & 15u;
            const unsigned k = k0 + kk;
            const unsigned m = m0 + r, n = n0 + r;
            Xs[kk][r] = (m < M && k < kend) ? x[(size_t)m * K + k] : 0.0f;
            Ws[kk][r] = (n < N && k < kend) ? w[(size_t)n * K + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GK; kk++) {
            const float4 a = *reinterpret_cast<const float4*>(&Xs[kk][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Ws[kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w};
            const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }

    const bool split = gridDim.z > 1;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const unsigned m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const unsigned n = n0 + tx * 4 + j;
            if (n >= N) continue;
            if (split) {
                ws[((size_t)blockIdx.z * M + m) * N + n] = acc[i][j];
            } else {
                const float v = __fadd_rn(acc[i][j], bias[n]);
                out[(size_t)m * N + n] = gelu ? gelu_exact(v) : v;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Linear for few rows (a batch-1 forward's 128), latency first: out[m, n] =
// act(Σ_k x[m, k] · w[n, k] + bias[n]) in one kernel, no split-K pass. One block
// per TM × 32 output tile (TM 32, or 16 when 32-row tiles would leave SMs idle);
// its SL_WARPS warps split K into runs (warp v takes the v-th run of K / 4 /
// SL_WARPS float4 columns) and walk them SL_KC deep: each chunk of x and w rows
// is loaded with 16-byte loads (the next chunk's loads issued before this one is
// computed), stored k-major into the warp's own shared memory, and every lane
// accumulates an RM × RN block of the tile in f32 in k order. Then the warps'
// partial tiles meet in shared memory and are summed in warp order (fixed: the
// same bits every run), the bias added and the erf GELU (`gelu_f32`) applied.
// Needs K % 4 == 0 and 16-byte aligned x and w (the host checks); rows past M
// and columns past N are read as zeros and not stored.

#define SL_WARPS 8
#define SL_TN 32
#define SL_KC 16

template <int TM>
__device__ __forceinline__ void small_linear_t(const float* __restrict__ x, const float* __restrict__ w,
                                               const float* __restrict__ bias, float* __restrict__ out,
                                               unsigned M, unsigned N, unsigned K, int gelu) {
    constexpr int RM = 4, RN = TM == 32 ? 8 : 4;  // a lane's outputs: RM rows x RN columns
    constexpr int LANES_N = SL_TN / RN;            // lanes along n
    constexpr int XS = TM + 4, WS = SL_TN + 4;     // k-major row strides (16-byte multiples)
    constexpr int STAGE = SL_KC * (XS + WS);       // a warp's staging floats
    constexpr int PART = TM * (SL_TN + 1);         // a warp's partial tile
    constexpr int Q = SL_KC / 4;                   // float4 columns a chunk
    constexpr int XL = TM * Q / 32, WL = SL_TN * Q / 32;  // float4s a lane loads a chunk
    static_assert((TM / RM) * LANES_N == 32 && XL >= 1 && WL >= 1, "one warp covers the tile");
    __shared__ __align__(16) float sm[SL_WARPS * (STAGE > PART ? STAGE : PART)];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned m0 = blockIdx.y * TM, n0 = blockIdx.x * SL_TN;
    const unsigned mi = (lane / LANES_N) * RM, ni = (lane % LANES_N) * RN;
    const unsigned k4s = K / 4, per = (k4s + SL_WARPS - 1) / SL_WARPS;
    const unsigned kb = min(k4s, warp * per), ke = min(k4s, kb + per);  // float4 columns
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float* xs = sm + warp * STAGE;  // [SL_KC][XS]
    float* wsm = xs + SL_KC * XS;   // [SL_KC][WS]
    float acc[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int j = 0; j < RN; j++) acc[i][j] = 0.0f;
    float4 xr[XL], wr[WL];
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
#define SL_LOAD(c0)                                                                   \
    do {                                                                              \
        _Pragma("unroll") for (int e = 0; e < XL; e++) {                              \
            const unsigned idx = lane + 32u * e, r = idx / Q, kq = (c0) + idx % Q;    \
            xr[e] = (m0 + r < M && kq < ke) ? x4[(size_t)(m0 + r) * k4s + kq] : zero; \
        }                                                                             \
        _Pragma("unroll") for (int e = 0; e < WL; e++) {                              \
            const unsigned idx = lane + 32u * e, r = idx / Q, kq = (c0) + idx % Q;    \
            wr[e] = (n0 + r < N && kq < ke) ? w4[(size_t)(n0 + r) * k4s + kq] : zero; \
        }                                                                             \
    } while (0)
    if (kb < ke) SL_LOAD(kb);
    for (unsigned c0 = kb; c0 < ke; c0 += Q) {
        __syncwarp();  // the previous chunk is no longer read
#pragma unroll
        for (int e = 0; e < XL; e++) {
            const unsigned idx = lane + 32u * e, r = idx / Q, k = 4 * (idx % Q);
            xs[(k + 0) * XS + r] = xr[e].x;
            xs[(k + 1) * XS + r] = xr[e].y;
            xs[(k + 2) * XS + r] = xr[e].z;
            xs[(k + 3) * XS + r] = xr[e].w;
        }
#pragma unroll
        for (int e = 0; e < WL; e++) {
            const unsigned idx = lane + 32u * e, r = idx / Q, k = 4 * (idx % Q);
            wsm[(k + 0) * WS + r] = wr[e].x;
            wsm[(k + 1) * WS + r] = wr[e].y;
            wsm[(k + 2) * WS + r] = wr[e].z;
            wsm[(k + 3) * WS + r] = wr[e].w;
        }
        __syncwarp();
        if (c0 + Q < ke) SL_LOAD(c0 + Q);  // in flight while this chunk is computed
#pragma unroll
        for (int k = 0; k < SL_KC; k++) {
            const float4 a = *reinterpret_cast<const float4*>(xs + k * XS + mi);
            float b[RN];
#pragma unroll
            for (int j = 0; j < RN; j += 4) {
                const float4 v = *reinterpret_cast<const float4*>(wsm + k * WS + ni + j);
                b[j] = v.x, b[j + 1] = v.y, b[j + 2] = v.z, b[j + 3] = v.w;
            }
            const float av[RM] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int i = 0; i < RM; i++)
#pragma unroll
                for (int j = 0; j < RN; j++) acc[i][j] = fmaf(av[i], b[j], acc[i][j]);
        }
    }
#undef SL_LOAD
    __syncthreads();  // every warp is done with its staging memory
    float* part = sm + warp * PART;
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int j = 0; j < RN; j++) part[(mi + i) * (SL_TN + 1) + ni + j] = acc[i][j];
    __syncthreads();
    for (unsigned o = threadIdx.x; o < TM * SL_TN; o += SL_WARPS * 32) {
        const unsigned r = o / SL_TN, c = o % SL_TN;
        const unsigned m = m0 + r, n = n0 + c;
        if (m >= M || n >= N) continue;
        float sum = sm[r * (SL_TN + 1) + c];
#pragma unroll
        for (int v = 1; v < SL_WARPS; v++) sum = __fadd_rn(sum, sm[v * PART + r * (SL_TN + 1) + c]);
        const float val = __fadd_rn(sum, bias[n]);
        out[(size_t)m * N + n] = gelu ? gelu_f32(val) : val;
    }
}

#define SL_KERNEL(TM)                                                                                         \
    extern "C" __global__ void __launch_bounds__(SL_WARPS * 32, 2)                                            \
        small_linear_m##TM(const float* __restrict__ x, const float* __restrict__ w,                          \
                           const float* __restrict__ bias, float* __restrict__ out, unsigned M, unsigned N,   \
                           unsigned K, int gelu) {                                                            \
        small_linear_t<TM>(x, w, bias, out, M, N, K, gelu);                                                   \
    }
SL_KERNEL(32)
SL_KERNEL(16)

// out[i] = act(Σ_s ws[s, i] + bias[i % N]), the splits summed in order; total = M * N.
extern "C" __global__ void splitk_reduce(const float* __restrict__ ws, const float* __restrict__ bias,
                                         float* __restrict__ out, unsigned total, unsigned N, unsigned splits,
                                         int gelu) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        float s = ws[i];
        for (unsigned z = 1; z < splits; z++) s = __fadd_rn(s, ws[(size_t)z * total + i]);
        const float v = __fadd_rn(s, bias[i % N]);
        out[i] = gelu ? gelu_exact(v) : v;
    }
}

// ---------------------------------------------------------------------------
// Multi-head attention within each packed sequence straight from the fused
// projection, one block per (query tile, head, sequence): ATT_WARPS warps, each
// owning Q query rows of the tile. The grid is sized for max_len (a sequence is
// clamped to it); tiles past a sequence's end return at once. Dynamic shared
// memory:
//   Qs [qb][D]        the tile's queries (qb = Q * ATT_WARPS)
//   S  [qb][max_len]  score rows, then probabilities
//   T  [ATT_KT][D+1]  a tile of keys, then of values (padded: conflict-free)
// Scores: s = scale * (q · k) rounded (as `cpu::attention`); softmax subtracts
// the row max, f32 exp, f64 sum, p = e * (float)(1 / sum); context = Σ_j p_j v_j.
// head_dim D <= 32 * C.

#define ATT_WARPS 4
#define ATT_KT 64

// Q: query rows per warp; C: head_dim <= 32 * C.
template <int Q, int C>
__device__ __forceinline__ void attention_impl(const float* __restrict__ qkv, const unsigned* __restrict__ offsets,
                                               float* __restrict__ out, unsigned tokens, unsigned max_len,
                                               unsigned heads, unsigned D, float scale) {
    extern __shared__ float smem[];
    const unsigned qb = Q * ATT_WARPS;
    const unsigned hidden = heads * D;
    const unsigned b = blockIdx.z, h = blockIdx.y;
    const unsigned q0 = blockIdx.x * qb;
    unsigned start, end;
    seq_range(offsets, b, tokens, &start, &end);
    const unsigned seq = min(end - start, max_len);  // S rows hold max_len scores
    if (q0 >= seq) return;  // uniform over the block: before any barrier
    const unsigned warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const unsigned ld = D + 1;
    float* Qs = smem;
    float* S = Qs + qb * D;
    float* T = S + (size_t)qb * max_len;
    const size_t row_stride = 3 * (size_t)hidden;
    const float* qbase = qkv + (size_t)start * row_stride + (size_t)h * D;
    const float* kbase = qbase + hidden;
    const float* vbase = qbase + 2 * (size_t)hidden;
    const unsigned my0 = warp * Q;  // this warp's first query within the tile

    for (unsigned idx = threadIdx.x; idx < qb * D; idx += blockDim.x) {
        unsigned qi = idx / D, c = idx - qi * D;
        unsigned q = q0 + qi;
        Qs[idx] = q < seq ? qbase[(size_t)q * row_stride + c] : 0.0f;
    }

    // Scores: lane j of the warp takes keys j, j + 32 of each tile.
    for (unsigned k0 = 0; k0 < seq; k0 += ATT_KT) {
        const unsigned kn = min((unsigned)ATT_KT, seq - k0);
        __syncthreads();
        for (unsigned idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
            unsigned j = idx / D, c = idx - j * D;
            T[j * ld + c] = kbase[(size_t)(k0 + j) * row_stride + c];
        }
        __syncthreads();
        for (unsigned j = lane; j < kn; j += 32) {
            float acc[Q];
#pragma unroll
            for (int qi = 0; qi < Q; qi++) acc[qi] = 0.0f;
            const float* kr = T + j * ld;
            const float* qr = Qs + my0 * D;
            for (unsigned c = 0; c < D; c++) {
                const float kv = kr[c];
#pragma unroll
                for (int qi = 0; qi < Q; qi++) acc[qi] = fmaf(qr[qi * D + c], kv, acc[qi]);
            }
#pragma unroll
            for (int qi = 0; qi < Q; qi++) S[(size_t)(my0 + qi) * max_len + k0 + j] = __fmul_rn(acc[qi], scale);
        }
    }
    __syncwarp();

    // Softmax of this warp's rows (each warp wrote only its own rows).
#pragma unroll
    for (int qi = 0; qi < Q; qi++) {
        float* row = S + (size_t)(my0 + qi) * max_len;
        float m = -__int_as_float(0x7f800000);
        for (unsigned j = lane; j < seq; j += 32) m = fmaxf(m, row[j]);
        m = warp_max_f(m);
        double sum = 0.0;
        for (unsigned j = lane; j < seq; j += 32) {
            float e = expf(row[j] - m);
            row[j] = e;
            sum += (double)e;
        }
        const float inv = (float)(1.0 / warp_sum_d(sum));
        for (unsigned j = lane; j < seq; j += 32) row[j] = __fmul_rn(row[j], inv);
    }

    // Context = P · V: lane takes columns lane, lane + 32, ...
    float o[Q][C];
#pragma unroll
    for (int qi = 0; qi < Q; qi++)
#pragma unroll
        for (int t = 0; t < C; t++) o[qi][t] = 0.0f;
    for (unsigned k0 = 0; k0 < seq; k0 += ATT_KT) {
        const unsigned kn = min((unsigned)ATT_KT, seq - k0);
        __syncthreads();
        for (unsigned idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
            unsigned j = idx / D, c = idx - j * D;
            T[j * ld + c] = vbase[(size_t)(k0 + j) * row_stride + c];
        }
        __syncthreads();
        const float* prow = S + (size_t)my0 * max_len + k0;
        for (unsigned j = 0; j < kn; j++) {
            float vv[C];
#pragma unroll
            for (int t = 0; t < C; t++) {
                unsigned c = lane + 32u * t;
                vv[t] = c < D ? T[j * ld + c] : 0.0f;
            }
#pragma unroll
            for (int qi = 0; qi < Q; qi++) {
                const float p = prow[(size_t)qi * max_len + j];
#pragma unroll
                for (int t = 0; t < C; t++) o[qi][t] = fmaf(p, vv[t], o[qi][t]);
            }
        }
    }
#pragma unroll
    for (int qi = 0; qi < Q; qi++) {
        const unsigned q = q0 + my0 + qi;
        if (q < seq) {
            float* dst = out + ((size_t)start + q) * hidden + (size_t)h * D;
#pragma unroll
            for (int t = 0; t < C; t++) {
                unsigned c = lane + 32u * t;
                if (c < D) dst[c] = o[qi][t];
            }
        }
    }
}

#define ATT_KERNEL(Q, C)                                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) attention_q##Q##_c##C(                      \
        const float* __restrict__ qkv, const unsigned* __restrict__ offsets, float* __restrict__ out,          \
        unsigned tokens, unsigned max_len, unsigned heads, unsigned D, float scale) {                          \
        attention_impl<Q, C>(qkv, offsets, out, tokens, max_len, heads, D, scale);                             \
    }

ATT_KERNEL(1, 1)
ATT_KERNEL(2, 1)
ATT_KERNEL(4, 1)
ATT_KERNEL(1, 2)
ATT_KERNEL(2, 2)
ATT_KERNEL(4, 2)
ATT_KERNEL(1, 4)
ATT_KERNEL(2, 4)
ATT_KERNEL(4, 4)

// ---------------------------------------------------------------------------
// Mean pooling over each packed sequence; one block per sequence, the threads
// spread over the hidden dim. As `cpu::mean_pool`: f64 sums, count clamped to
// 1e-9, out = (float)(sum / count); an empty sequence gives zeros.

extern "C" __global__ void pool_mean(const float* __restrict__ hidden, const unsigned* __restrict__ offsets,
                                     float* __restrict__ out, unsigned tokens, unsigned dim) {
    const unsigned b = blockIdx.x;
    unsigned start, end;
    seq_range(offsets, b, tokens, &start, &end);
    const double count = (double)(end - start);
    const double denom = count > 1e-9 ? count : 1e-9;
    for (unsigned i = threadIdx.x; i < dim; i += blockDim.x) {
        double acc = 0.0;
        for (unsigned t = start; t < end; t++) acc += (double)hidden[(size_t)t * dim + i];
        out[(size_t)b * dim + i] = (float)(acc / denom);
    }
}
