// Block decoders of every GGUF weight type, for the CUDA kernels.
//
// Each type is a struct Q<TYPE_ID> with
//   QK  weights per block (the plain types use blocks of 8 values),
//   TS  bytes per block,
//   dq8(b, j, w): w[0..7] = weights 8j .. 8j+7 of the block starting at byte b.
// The arithmetic is that of the CPU decoders (kernels/legacy.py, kquants.py, iquants.py,
// ternary.py, floats.py), operation for operation, so a module compiled with --fmad=false
// decodes bit for bit as they do (the few products that can meet float32 subnormals go
// through mul_keep_subnormals).  The grid and value tables are emitted from
// kernels/iquant_tables.py ahead of this file (see kernels/cuda/__init__.py).
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define DEV static __device__ __forceinline__

// Loads.  Every multi-byte field a decoder reads with these sits at an even offset of a block
// of even size (MXFP4, the one odd-sized block, is read byte by byte), and weights start at
// allocation boundaries, so 16-bit loads are aligned: half the load instructions of byte loads.
DEV u32 ld_u16(const u8* p) { return *reinterpret_cast<const u16*>(p); }
DEV u32 ld_u32(const u8* p) { return ld_u16(p) | (ld_u16(p + 2) << 16); }
// 8 consecutive bytes at an even address as two little-endian words
DEV void ld8(const u8* p, u32& lo, u32& hi) { lo = ld_u32(p); hi = ld_u32(p + 4); }
DEV u32 byte_of(u32 lo, u32 hi, int i) { return ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xFFu; }
DEV int sext8(u32 b) { return (int)((b ^ 0x80u) & 0xFFu) - 0x80; }
// an integer 0 <= v < 2^23 as float, exactly, without the (quarter-rate) integer conversion
DEV float u2f(u32 v) { return __int_as_float(0x4B000000u | v) - 8388608.0f; }
// a byte read as int8, as float (exact)
DEV float s8f(u32 b) { return u2f((b ^ 0x80u) & 0xFFu) - 128.0f; }

// IEEE half bits -> float, exact for every input (signed zeros, subnormals, NaN payloads)
DEV float half_bits(u32 h) {
    u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        float v = (float)m * 5.960464477539063e-08f;
        return sign ? -v : v;
    }
    u32 bits = e == 31 ? (sign | 0x7F800000u | (m << 13)) : (sign | ((e + 112) << 23) | (m << 13));
    return __uint_as_float(bits);
}
DEV float f16_at(const u8* p) { return half_bits(ld_u16(p)); }

// E8M0 exponent -> 2^(x - 128) (MXFP4's halved scale)
DEV float e8m0_half(u32 x) { return __uint_as_float(x < 2 ? (0x00200000u << x) : ((x - 1) << 23)); }

// unsigned E4M3 -> float, halved (NVFP4's sub-block scale); 0 and 0x7F decode to 0
DEV float ue4m3_half(u32 x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    u32 e = (x >> 3) & 0xF, m = x & 7;
    if (e == 0) return (float)m * 0.0009765625f;
    return __uint_as_float(((e + 119) << 23) | (m << 20));
}

