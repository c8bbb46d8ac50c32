/* ensemble_nn's kernel: the vector building blocks (products, softplus, transposes,
 * column sums) of nn_kernel.c, for a vector width VW of 16 (AVX-512) or 8 (AVX2 + FMA).
 * Each output's arithmetic is the same whatever VW (see nn_kernel.c). */
#pragma once

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if VW == 16
typedef __m512 VT;
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VFMA _mm512_fmadd_ps
#define VSET1 _mm512_set1_ps
#define VZERO _mm512_setzero_ps
#define VMAX _mm512_max_ps
/* the first n lanes (0 < n <= VW); the others read as 0 / are not written */
#define VLOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), (p))
#define VSTOREN(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1), (v))
#define VMIN _mm512_min_ps
#define VLT_SEL(a, b, x, y) _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ), (y), (x))
#define VEXP2I(n) /* 2^n for int lanes n in [-126, 127] */ \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32((n), _mm512_set1_epi32(127)), 23))
#define VCVTT _mm512_cvttps_epi32
#define VCVTF _mm512_cvtepi32_ps
#elif VW == 8
typedef __m256 VT;
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VFMA _mm256_fmadd_ps
#define VSET1 _mm256_set1_ps
#define VZERO _mm256_setzero_ps
#define VMAX _mm256_max_ps
static inline __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#define VLOADN(p, n) _mm256_maskload_ps((p), lanes(n))
#define VSTOREN(p, v, n) _mm256_maskstore_ps((p), lanes(n), (v))
#define VMIN _mm256_min_ps
#define VLT_SEL(a, b, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (b), _CMP_LT_OQ))
#define VEXP2I(n) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32((n), _mm256_set1_epi32(127)), 23))
#define VCVTT _mm256_cvttps_epi32
#define VCVTF _mm256_cvtepi32_ps
#else
#error "VW must be 8 or 16"
#endif

#define INLINE static inline __attribute__((always_inline))

/* One block of R rows x V vectors of C[i][o] = init[o] + sum_k A(i, k) B[k][o], k ascending;
 * the last vector holds `last` outputs (a masked tail: the same arithmetic per output). */
INLINE void block(int R, int V, int last, int K, const float *A, long sai, long sak,
                  const float *B, long ldb, const float *init, float *Cp, long ldc, int relu) {
    VT acc[8][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            int n = v == V - 1 ? last : VW;
            acc[r][v] = init ? (n == VW ? VLOAD(init + v * VW) : VLOADN(init + v * VW, n))
                             : VZERO();
        }
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        VT b0 = V == 1 && last < VW ? VLOADN(b, last) : VLOAD(b);
        VT b1 = V == 2 ? (last < VW ? VLOADN(b + VW, last) : VLOAD(b + VW)) : b0;
        for (int r = 0; r < R; r++) {
            VT s = VSET1(A[r * sai + k * sak]);
            acc[r][0] = VFMA(s, b0, acc[r][0]);
            if (V > 1) acc[r][1] = VFMA(s, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            VT a = relu ? VMAX(acc[r][v], VZERO()) : acc[r][v];
            int n = v == V - 1 ? last : VW;
            if (n == VW)
                VSTORE(Cp + r * ldc + v * VW, a);
            else
                VSTOREN(Cp + r * ldc + v * VW, a, n);
        }
}

/* the tiles as functions of their own: inlined into the step they spilled its registers */
#define TILE(R, V)                                                                          \
    static __attribute__((noinline)) void tile_##R##_##V(                                  \
        int last, int K, const float *A, long sai, long sak, const float *B, long ldb,      \
        const float *init, float *Cp, long ldc, int relu) {                                 \
        block(R, V, last, K, A, sai, sak, B, ldb, init, Cp, ldc, relu);                     \
    }
TILE(4, 2)
TILE(4, 1)
TILE(1, 2)
TILE(1, 1)
/* full 2-vector tiles (no mask in the k loop): most of a step's products. With 32 vector
 * registers (AVX-512) 8 rows: 16 accumulators keep both FMA units busy through the FMA's
 * latency; AVX2's 16 registers hold 4 rows. The tile's shape never changes a sum's order. */
static __attribute__((noinline)) void tile_8_2_full(int K, const float *A, long sai, long sak,
                                                    const float *B, long ldb, const float *init,
                                                    float *Cp, long ldc, int relu) {
    block(8, 2, VW, K, A, sai, sak, B, ldb, init, Cp, ldc, relu);
}
static __attribute__((noinline)) void tile_4_2_full(int K, const float *A, long sai, long sak,
                                                    const float *B, long ldb, const float *init,
                                                    float *Cp, long ldc, int relu) {
    block(4, 2, VW, K, A, sai, sak, B, ldb, init, Cp, ldc, relu);
}

/* R rows x all N outputs, 2 vectors at a time, the remainder masked */
INLINE void rows_block(int R, int K, int N, const float *A, long sai, long sak, const float *B,
                       const float *init, float *Ci, int relu) {
    void (*t2)(int, int, const float *, long, long, const float *, long, const float *,
               float *, long, int) = R == 4 ? tile_4_2 : tile_1_2;
    void (*t1)(int, int, const float *, long, long, const float *, long, const float *,
               float *, long, int) = R == 4 ? tile_4_1 : tile_1_1;
    int o = 0;
    for (; o + 2 * VW <= N; o += 2 * VW) {
        if (R == 8)
            tile_8_2_full(K, A, sai, sak, B + o, N, init ? init + o : 0, Ci + o, N, relu);
        else if (R == 4)
            tile_4_2_full(K, A, sai, sak, B + o, N, init ? init + o : 0, Ci + o, N, relu);
        else
            t2(VW, K, A, sai, sak, B + o, N, init ? init + o : 0, Ci + o, N, relu);
    }
    int left = N - o;
    if (left > VW)
        t2(left - VW, K, A, sai, sak, B + o, N, init ? init + o : 0, Ci + o, N, relu);
    else if (left > 0)
        t1(left, K, A, sai, sak, B + o, N, init ? init + o : 0, Ci + o, N, relu);
}

