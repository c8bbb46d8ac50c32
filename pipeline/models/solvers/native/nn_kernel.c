/* ensemble_nn's fused CPU step (issue 19): a member's forward, pinball gradient, backward and
 * Adam update in one pass, member after member, so its weights and moments stay in cache
 * across its whole epoch. Loaded with ctypes by pipeline/models/solvers/_nn_native.py.
 *
 * Built twice from this source: VW = 16 (AVX-512) and VW = 8 (AVX2 + FMA). The bits do not
 * depend on the variant: vectors run across independent outputs only (never across a sum),
 * every sum runs in one fixed order, products are summed with an explicit FMA in the vector
 * body and in the masked tails alike, and -ffp-contract=off keeps the compiler from fusing
 * anything else. Elementwise loops the compiler vectorises keep each element's operations.
 *
 * A member's parameters are one float row of `width` floats (Layout order: W_0..W_{L-1}
 * (in, out), b_0..b_{L-1}, AR (2C, H)), each parameter at the offset the caller gives.
 */
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

#define MAXL 256 /* linear layers at most (checked by the caller) */
#define MAXQ 256 /* quantiles at most */
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int L, C, H, Q, bs, width, p, hq;
    int sizes[MAXL + 1];
    int off[2 * MAXL + 1];
    float tau[MAXQ];
} Dims;

static int read_dims(const int32_t *d, const double *taus, Dims *o) {
    o->L = d[0]; o->C = d[1]; o->H = d[2]; o->Q = d[3]; o->bs = d[4]; o->width = d[5];
    if (o->L < 1 || o->L > MAXL || o->Q < 1 || o->Q > MAXQ) return -1;
    for (int i = 0; i <= o->L; i++) o->sizes[i] = d[6 + i];
    for (int i = 0; i < 2 * o->L + 1; i++) o->off[i] = d[7 + o->L + i];
    for (int j = 0; j < o->Q; j++) o->tau[j] = (float)taus[j];
    o->p = o->sizes[0];
    o->hq = o->sizes[o->L];
    return 0;
}

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

typedef struct {
    float *x, *y, *w, *acts[MAXL], *out, *dz, *dx[2], *wt, *grad, *sig, *sp, *dshift;
    int32_t *cid;
    void *mem;
} Work;

static int work_alloc(const Dims *d, int n, Work *k) {
    int umax = d->p;
    for (int i = 0; i <= d->L; i++) umax = d->sizes[i] > umax ? d->sizes[i] : umax;
    long need = (long)n * d->p + 2L * n * d->H + 4L * n * d->hq + 2L * n * umax
                + (long)umax * umax + d->width + (long)n * d->H + 16L * (2 * d->L + 18);
    for (int i = 1; i < d->L; i++) need += (long)n * d->sizes[i];
    float *m = aligned_alloc(64, ((need * 4 + (long)n * 4 + 63) / 64) * 64);
    if (!m) return -1;
    memset(m, 0, need * 4);
    k->mem = m;
    /* every buffer starts on a 64-byte line */
#define TAKE(ptr, count) do { ptr = m; m += ((long)(count) + 15) / 16 * 16; } while (0)
    TAKE(k->x, (long)n * d->p);
    TAKE(k->y, (long)n * d->H);
    TAKE(k->w, (long)n * d->H);
    for (int i = 1; i < d->L; i++) TAKE(k->acts[i], (long)n * d->sizes[i]);
    TAKE(k->out, (long)n * d->hq);
    TAKE(k->dz, (long)n * d->hq);
    TAKE(k->sig, (long)n * d->hq);
    TAKE(k->sp, (long)n * d->hq);
    TAKE(k->dx[0], (long)n * umax);
    TAKE(k->dx[1], (long)n * umax);
    TAKE(k->wt, (long)umax * umax);
    TAKE(k->grad, d->width);
    TAKE(k->dshift, (long)n * d->H);
    k->cid = (int32_t *)m;
#undef TAKE
    k->acts[0] = k->x;
    return 0;
}

/* rows of this batch into the work buffers (row ids index the data tables) */
static void gather(const Dims *d, int n, const int32_t *rows, const float *X, const int32_t *cid,
                   const float *Y, const float *Wm, Work *k) {
    int p = d->p, H = d->H;
    for (int r = 0; r < n; r++) {
        long i = rows[r];
        memcpy(k->x + r * p, X + i * p, p * sizeof(float));
        memcpy(k->y + r * H, Y + i * H, H * sizeof(float));
        memcpy(k->w + r * H, Wm + i * H, H * sizeof(float));
        k->cid[r] = cid[i];
    }
}

