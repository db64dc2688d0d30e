// The fused per-layer operations of the transformer on the GPU: RMS norms, the residual add
// with the next norm, Q/K/V bias + head norms + RoPE + cache store, causal attention over the
// KV cache, the gated activation and the logit soft-cap.  Activations are float32, one row per
// token.  Kernels that need the position read it from pos_ptr when it is not null (a position
// kept in device memory, so that a captured graph replays at the current position), else pos0.

#define FULL 0xFFFFFFFFu

DEV float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
DEV double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
// sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total
DEV double block_sum(double v, double* scratch) {
    v = warp_sum_d(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();                       // scratch may still be read by a previous call
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += scratch[i];
    return t;
}
// 1 / sqrt(mean(v^2) + eps) from the row's sum of squares (float64, as the CPU kernels)
DEV float rms_scale(double ss, int d, float eps) { return (float)(1.0 / sqrt(ss / d + (double)eps)); }

DEV u16 f32_to_f16_bits(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// out = rms_norm(x) * w; one block per row.  x, out: (n, d).
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, float eps,
                                    float* __restrict__ out, int d) {
    __shared__ double scratch[32];
    const float* xr = x + (long long)blockIdx.x * d;
    float* orow = out + (long long)blockIdx.x * d;
    double ss = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)xr[j] * xr[j];
    float sc = rms_scale(block_sum(ss, scratch), d, eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) orow[j] = xr[j] * sc * w[j];
}

// x += post_w ? rms_norm(delta) * post_w : delta;  out = rms_norm(x) * w.  One block per row.
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const float* __restrict__ delta,
                                        const float* __restrict__ post_w, const float* __restrict__ w,
                                        float eps, float* __restrict__ out, int d) {
    __shared__ double scratch[32];
    float* xr = x + (long long)blockIdx.x * d;
    const float* dr = delta + (long long)blockIdx.x * d;
    float* orow = out + (long long)blockIdx.x * d;
    if (post_w) {
        double ss = 0.0;
        for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)dr[j] * dr[j];
        float sp = rms_scale(block_sum(ss, scratch), d, eps);
        for (int j = threadIdx.x; j < d; j += blockDim.x) xr[j] += dr[j] * sp * post_w[j];
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) xr[j] += dr[j];
    }
    double ss = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)xr[j] * xr[j];
    float sc = rms_scale(block_sum(ss, scratch), d, eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) orow[j] = xr[j] * sc * w[j];
}

#define MAX_HEAD_DIM 512

// Per (head, token): bias, per-head RMS norm, RoPE, then k and v go to cache row pos.
// grid (H + Hkv, n), one warp per block.  q, k, v: rows of row_stride floats (views of one
// fused projection output), head h at h * hd.  cos, sin: (n_ctx, half).  Caches (C, Hkv, hd),
// float32 or float16 bits (cache_f16).
extern "C" __global__ void qkv_prepare(float* q, float* k, float* v, long long row_stride, int H, int Hkv, int hd,
                                       const float* bq, const float* bk, const float* bv,
                                       const float* qn, const float* kn, float eps,
                                       const float* __restrict__ cosv, const float* __restrict__ sinv, int half,
                                       int neox, int pos0, const int* pos_ptr,
                                       void* k_cache, void* v_cache, int cache_f16) {
    __shared__ float s[MAX_HEAD_DIM];
    const int t = blockIdx.y, h = blockIdx.x, lane = threadIdx.x;
    const int pos = (pos_ptr ? *pos_ptr : pos0) + t;
    const bool isq = h < H;
    const int hh = isq ? h : h - H;
    float* row = (isq ? q : k) + t * row_stride + (long long)hh * hd;
    const float* bias = isq ? bq : bk;
    const float* nw = isq ? qn : kn;
    for (int j = lane; j < hd; j += 32) s[j] = bias ? row[j] + bias[hh * hd + j] : row[j];
    __syncwarp();
    if (nw) {
        double ss = 0.0;
        for (int j = lane; j < hd; j += 32) ss += (double)s[j] * s[j];
        float sc = rms_scale(warp_sum_d(ss), hd, eps);
        for (int j = lane; j < hd; j += 32) s[j] = s[j] * sc * nw[j];
        __syncwarp();
    }
    const float* c = cosv + (long long)pos * half;
    const float* sn = sinv + (long long)pos * half;
    for (int i = lane; i < half; i += 32) {
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float a = s[ia], b = s[ib];
        s[ia] = a * c[i] - b * sn[i];
        s[ib] = a * sn[i] + b * c[i];
    }
    __syncwarp();
    for (int j = lane; j < hd; j += 32) row[j] = s[j];
    if (isq) return;
    float* vrow = v + t * row_stride + (long long)hh * hd;
    const long long at = ((long long)pos * Hkv + hh) * hd;
    for (int j = lane; j < hd; j += 32) {
        float vv = bv ? vrow[j] + bv[hh * hd + j] : vrow[j];
        vrow[j] = vv;
        if (cache_f16) {
            ((u16*)k_cache)[at + j] = f32_to_f16_bits(s[j]);
            ((u16*)v_cache)[at + j] = f32_to_f16_bits(vv);
        } else {
            ((float*)k_cache)[at + j] = s[j];
            ((float*)v_cache)[at + j] = vv;
        }
    }
}