/* C (M, N), row stride N: C[i][o] = init[o] (or 0) + sum_k A[i*sai + k*sak] * B[k*N + o];
 * relu optionally. Each output's sum runs over k in order, with FMA, whatever the variant. */
static void gemm(int M, int K, int N, const float *A, long sai, long sak, const float *B,
                 const float *init, float *Cp, int relu) {
    int i = 0;
    if (VW == 16 && N % (2 * VW) == 0)
        for (; i + 8 <= M; i += 8)
            rows_block(8, K, N, A + i * sai, sai, sak, B, init, Cp + (long)i * N, relu);
    for (; i + 4 <= M; i += 4) rows_block(4, K, N, A + i * sai, sai, sak, B, init, Cp + (long)i * N, relu);
    for (; i < M; i++) rows_block(1, K, N, A + i * sai, sai, sak, B, init, Cp + (long)i * N, relu);
}

/* out[o] = sum_r X[r][o], r ascending (the bias gradients) */
static void colsum(int n, int N, const float *X, float *out) {
    for (int o = 0; o < N; o += VW) {
        int m = N - o < VW ? N - o : VW;
        VT acc = VZERO();
        for (int r = 0; r < n; r++)
            acc = acc + (m == VW ? VLOAD(X + (long)r * N + o) : VLOADN(X + (long)r * N + o, m));
        if (m == VW)
            VSTORE(out + o, acc);
        else
            VSTOREN(out + o, acc, m);
    }
}

/* softplus(z) = max(z, 0) + log1p(exp(-|z|)) and its derivative sigmoid(z) of `count`
 * values, lane by lane (a libm call per value cost ~1/5 of a step): the same operations in
 * every lane and both variants. exp: 2^n e^r, |r| <= ln2 / 2, Taylor to r^7 (error < 1e-8);
 * log1p(t) = 2 atanh(t / (2 + t)), t in [0, 1], series to s^15 (error < 1e-8). */
#define C1(v) VSET1(v)
static void softplus_all(int count, const float *restrict z, float *restrict sp,
                         float *restrict sg) {
    const VT zero = VZERO(), one = C1(1.0f);
    for (int e = 0; e < count; e += VW) {
        int m = count - e < VW ? count - e : VW;
        VT x = m == VW ? VLOAD(z + e) : VLOADN(z + e, m);
        VT a = VMIN(x, zero - x); /* -|x| */
        VT ac = VMAX(a, C1(-87.0f));
        VT nf = VCVTF(VCVTT(ac * C1(1.44269504f) - C1(0.5f))); /* round(a / ln2), a <= 0 */
        VT r = VFMA(nf, C1(-0.693145751953125f), ac);
        r = VFMA(nf, C1(-1.428606765330187e-6f), r);
        VT p = C1(1.0f / 5040.0f);
        p = VFMA(p, r, C1(1.0f / 720.0f));
        p = VFMA(p, r, C1(1.0f / 120.0f));
        p = VFMA(p, r, C1(1.0f / 24.0f));
        p = VFMA(p, r, C1(1.0f / 6.0f));
        p = VFMA(p, r, C1(0.5f));
        p = VFMA(p, r, one);
        p = VFMA(p, r, one);
        VT t = VLT_SEL(a, C1(-87.0f), zero, p * VEXP2I(VCVTT(nf))); /* exp(-|x|) */
        VT s = t / (C1(2.0f) + t), s2 = s * s;
        VT q = C1(1.0f / 15.0f);
        q = VFMA(q, s2, C1(1.0f / 13.0f));
        q = VFMA(q, s2, C1(1.0f / 11.0f));
        q = VFMA(q, s2, C1(1.0f / 9.0f));
        q = VFMA(q, s2, C1(1.0f / 7.0f));
        q = VFMA(q, s2, C1(1.0f / 5.0f));
        q = VFMA(q, s2, C1(1.0f / 3.0f));
        q = VFMA(q, s2, one);
        VT soft = VMAX(x, zero) + C1(2.0f) * s * q;
        VT inv = one / (one + t);
        VT sig = VLT_SEL(x, zero, t * inv, inv);
        if (m == VW) {
            VSTORE(sp + e, soft);
            VSTORE(sg + e, sig);
        } else {
            VSTOREN(sp + e, soft, m);
            VSTOREN(sg + e, sig, m);
        }
    }
}
#undef C1

/* dst[j][i] = src[i][j] for an 8 x 8 block: data movement only (AVX2 in both variants) */
static inline void transpose8(const float *src, long ls, float *dst, long ld) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ls);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ls), r3 = _mm256_loadu_ps(src + 3 * ls);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ls), r5 = _mm256_loadu_ps(src + 5 * ls);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ls), r7 = _mm256_loadu_ps(src + 7 * ls);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* wt (kout, kin) = W (kin, kout) transposed: 8 x 8 blocks, the edges one by one */
static void transpose(int kin, int kout, const float *restrict W, float *restrict wt) {
    int a8 = kin / 8 * 8, b8 = kout / 8 * 8;
    for (int a = 0; a < a8; a += 8)
        for (int b = 0; b < b8; b += 8) transpose8(W + a * kout + b, kout, wt + b * kin + a, kin);
    for (int b = 0; b < kout; b++)
        for (int a = b < b8 ? a8 : 0; a < kin; a++) wt[b * kin + a] = W[a * kout + b];
}
