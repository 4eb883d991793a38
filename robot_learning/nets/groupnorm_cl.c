/* GroupNorm (optionally followed by ReLU or Mish) over bfloat16 maps stored channels-last,
 * forward and backward; built and loaded by group_norm_kernel.py, which says why it exists.
 *
 * A map is [N, H, W, C] in memory (the U-Net's sequences are [N, L, 1, C]). Each sample is
 * normalized on its own and is small enough (at most a few hundred KB) to stay in the core's
 * cache between the passes over it, so the statistics take a second pass (no cancellation in the
 * variance) for little memory traffic. Sums are float per channel, then double per group. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

/* e^x for x <= 20 (Mish clamps there): 2^k times a degree-6 polynomial on [-ln2/2, ln2/2], within
 * 3e-7 of e^x, far below bf16's rounding. Written so the compiler vectorizes it: k is rounded by
 * adding 1.5 * 2^23 (whose low mantissa bits then hold it), as gcc vectorizes neither libm's expf
 * nor floorf without -ffast-math. */
static inline float exp_small(float x) {
    x = x < -87.f ? -87.f : x;
    float t = x * 1.44269504f + 12582912.f;
    float k = t - 12582912.f;
    float r = x - k * 0.693145752f - k * 1.42860677e-6f;
    float p = 1.f + r * (1.f + r * (0.5f + r * (0.166666672f + r * (0.0416666418f + r * (0.00833336823f + r * 0.00138889183f)))));
    int32_t bits, e;
    float two_k;
    memcpy(&bits, &t, 4);
    e = (bits - 0x4B400000 + 127) << 23;
    memcpy(&two_k, &e, 4);
    return p * two_k;
}

/* Mish, z * tanh(softplus(z)), with one exponential: tanh(log(1 + n)) = (n^2 + 2n) / (n^2 + 2n + 2)
 * for n = e^z. Past z = 20 that ratio is 1 in float, so clamping the exponent changes nothing. */
static inline float mish_tanh_sp(float z, float *sig) {
    float n = exp_small(z < 20.f ? z : 20.f), w = n * (n + 2.f);
    *sig = n / (1.f + n);
    return w / (w + 2.f);
}

static inline float mish(float z) {
    float sig;
    return z * mish_tanh_sp(z, &sig);
}

static inline float mish_grad(float z) {   /* d mish / dz = tanh(sp) + z sech^2(sp) sigmoid(z) */
    float sig, t = mish_tanh_sp(z, &sig);
    return t + z * (1.f - t * t) * sig;
}

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_MISH = 2 };

typedef struct {
    const bf16 *x, *dy;
    const bf16 *res;             /* forward: a residual added before the activation (ReLU only), or NULL */
    const bf16 *y;               /* backward: the forward's output when it had a residual, or NULL */
    bf16 *out, *dres;            /* the result; backward: the residual's gradient, or NULL */
    const float *gamma, *beta;
    float *mean, *rstd;          /* [N, G] */
    float *dgamma_n, *dbeta_n;   /* backward: [N, C] per-sample sums, reduced by the caller */
    int64_t hw;
    int c, g, act;
    float eps;
} Job;

static inline __attribute__((always_inline)) void pass_out(const bf16 *restrict x, const bf16 *restrict res, bf16 *restrict y,
                                                           int64_t hw, int C, const float *restrict scale,
                                                           const float *restrict shift, int act) {
    for (int64_t p = 0; p < hw; p++)
        for (int c = 0; c < C; c++) {
            float v = load(x[p * C + c]) * scale[c] + shift[c];
            if (res) v += load(res[p * C + c]);
            if (act == ACT_RELU) v = v > 0.f ? v : 0.f;
            if (act == ACT_MISH) v = mish(v);
            y[p * C + c] = store(v);
        }
}