DEV float cache_at(const void* c, long long i, int f16) {
    return f16 ? half_bits(((const u16*)c)[i]) : ((const float*)c)[i];
}

#define ATT_MAX_WARPS 16
#define ATT_PER_LANE (MAX_HEAD_DIM / 32)

// Causal attention, one block of up to ATT_MAX_WARPS warps per (query head, token).  Query t of the n
// new tokens sits at position p = pos + t and sees keys lo..p (lo = p - window + 1 with a
// sliding window).  Each warp runs an online softmax over every nw-th key (nw warps), lane i
// holding dimensions i, i + 32, ...; the warps' partial sums are merged at the end.
// q: rows of q_stride floats, head h at h * hd; out: (n, H, hd).
extern "C" __global__ void attention(const float* __restrict__ q, long long q_stride, const void* __restrict__ k_cache,
                                     const void* __restrict__ v_cache, int cache_f16, int H, int Hkv, int hd,
                                     int pos0, const int* pos_ptr, float scale, int window, float softcap,
                                     float* __restrict__ out) {
    __shared__ float part_m[ATT_MAX_WARPS], part_l[ATT_MAX_WARPS];
    __shared__ float part_o[ATT_MAX_WARPS][MAX_HEAD_DIM];
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int g = h / (H / Hkv);
    const int p = (pos_ptr ? *pos_ptr : pos0) + t;
    const int lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
    const float* qr = q + t * q_stride + (long long)h * hd;
    float qv[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int dd = lane + 32 * i;
        qv[i] = dd < hd ? qr[dd] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = __int_as_float(0xff800000), l = 0.0f;   // -inf
    for (int key = lo + wid; key <= p; key += nw) {
        const long long base = ((long long)key * Hkv + g) * hd;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int dd = lane + 32 * i;
            if (dd < hd) dot += qv[i] * cache_at(k_cache, base + dd, cache_f16);
        }
        float sc = warp_sum(dot) * scale;
        if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
        float mn = fmaxf(m, sc);
        float corr = __expf(m - mn), e = __expf(sc - mn);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int dd = lane + 32 * i;
            if (dd < hd) acc[i] = acc[i] * corr + e * cache_at(v_cache, base + dd, cache_f16);
        }
        m = mn;
    }
    if (lane == 0) { part_m[wid] = m; part_l[wid] = l; }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int dd = lane + 32 * i;
        if (dd < hd) part_o[wid][dd] = acc[i];
    }
    __syncthreads();
    float M = part_m[0];
    for (int w = 1; w < nw; w++) M = fmaxf(M, part_m[w]);
    float L = 0.0f, f[ATT_MAX_WARPS];
    for (int w = 0; w < nw; w++) {
        f[w] = part_l[w] > 0.0f ? __expf(part_m[w] - M) : 0.0f;
        L += part_l[w] * f[w];
    }
    float* orow = out + ((long long)t * H + h) * hd;
    for (int dd = threadIdx.x; dd < hd; dd += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < nw; w++) o += part_o[w][dd] * f[w];
        orow[dd] = o / L;
    }
}

// out = act(gate) * up, act(g) = g * sigmoid(z): z = g (SiLU) or 2 sqrt(2/pi) (g + 0.044715 g^3)
// (GELU, tanh form).  gate, up: rows of in_stride floats; out: (n, ff).
extern "C" __global__ void gated_act(const float* __restrict__ gate, const float* __restrict__ up, long long in_stride,
                                     int gelu, float* __restrict__ out, int n, int ff) {
    const long long total = (long long)n * ff;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / ff;
        int j = (int)(i - r * ff);
        float g = gate[r * in_stride + j];
        float z = gelu ? 1.5957691216057308f * g * (1.0f + 0.044715f * g * g) : g;
        out[i] = g / (1.0f + expf(-z)) * up[r * in_stride + j];
    }
}

// x = cap * tanh(x / cap), in place over n values
extern "C" __global__ void softcap(float* x, long long n, float cap) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}