static void forward(const Dims *d, int n, const float *prm, Work *k) {
    int L = d->L;
    for (int i = 0; i < L - 1; i++)
        gemm(n, d->sizes[i], d->sizes[i + 1], k->acts[i], d->sizes[i], 1, prm + d->off[i],
             prm + d->off[L + i], k->acts[i + 1], 1);
    gemm(n, d->sizes[L - 1], d->hq, k->acts[L - 1], d->sizes[L - 1], 1, prm + d->off[L - 1],
         prm + d->off[2 * L - 1], k->out, 0);
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

/* d loss / d head output (dz, rows layout) and the AR table's gradient (gar, zeroed) */
INLINE void loss_grad(const Dims *d, int n, int Q, float denom, const float *ar, float *gar,
                      Work *k) {
    int H = d->H, C = d->C, hq = d->hq;
    float dzl[MAXQ], qv[MAXQ];
    for (int r = 0; r < n; r++) {
        float y0 = k->x[r * d->p], *o = k->out + r * hq, *dz = k->dz + r * hq;
        const float *sg = k->sig + r * hq, *sp = k->sp + r * hq;
        int c = k->cid[r];
        for (int h = 0; h < H; h++) {
            float ws = k->w[r * H + h] / denom, y = k->y[r * H + h];
            qv[0] = o[h * Q] + (ar[c * H + h] + ar[(C + c) * H + h] * y0);
            for (int j = 1; j < Q; j++) qv[j] = qv[j - 1] + sp[h * Q + j];
            /* d pinball / d q_j = (1[y < q_j] - tau_j) * ws */
            for (int j = 0; j < Q; j++) dzl[j] = ((y < qv[j] ? 1.0f : 0.0f) - d->tau[j]) * ws;
            /* q_j = q_0 + sum_{1 <= i <= j} softplus(out_i): reverse cumulative sums */
            for (int j = Q - 2; j >= 0; j--) dzl[j] += dzl[j + 1];
            gar[c * H + h] += dzl[0];
            gar[(C + c) * H + h] += dzl[0] * y0;
            dz[h * Q] = dzl[0];
            for (int j = 1; j < Q; j++) dz[h * Q + j] = dzl[j] * sg[h * Q + j];
        }
    }
}

static void step(const Dims *d, int n, float *prm, float *m, float *v, long t, const double *hyper,
                 Work *k) {
    int L = d->L, H = d->H, Q = d->Q, C = d->C, hq = d->hq;
    const float *ar = prm + d->off[2 * L];
    float *g = k->grad, *gar = g + d->off[2 * L];
    /* loss weights w / (Q * available targets of the batch): a count, exact in float */
    float count = 0.0f;
    for (int e = 0; e < n * H; e++) count += k->w[e];
    float denom = (count > 1.0f ? count : 1.0f) * (float)Q;
    forward(d, n, prm, k);
    softplus_all(n * hq, k->out, k->sp, k->sig);
    memset(gar, 0, sizeof(float) * 2 * C * H);
    /* Q as a constant where it is 1 or 3 (the seed's): the quantile loops unroll into registers */
    if (Q == 3)
        loss_grad(d, n, 3, denom, ar, gar, k);
    else if (Q == 1)
        loss_grad(d, n, 1, denom, ar, gar, k);
    else
        loss_grad(d, n, Q, denom, ar, gar, k);
    /* head and trunk gradients; dcur = d loss / d (layer i's output) */
    const float *dcur = k->dz;
    for (int i = L - 1; i >= 0; i--) {
        int kin = d->sizes[i], kout = d->sizes[i + 1];
        float *gb = g + d->off[L + i];
        gemm(kin, n, kout, k->acts[i], 1, kin, dcur, 0, g + d->off[i], 0);
        colsum(n, kout, dcur, gb);
        if (i == 0) break;
        transpose(kin, kout, prm + d->off[i], k->wt);
        float *dx = k->dx[i & 1];
        gemm(n, kout, kin, dcur, kout, 1, k->wt, 0, dx, 0);
        const float *act = k->acts[i];
        for (int e = 0; e < n * kin; e++) dx[e] = act[e] > 0.0f ? dx[e] : 0.0f;
        dcur = dx;
    }
    /* Adam (torch's formula; 1 / sqrt(bias correction 2) as a factor), step count t */
    double lr = hyper[0], b1 = hyper[1], b2 = hyper[2];
    float ss = (float)(lr / (1.0 - pow(b1, (double)t)));
    float inv_bc2 = (float)(1.0 / sqrt(1.0 - pow(b2, (double)t)));
    float omb1 = (float)(1.0 - b1), fb2 = (float)b2, omb2 = (float)(1.0 - b2);
    float eps = (float)hyper[3];
    int width = d->width;
    for (int e = 0; e < width; e++) {
        float gr = g[e];
        float mm = m[e] + omb1 * (gr - m[e]);
        float vv = fb2 * v[e] + omb2 * (gr * gr);
        m[e] = mm;
        v[e] = vv;
        prm[e] = prm[e] - ss * mm / (sqrtf(vv) * inv_bc2 + eps);
    }
}

#define FTZ_DAZ 0x8040

/* Member a of `members` takes n_steps[a] Adam steps (its epoch) on rows[a, :n_steps[a] * bs]
 * (bs per step; the caller pads a short last batch with a row of weight 0), its step count
 * running from t0[a] + 1. Returns 0, or -1 on bad dims / no memory. */
int nn_train(const int32_t *dims, const double *hyper, const double *taus, int A,
             const int64_t *members, const int32_t *rows, int64_t row_stride,
             const int32_t *n_steps, const int64_t *t0, float *params, float *m, float *v,
             const float *X, const int32_t *cid, const float *Y, const float *Wm) {
    Dims d;
    Work k;
    if (read_dims(dims, taus, &d) || work_alloc(&d, d.bs, &k)) return -1;
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | FTZ_DAZ); /* subnormals are zero while training (see _nn_step) */
    for (int a = 0; a < A; a++) {
        long b = members[a] * (long)d.width;
        for (int s = 0; s < n_steps[a]; s++) {
            gather(&d, d.bs, rows + a * row_stride + (long)s * d.bs, X, cid, Y, Wm, &k);
            step(&d, d.bs, params + b, m + b, v + b, t0[a] + s + 1, hyper, &k);
        }
    }
    _mm_setcsr(csr);
    free(k.mem);
    return 0;
}

