// Quantized weights on the GPU: decode to float32 (whole tensors or gathered rows) and the
// fused matvec y = W x that decodes each block in registers.  W: rows x cols weights stored
// as consecutive rows of row_bytes bytes (the GGUF layout, untouched); cols is a multiple of 8.

// out[r, :] = decoded row ids[r] of W (ids == nullptr: row r), r < n_rows.  One thread per
// 8 weights, grid-stride.
template <int T>
__global__ void dequant(const u8* __restrict__ W, float* __restrict__ out, long long n_rows, int cols,
                        long long row_bytes, const long long* __restrict__ ids) {
    typedef Q<T> q;
    const int nch = cols / 8, cpb = q::QK / 8;
    const long long total = n_rows * nch;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        long long r = t / nch;
        int c = (int)(t - r * nch);
        long long src = ids ? ids[r] : r;
        float w[8];
        q::dq8(W + src * row_bytes + (long long)(c / cpb) * q::TS, c % cpb, w);
        float4* o = reinterpret_cast<float4*>(out + r * cols + 8 * c);
        o[0] = make_float4(w[0], w[1], w[2], w[3]);
        o[1] = make_float4(w[4], w[5], w[6], w[7]);
    }
}

// y[r] = W[r, :] . x for r < rows; one block per row, its warps (blockDim (32, W)) splitting
// the row's 8-weight chunks, so that even a matrix of few rows keeps many loads in flight.
template <int T>
__global__ void matvec(const u8* __restrict__ W, const float* __restrict__ x, float* __restrict__ y,
                       int rows, int cols, long long row_bytes) {
    typedef Q<T> q;
    __shared__ float part[32];
    const int row = blockIdx.x;
    const u8* wr = W + (long long)row * row_bytes;
    const int nch = cols / 8, cpb = q::QK / 8;
    const int t = threadIdx.y * 32 + threadIdx.x, nt = blockDim.y * 32;
    float acc = 0.0f;
    for (int c = t; c < nch; c += nt) {
        float w[8];
        q::dq8(wr + (c / cpb) * q::TS, c % cpb, w);
        const float4* xp = reinterpret_cast<const float4*>(x + 8 * c);
        float4 a = xp[0], b = xp[1];
        acc += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w
             + w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, o);
    if (threadIdx.x == 0) part[threadIdx.y] = acc;
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int i = 0; i < (int)blockDim.y; i++) s += part[i];
        y[row] = s;
    }
}