// a * b with subnormal inputs and results kept: CuPy compiles with -ftz=true, which flushes
// them in plain C arithmetic (only scales below 2^-126 need this: MXFP4's E8M0, Q8_K's float32)
DEV float mul_keep_subnormals(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

DEV float sign_of(u32 signs, int j) { return (float)(1 - 2 * (int)((signs >> j) & 1u)); }

template <int T> struct Q;

// ------------------------------------------------------------------------------ plain types
template <> struct Q<0> {   // F32
    static constexpr int QK = 8, TS = 32;
    DEV void dq8(const u8* b, int, float* w) { for (int i = 0; i < 8; i++) w[i] = __uint_as_float(ld_u32(b + 4 * i)); }
};
template <> struct Q<1> {   // F16
    static constexpr int QK = 8, TS = 16;
    DEV void dq8(const u8* b, int, float* w) { for (int i = 0; i < 8; i++) w[i] = f16_at(b + 2 * i); }
};
template <> struct Q<30> {  // BF16
    static constexpr int QK = 8, TS = 16;
    DEV void dq8(const u8* b, int, float* w) { for (int i = 0; i < 8; i++) w[i] = __uint_as_float(ld_u16(b + 2 * i) << 16); }
};

// ------------------------------------------------------------------------------ 32-weight blocks
// the 4-bit quant of weight k < 32: byte k % 16, low nibble for k < 16, high for k >= 16
DEV u32 nib32(const u8* qs, int k) { return (u32)(qs[k & 15] >> ((k >> 4) * 4)) & 0xFu; }
// the same for weights 8j .. 8j+7 (qs at an even address): q[i] = nib32(qs, 8j + i)
DEV void nibbles8(const u8* qs, int j, u32* q) {
    u32 lo, hi;
    ld8(qs + 8 * (j & 1), lo, hi);
    const int sh = 4 * (j >> 1);
    for (int i = 0; i < 8; i++) q[i] = (byte_of(lo, hi, i) >> sh) & 0xFu;
}

template <> struct Q<2> {   // Q4_0
    static constexpr int QK = 32, TS = 18;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 q[8];
        nibbles8(b + 2, j, q);
        for (int i = 0; i < 8; i++) w[i] = (u2f(q[i]) - 8.0f) * d;
    }
};
template <> struct Q<3> {   // Q4_1
    static constexpr int QK = 32, TS = 20;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b), m = f16_at(b + 2);
        u32 q[8];
        nibbles8(b + 4, j, q);
        for (int i = 0; i < 8; i++) w[i] = u2f(q[i]) * d + m;
    }
};
template <> struct Q<6> {   // Q5_0
    static constexpr int QK = 32, TS = 22;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 qh = ld_u32(b + 2) >> (8 * j), q[8];
        nibbles8(b + 6, j, q);
        for (int i = 0; i < 8; i++) w[i] = (u2f(q[i] | (((qh >> i) & 1u) << 4)) - 16.0f) * d;
    }
};
template <> struct Q<7> {   // Q5_1
    static constexpr int QK = 32, TS = 24;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b), m = f16_at(b + 2);
        u32 qh = ld_u32(b + 4) >> (8 * j), q[8];
        nibbles8(b + 8, j, q);
        for (int i = 0; i < 8; i++) w[i] = u2f(q[i] | (((qh >> i) & 1u) << 4)) * d + m;
    }
};
template <> struct Q<8> {   // Q8_0
    static constexpr int QK = 32, TS = 34;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 lo, hi;
        ld8(b + 2 + 8 * j, lo, hi);
        for (int i = 0; i < 8; i++) w[i] = s8f(byte_of(lo, hi, i)) * d;
    }
};
template <> struct Q<9> {   // Q8_1
    static constexpr int QK = 32, TS = 36;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 lo, hi;
        ld8(b + 4 + 8 * j, lo, hi);
        for (int i = 0; i < 8; i++) w[i] = s8f(byte_of(lo, hi, i)) * d;
    }
};
template <> struct Q<15> {  // Q8_K
    static constexpr int QK = 256, TS = 292;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = __uint_as_float(ld_u32(b));
        u32 lo, hi;
        ld8(b + 4 + 8 * j, lo, hi);
        for (int i = 0; i < 8; i++) w[i] = mul_keep_subnormals(d, s8f(byte_of(lo, hi, i)));
    }
};
template <> struct Q<41> {  // Q1_0
    static constexpr int QK = 128, TS = 18;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 q = b[2 + j];
        for (int i = 0; i < 8; i++) w[i] = ((q >> i) & 1u) ? d : -d;
    }
};
template <> struct Q<42> {  // Q2_0
    static constexpr int QK = 64, TS = 18;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        for (int i = 0; i < 8; i++) {
            int k = 8 * j + i;
            w[i] = (float)((int)((b[2 + (k >> 2)] >> (2 * (k & 3))) & 3u) - 1) * d;
        }
    }
};