static void forward_sample(const Job *j, int64_t n, float *sum, float *scale, float *shift) {
    const int C = j->c, G = j->g, cg = C / G;
    const int64_t hw = j->hw;
    const bf16 *x = j->x + n * hw * C;
    bf16 *y = j->out + n * hw * C;
    const double m = (double)hw * cg;
    memset(sum, 0, sizeof(float) * C);
    for (int64_t p = 0; p < hw; p++)
        for (int c = 0; c < C; c++) sum[c] += load(x[p * C + c]);
    for (int g = 0; g < G; g++) {
        double s = 0;
        for (int c = g * cg; c < (g + 1) * cg; c++) s += sum[c];
        for (int c = g * cg; c < (g + 1) * cg; c++) shift[c] = (float)(s / m);   /* the mean, per channel */
    }
    memset(sum, 0, sizeof(float) * C);
    for (int64_t p = 0; p < hw; p++)
        for (int c = 0; c < C; c++) {
            float d = load(x[p * C + c]) - shift[c];
            sum[c] += d * d;
        }
    for (int g = 0; g < G; g++) {
        double s = 0;
        for (int c = g * cg; c < (g + 1) * cg; c++) s += sum[c];
        float mu = shift[g * cg], r = (float)(1.0 / sqrt(s / m + j->eps));
        j->mean[n * G + g] = mu;
        j->rstd[n * G + g] = r;
        for (int c = g * cg; c < (g + 1) * cg; c++) {
            scale[c] = r * j->gamma[c];
            shift[c] = j->beta[c] - mu * scale[c];
        }
    }
    const bf16 *res = j->res ? j->res + n * hw * C : NULL;
    if (j->act == ACT_MISH) pass_out(x, NULL, y, hw, C, scale, shift, ACT_MISH);   /* no residual with Mish */
    else if (j->act == ACT_RELU) pass_out(x, res, y, hw, C, scale, shift, ACT_RELU);
    else pass_out(x, res, y, hw, C, scale, shift, ACT_NONE);
}

/* The gradient past the activation. ReLU's: zero where the forward's output was clamped, read from
 * that output when it had a residual (RELU_FROM_Y), else recomputed from x (RELU_FROM_X) so the
 * output need not be kept; Mish's derivative is recomputed from x. Inlined with constant modes,
 * so each combination is its own vectorized loop. */
enum { PLAIN = 0, RELU_FROM_X = 1, RELU_FROM_Y = 2, MISH_FROM_X = 3 };

static inline __attribute__((always_inline)) void pass_sums(const bf16 *restrict x, const bf16 *restrict dy, const bf16 *restrict y,
                                                            bf16 *restrict dres, int64_t hw, int C, const float *restrict scale,
                                                            const float *restrict shift, const float *restrict mu, const float *restrict r,
                                                            float *restrict sdy, float *restrict sdyx, int mode, int has_res) {
    for (int64_t p = 0; p < hw; p++)
        for (int c = 0; c < C; c++) {
            float xv = load(x[p * C + c]), g = load(dy[p * C + c]);
            if (mode == RELU_FROM_X) g = xv * scale[c] + shift[c] > 0.f ? g : 0.f;
            if (mode == RELU_FROM_Y) g = load(y[p * C + c]) > 0.f ? g : 0.f;
            if (mode == MISH_FROM_X) g *= mish_grad(xv * scale[c] + shift[c]);
            if (has_res) dres[p * C + c] = store(g);
            sdy[c] += g;
            sdyx[c] += g * (xv - mu[c]) * r[c];
        }
}

static inline __attribute__((always_inline)) void pass_dx(const bf16 *restrict x, const bf16 *restrict dy, const bf16 *restrict y, bf16 *restrict dx,
                                                          int64_t hw, int C, const float *restrict scale, const float *restrict shift,
                                                          const float *restrict a, const float *restrict b, const float *restrict d, int mode) {
    for (int64_t p = 0; p < hw; p++)
        for (int c = 0; c < C; c++) {
            float xv = load(x[p * C + c]), g = load(dy[p * C + c]);
            if (mode == RELU_FROM_X) g = xv * scale[c] + shift[c] > 0.f ? g : 0.f;
            if (mode == RELU_FROM_Y) g = load(y[p * C + c]) > 0.f ? g : 0.f;
            if (mode == MISH_FROM_X) g *= mish_grad(xv * scale[c] + shift[c]);
            dx[p * C + c] = store(a[c] * g + b[c] * xv + d[c]);
        }
}