/* Validation loss of each member: the mean pinball loss (over quantiles, then over the
 * available targets) on its n_rows[a] rows rows[a, :n_rows[a]], into out[a]. */
int nn_validate(const int32_t *dims, const double *taus, int A, const int64_t *members,
                const int32_t *rows, int64_t row_stride, const int32_t *n_rows,
                const float *params, const float *X, const int32_t *cid, const float *Y,
                const float *Wm, double *out) {
    Dims d;
    Work k;
    if (read_dims(dims, taus, &d) || work_alloc(&d, d.bs, &k)) return -1;
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | FTZ_DAZ);
    int H = d.H, Q = d.Q, C = d.C, hq = d.hq;
    for (int a = 0; a < A; a++) {
        const float *prm = params + members[a] * (long)d.width, *ar = prm + d.off[2 * d.L];
        double total = 0.0, wsum = 0.0;
        for (int lo = 0; lo < n_rows[a]; lo += d.bs) {
            int n = n_rows[a] - lo < d.bs ? n_rows[a] - lo : d.bs;
            gather(&d, n, rows + a * row_stride + lo, X, cid, Y, Wm, &k);
            forward(&d, n, prm, &k);
            softplus_all(n * hq, k.out, k.sp, k.sig);
            for (int r = 0; r < n; r++) {
                float y0 = k.x[r * d.p], *o = k.out + r * hq, *sp = k.sp + r * hq;
                int c = k.cid[r];
                for (int h = 0; h < H; h++) {
                    float w = k.w[r * H + h], y = k.y[r * H + h];
                    float q = o[h * Q] + (ar[c * H + h] + ar[(C + c) * H + h] * y0), pin = 0.0f;
                    for (int j = 0; j < Q; j++) {
                        if (j) q = q + sp[h * Q + j];
                        float u = y - q;
                        pin += d.tau[j] * u + (u < 0.0f ? -u : 0.0f);
                    }
                    total += (double)(pin / (float)Q) * w;
                    wsum += w;
                }
            }
        }
        out[a] = total / (wsum > 1.0 ? wsum : 1.0);
    }
    _mm_setcsr(csr);
    free(k.mem);
    return 0;
}

int nn_vector_width(void) { return VW; }