// ------------------------------------------------------------------------------ k-quants
// weight k of a 256 block in the "half h, shift pair kk, lane l" order of Q2_K / Q3_K / TQ2_0:
// h = k / 128, kk = (k % 128) / 32, l = k % 32
template <> struct Q<10> {  // Q2_K
    static constexpr int QK = 256, TS = 84;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b + 80), dmin = f16_at(b + 82);
        int k0 = 8 * j, h = k0 >> 7, kk = (k0 >> 5) & 3, l0 = k0 & 31;
        u32 sc = b[8 * h + 2 * kk + (l0 >> 4)];
        float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
        u32 lo, hi;
        ld8(b + 16 + 32 * h + l0, lo, hi);
        for (int i = 0; i < 8; i++) w[i] = dl * u2f((byte_of(lo, hi, i) >> (2 * kk)) & 3u) - ml;
    }
};
template <> struct Q<11> {  // Q3_K
    static constexpr int QK = 256, TS = 110;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b + 108);
        int k0 = 8 * j, h = k0 >> 7, kk = (k0 >> 5) & 3, l0 = k0 & 31;
        int s = 8 * h + 2 * kk + (l0 >> 4), g = s >> 2;
        u32 lo = (b[96 + (s & 3) + 4 * (g & 1)] >> (4 * (g >> 1))) & 0xFu;
        u32 hi = (b[104 + (s & 3)] >> (2 * g)) & 3u;
        float dl = d * (float)((int)(lo | (hi << 4)) - 32);
        u32 mask = 1u << (4 * h + kk), qlo, qhi, mlo, mhi;
        ld8(b + 32 + 32 * h + l0, qlo, qhi);
        ld8(b + l0, mlo, mhi);
        for (int i = 0; i < 8; i++) {
            float q = u2f((byte_of(qlo, qhi, i) >> (2 * kk)) & 3u);
            w[i] = dl * ((byte_of(mlo, mhi, i) & mask) ? q : q - 4.0f);
        }
    }
};
// (scale, min) of sub-block s from the 12 packed scale bytes of Q4_K / Q5_K
DEV void scale_min_k4(const u8* sc, int s, u32& scale, u32& mn) {
    if (s < 4) {
        scale = sc[s] & 63u;
        mn = sc[s + 4] & 63u;
    } else {
        scale = (sc[s + 4] & 0xFu) | ((u32)(sc[s - 4] >> 6) << 4);
        mn = (sc[s + 4] >> 4) | ((u32)(sc[s] >> 6) << 4);
    }
}
// Q4_K / Q5_K sub-block s: weight = d1 * q - o1 with d1 = d * scale, o1 = dmin * min
DEV void k4_factors(const u8* b, int s, float& d1, float& o1) {
    u32 sc, mn;
    scale_min_k4(b + 4, s, sc, mn);
    d1 = f16_at(b) * (float)sc;
    o1 = f16_at(b + 2) * (float)mn;
}
template <> struct Q<12> {  // Q4_K
    static constexpr int QK = 256, TS = 144;
    DEV void dq8(const u8* b, int j, float* w) {
        int k0 = 8 * j, c = k0 >> 6, hi = (k0 >> 5) & 1, l0 = k0 & 31;
        float d1, o1;
        k4_factors(b, 2 * c + hi, d1, o1);
        u32 lo, hh;
        ld8(b + 16 + 32 * c + l0, lo, hh);
        for (int i = 0; i < 8; i++) w[i] = d1 * u2f((byte_of(lo, hh, i) >> (4 * hi)) & 0xFu) - o1;
    }
};
template <> struct Q<13> {  // Q5_K
    static constexpr int QK = 256, TS = 176;
    DEV void dq8(const u8* b, int j, float* w) {
        int k0 = 8 * j, c = k0 >> 6, hi = (k0 >> 5) & 1, l0 = k0 & 31;
        float d1, o1;
        k4_factors(b, 2 * c + hi, d1, o1);
        u32 bit = 1u << (2 * c + hi), qlo, qhi, hlo, hhi;
        ld8(b + 48 + 32 * c + l0, qlo, qhi);
        ld8(b + 16 + l0, hlo, hhi);
        for (int i = 0; i < 8; i++) {
            u32 q = ((byte_of(qlo, qhi, i) >> (4 * hi)) & 0xFu) + ((byte_of(hlo, hhi, i) & bit) ? 16u : 0u);
            w[i] = d1 * u2f(q) - o1;
        }
    }
};
template <> struct Q<14> {  // Q6_K
    static constexpr int QK = 256, TS = 210;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b + 208);
        int k0 = 8 * j, h = k0 >> 7, part = (k0 >> 5) & 3, l0 = k0 & 31;
        float f = d * (float)sext8(b[192 + 8 * h + (l0 >> 4) + 2 * part]);
        u32 llo, lhi, hlo, hhi;
        ld8(b + 64 * h + 32 * (part & 1) + l0, llo, lhi);
        ld8(b + 128 + 32 * h + l0, hlo, hhi);
        for (int i = 0; i < 8; i++) {
            u32 lo = (byte_of(llo, lhi, i) >> (4 * (part >> 1))) & 0xFu;
            u32 hb = (byte_of(hlo, hhi, i) >> (2 * part)) & 3u;
            w[i] = f * (u2f(lo | (hb << 4)) - 32.0f);
        }
    }
};