static void backward_sample(const Job *j, int64_t n, float *sdy, float *sdyx, float *a, float *b, float *d,
                            float *scale, float *shift) {
    const int C = j->c, G = j->g, cg = C / G;
    const int64_t hw = j->hw;
    const bf16 *x = j->x + n * hw * C, *dy = j->dy + n * hw * C;
    bf16 *dx = j->out + n * hw * C;
    const bf16 *y = j->y ? j->y + n * hw * C : NULL;
    bf16 *dres = j->dres ? j->dres + n * hw * C : NULL;
    const double m = (double)hw * cg;
    for (int c = 0; c < C; c++) {
        float mu = j->mean[n * G + c / cg], r = j->rstd[n * G + c / cg];
        scale[c] = r * j->gamma[c];
        shift[c] = j->beta[c] - mu * scale[c];
        a[c] = mu;   /* mean and rstd per channel, for xhat */
        b[c] = r;
    }
    memset(sdy, 0, sizeof(float) * C);
    memset(sdyx, 0, sizeof(float) * C);
    const int mode = j->act == ACT_MISH ? MISH_FROM_X : j->act == ACT_NONE ? PLAIN : y ? RELU_FROM_Y : RELU_FROM_X;
#define SUMS(R, H) pass_sums(x, dy, y, dres, hw, C, scale, shift, a, b, sdy, sdyx, R, H)
    switch (mode * 2 + (dres != NULL)) {   /* Mish never has a residual: 6 */
        case 0: SUMS(PLAIN, 0); break;
        case 1: SUMS(PLAIN, 1); break;
        case 2: SUMS(RELU_FROM_X, 0); break;
        case 3: SUMS(RELU_FROM_X, 1); break;
        case 4: SUMS(RELU_FROM_Y, 0); break;
        case 5: SUMS(RELU_FROM_Y, 1); break;
        default: SUMS(MISH_FROM_X, 0); break;
    }
#undef SUMS
    memcpy(j->dbeta_n + n * C, sdy, sizeof(float) * C);
    memcpy(j->dgamma_n + n * C, sdyx, sizeof(float) * C);
    for (int g = 0; g < G; g++) {
        double sa = 0, sb = 0;
        for (int c = g * cg; c < (g + 1) * cg; c++) {
            sa += (double)j->gamma[c] * sdyx[c];
            sb += (double)j->gamma[c] * sdy[c];
        }
        double mu = j->mean[n * G + g], r = j->rstd[n * G + g];
        for (int c = g * cg; c < (g + 1) * cg; c++) {
            a[c] = (float)(r * j->gamma[c]);
            b[c] = (float)(-r * r * sa / m);
            d[c] = (float)(-r * sb / m + r * r * sa * mu / m);
        }
    }
    if (mode == PLAIN) pass_dx(x, dy, y, dx, hw, C, scale, shift, a, b, d, PLAIN);
    else if (mode == RELU_FROM_X) pass_dx(x, dy, y, dx, hw, C, scale, shift, a, b, d, RELU_FROM_X);
    else if (mode == MISH_FROM_X) pass_dx(x, dy, y, dx, hw, C, scale, shift, a, b, d, MISH_FROM_X);
    else pass_dx(x, dy, y, dx, hw, C, scale, shift, a, b, d, RELU_FROM_Y);
}

/* Samples are shared among ``threads`` OpenMP threads. The library links the libgomp torch has
 * already loaded (the same soname), so these are torch's own pool: its threads are awake and
 * nothing competes with them for the cores, as separately created threads did. */
void gn_forward(const bf16 *x, const bf16 *res, const float *gamma, const float *beta, bf16 *y, float *mean,
                float *rstd, int64_t n, int64_t hw, int c, int g, float eps, int act, int threads) {
    const Job j = {.x = x, .res = res, .out = y, .gamma = gamma, .beta = beta, .mean = mean, .rstd = rstd, .hw = hw, .c = c,
                   .g = g, .act = act, .eps = eps};
#pragma omp parallel num_threads(threads)
    {
        float *buf = malloc(sizeof(float) * 3 * c);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) forward_sample(&j, i, buf, buf + c, buf + 2 * c);
        free(buf);
    }
}

void gn_backward(const bf16 *dy, const bf16 *x, const bf16 *y, const float *mean, const float *rstd,
                 const float *gamma, const float *beta, bf16 *dx, bf16 *dres, float *dgamma_n, float *dbeta_n,
                 int64_t n, int64_t hw, int c, int g, int act, int threads) {
    const Job j = {.x = x, .dy = dy, .y = y, .out = dx, .dres = dres, .gamma = gamma, .beta = beta, .mean = (float *)mean,
                   .rstd = (float *)rstd, .dgamma_n = dgamma_n, .dbeta_n = dbeta_n, .hw = hw, .c = c, .g = g,
                   .act = act};
#pragma omp parallel num_threads(threads)
    {
        float *buf = malloc(sizeof(float) * 7 * c);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            backward_sample(&j, i, buf, buf + c, buf + 2 * c, buf + 3 * c, buf + 4 * c, buf + 5 * c, buf + 6 * c);
        free(buf);
    }
}
