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
#include "nn_simd.h"

#define MAXL 256 /* linear layers at most (checked by the caller) */
#define MAXQ 256 /* quantiles at most */

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

typedef struct {
    float *x, *y, *w, *acts[MAXL], *out, *dz, *dx[2], *wt, *grad, *sig, *sp;
    int32_t *cid;
    void *mem;
} Work;

static int work_alloc(const Dims *d, int n, Work *k) {
    int umax = d->p;
    for (int i = 0; i <= d->L; i++) umax = d->sizes[i] > umax ? d->sizes[i] : umax;
    long need = (long)n * d->p + 2L * n * d->H + 4L * n * d->hq + 2L * n * umax
                + (long)umax * umax + d->width + 16L * (2 * d->L + 18);
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