// ------------------------------------------------------------------------------ i-quants
// w = db * magnitude * sign for the 8 bytes of an 8-magnitude grid entry (IQ2_*) ...
DEV void grid8(float db, u64 grid, u32 signs, float* w) {
    for (int i = 0; i < 8; i++) w[i] = db * (float)((grid >> (8 * i)) & 0xFFu) * sign_of(signs, i);
}
// ... or for two 4-magnitude entries (IQ3_*)
DEV void grid4x2(float db, u32 g1, u32 g2, u32 signs, float* w) {
    for (int i = 0; i < 4; i++) {
        w[i] = db * (float)((g1 >> (8 * i)) & 0xFFu) * sign_of(signs, i);
        w[i + 4] = db * (float)((g2 >> (8 * i)) & 0xFFu) * sign_of(signs, i + 4);
    }
}
// IQ2_XS / IQ2_S group factor: 4-bit scale of the first (l < 2) or second 16 weights
DEV float iq2_scale(float d, u32 sc, int l) { return d * (0.5f + (float)(l < 2 ? (sc & 0xFu) : (sc >> 4))) * 0.25f; }
template <> struct Q<16> {  // IQ2_XXS
    static constexpr int QK = 256, TS = 66;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        int ib = j >> 2, l = j & 3, qo = 2 + 8 * ib;
        u32 aux1 = ld_u32(b + qo + 4);
        float db = d * (0.5f + (float)(aux1 >> 28)) * 0.25f;
        u64 grid = iq2xxs_grid[b[qo + l]];
        u32 signs = ksigns_iq2xs[(aux1 >> (7 * l)) & 127u];
        grid8(db, grid, signs, w);
    }
};
template <> struct Q<17> {  // IQ2_XS
    static constexpr int QK = 256, TS = 74;
    DEV void dq8(const u8* b, int j, float* w) {
        int ib = j >> 2, l = j & 3;
        u32 q = ld_u16(b + 2 + 2 * (4 * ib + l));     // 9-bit grid index, 7-bit sign pattern index
        grid8(iq2_scale(f16_at(b), b[66 + ib], l), iq2xs_grid[q & 511u], ksigns_iq2xs[q >> 9], w);
    }
};
template <> struct Q<22> {  // IQ2_S
    static constexpr int QK = 256, TS = 82;
    DEV void dq8(const u8* b, int j, float* w) {
        int ib = j >> 2, l = j & 3;
        u32 idx = (u32)b[2 + 4 * ib + l] | (((u32)b[66 + ib] << (8 - 2 * l)) & 0x300u);
        grid8(iq2_scale(f16_at(b), b[74 + ib], l), iq2s_grid[idx], b[34 + 4 * ib + l], w);
    }
};
template <> struct Q<18> {  // IQ3_XXS
    static constexpr int QK = 256, TS = 98;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        int ib = j >> 2, l = j & 3, qo = 2 + 8 * ib;
        u32 aux = ld_u32(b + 66 + 4 * ib);
        float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
        u32 signs = ksigns_iq2xs[(aux >> (7 * l)) & 127u];
        u32 g1 = iq3xxs_grid[b[qo + 2 * l]], g2 = iq3xxs_grid[b[qo + 2 * l + 1]];
        grid4x2(db, g1, g2, signs, w);
    }
};
template <> struct Q<21> {  // IQ3_S
    static constexpr int QK = 256, TS = 110;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        int ib = j >> 2, l = j & 3, qo = 2 + 8 * ib;
        u32 sc = b[106 + (ib >> 1)];
        u32 s = (ib & 1) ? (sc >> 4) : (sc & 0xFu);
        float db = d * (float)(1 + 2 * (int)s);
        u32 qh = b[66 + ib];
        u32 i1 = (u32)b[qo + 2 * l] | ((qh << (8 - 2 * l)) & 256u);
        u32 i2 = (u32)b[qo + 2 * l + 1] | ((qh << (7 - 2 * l)) & 256u);
        u32 g1 = iq3s_grid[i1], g2 = iq3s_grid[i2];
        u32 signs = b[74 + 4 * ib + l];
        grid4x2(db, g1, g2, signs, w);
    }
};
// grid values of iq1s_grid are the int8 bytes -1, 0, +1
DEV float iq1_val(u64 grid, int i) { return (float)sext8((u32)(grid >> (8 * i)) & 0xFFu); }
template <> struct Q<19> {  // IQ1_S
    static constexpr int QK = 256, TS = 50;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        int ib = j >> 2, l = j & 3;
        u32 qh = ld_u16(b + 34 + 2 * ib);
        float dl = d * (float)(2 * (int)((qh >> 12) & 7u) + 1);
        float delta = (qh & 0x8000u) ? -0.125f : 0.125f;
        u32 idx = (u32)b[2 + 4 * ib + l] | (((qh >> (3 * l)) & 7u) << 8);
        u64 grid = iq1s_grid[idx];
        for (int i = 0; i < 8; i++) w[i] = dl * (iq1_val(grid, i) + delta);
    }
};
template <> struct Q<29> {  // IQ1_M
    static constexpr int QK = 256, TS = 56;
    DEV void dq8(const u8* b, int j, float* w) {
        u32 s0 = ld_u16(b + 48), s1 = ld_u16(b + 50), s2 = ld_u16(b + 52), s3 = ld_u16(b + 54);
        float d = half_bits((s0 >> 12) | ((s1 >> 8) & 0x00F0u) | ((s2 >> 4) & 0x0F00u) | (s3 & 0xF000u));
        int ib = j >> 2, l = j & 3;
        u32 sc = ld_u16(b + 48 + 2 * (ib >> 1));
        int sh = 6 * (ib & 1) + (l < 2 ? 0 : 3);
        float dl = d * (float)(2 * (int)((sc >> sh) & 7u) + 1);
        u32 qh = b[32 + 2 * ib + (l >> 1)];
        u32 hi = (l & 1) ? (qh << 4) : (qh << 8);
        u32 idx = (u32)b[4 * ib + l] | (hi & 0x700u);
        u32 neg = (l & 1) ? (qh & 0x80u) : (qh & 0x08u);
        float delta = neg ? -0.125f : 0.125f;
        u64 grid = iq1s_grid[idx];
        for (int i = 0; i < 8; i++) w[i] = dl * (iq1_val(grid, i) + delta);
    }
};
template <> struct Q<20> {  // IQ4_NL
    static constexpr int QK = 32, TS = 18;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 q[8];
        nibbles8(b + 2, j, q);
        for (int i = 0; i < 8; i++) w[i] = d * (float)kvalues_iq4nl[q[i]];
    }
};
template <> struct Q<23> {  // IQ4_XS
    static constexpr int QK = 256, TS = 136;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b);
        u32 sh = ld_u16(b + 2);
        int ib = j >> 2;
        int ls = (int)(((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 0xFu) | (((sh >> (2 * ib)) & 3u) << 4));
        float dl = d * (float)(ls - 32);
        u32 q[8];
        nibbles8(b + 8 + 16 * ib, j & 3, q);
        for (int i = 0; i < 8; i++) w[i] = dl * (float)kvalues_iq4nl[q[i]];
    }
};

// ------------------------------------------------------------------------------ ternary and FP4
DEV float trit(u32 byte, int n) {
    u32 q = (byte * pow3[n]) & 0xFFu;
    return (float)((int)((q * 3) >> 8) - 1);
}
template <> struct Q<34> {  // TQ1_0
    static constexpr int QK = 256, TS = 54;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b + 52);
        for (int i = 0; i < 8; i++) {
            int k = 8 * j + i;
            u32 byte;
            int n;
            if (k < 160) { n = k >> 5; byte = b[k & 31]; }
            else if (k < 240) { n = (k - 160) >> 4; byte = b[32 + ((k - 160) & 15)]; }
            else { n = (k - 240) >> 2; byte = b[48 + ((k - 240) & 3)]; }
            w[i] = trit(byte, n) * d;
        }
    }
};
template <> struct Q<35> {  // TQ2_0
    static constexpr int QK = 256, TS = 66;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = f16_at(b + 64);
        int k0 = 8 * j, h = k0 >> 7, l = (k0 >> 5) & 3, m0 = k0 & 31;
        u32 lo, hi;
        ld8(b + 32 * h + m0, lo, hi);
        for (int i = 0; i < 8; i++) w[i] = (u2f((byte_of(lo, hi, i) >> (2 * l)) & 3u) - 1.0f) * d;
    }
};
template <> struct Q<39> {  // MXFP4
    static constexpr int QK = 32, TS = 17;
    DEV void dq8(const u8* b, int j, float* w) {
        float d = e8m0_half(b[0]);
        for (int i = 0; i < 8; i++) w[i] = mul_keep_subnormals((float)kvalues_fp4[nib32(b + 1, 8 * j + i)], d);
    }
};
template <> struct Q<40> {  // NVFP4
    static constexpr int QK = 64, TS = 36;
    DEV void dq8(const u8* b, int j, float* w) {
        int s = j >> 1, hi = j & 1;          // sub-block of 16; first or second 8 of it
        float d = ue4m3_half(b[s]);
        for (int i = 0; i < 8; i++) w[i] = (float)kvalues_fp4[(b[4 + 8 * s + i] >> (4 * hi)) & 0xFu] * d;
    }
};
