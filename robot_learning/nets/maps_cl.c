/* Two operations on bfloat16 maps stored channels-last ([N, H, W, C] in memory) that torch does
 * with several times the memory traffic: max pooling (forward and backward) and the windows a
 * convolution's weight gradient multiplies. Built and loaded by map_kernels.py, which says why.
 *
 * Max pooling: the forward pass keeps, per output element, the window offset
 * (ky * k + kx) of its maximum in one byte, where torch keeps an int64 index: an eighth of the
 * memory. Ties go to the first offset in the window's row-major order and a NaN wins over
 * numbers, as in torch, so both pick the same element. The backward pass accumulates each
 * sample's input gradient in float while it is in the core's cache, then rounds it once. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

typedef struct {
    int64_t n;
    int h, w, c, k, s, p, ho, wo;
} Shape;

/* The taps [lo, hi) of a window along one side that fall inside the map, for output o. */
static inline void taps(int o, int s, int p, int k, int size, int *lo, int *hi) {
    int first = o * s - p;
    *lo = first < 0 ? -first : 0;
    *hi = size - first < k ? size - first : k;
}

static void forward_sample(const Shape *d, const bf16 *restrict x, bf16 *restrict y, uint8_t *restrict arg,
                           float *restrict best) {
    const int C = d->c;
    int y0, y1, x0, x1;
    for (int oy = 0; oy < d->ho; oy++) {
        taps(oy, d->s, d->p, d->k, d->h, &y0, &y1);
        for (int ox = 0; ox < d->wo; ox++) {
            taps(ox, d->s, d->p, d->k, d->w, &x0, &x1);
            const int64_t o = ((int64_t)oy * d->wo + ox) * C;
            const int iy = oy * d->s - d->p, ix = ox * d->s - d->p;   /* the window's corner, maybe outside */
            for (int c = 0; c < C; c++) {   /* the first tap inside, then any greater one (or a NaN) */
                best[c] = load(x[((int64_t)(iy + y0) * d->w + ix + x0) * C + c]);
                arg[o + c] = (uint8_t)(y0 * d->k + x0);
            }
            for (int ky = y0; ky < y1; ky++)
                for (int kx = x0; kx < x1; kx++) {
                    const bf16 *src = x + ((int64_t)(iy + ky) * d->w + ix + kx) * C;
                    const uint8_t at = (uint8_t)(ky * d->k + kx);
                    for (int c = 0; c < C; c++) {
                        float v = load(src[c]);
                        int take = v > best[c] || v != v;
                        best[c] = take ? v : best[c];
                        arg[o + c] = take ? at : arg[o + c];
                    }
                }
            for (int c = 0; c < C; c++) y[o + c] = store(best[c]);
        }
    }
}

static void backward_sample(const Shape *d, const bf16 *restrict dy, const uint8_t *restrict arg, bf16 *restrict dx,
                            float *restrict acc) {
    const int C = d->c;
    const int64_t size = (int64_t)d->h * d->w * C;
    int y0, y1, x0, x1;
    memset(acc, 0, sizeof(float) * size);
    for (int oy = 0; oy < d->ho; oy++) {
        taps(oy, d->s, d->p, d->k, d->h, &y0, &y1);
        for (int ox = 0; ox < d->wo; ox++) {
            taps(ox, d->s, d->p, d->k, d->w, &x0, &x1);
            const int64_t o = ((int64_t)oy * d->wo + ox) * C;
            const int iy = oy * d->s - d->p, ix = ox * d->s - d->p;
            for (int ky = y0; ky < y1; ky++)   /* each gradient to the tap that was its maximum */
                for (int kx = x0; kx < x1; kx++) {
                    float *to = acc + ((int64_t)(iy + ky) * d->w + ix + kx) * C;
                    const uint8_t at = (uint8_t)(ky * d->k + kx);
                    for (int c = 0; c < C; c++) to[c] += arg[o + c] == at ? load(dy[o + c]) : 0.f;
                }
        }
    }
    for (int64_t i = 0; i < size; i++) dx[i] = store(acc[i]);
}

/* Samples are shared among ``threads`` OpenMP threads (torch's pool: see c_kernel.py). */
void mp_forward(const bf16 *x, bf16 *y, uint8_t *arg, int64_t n, int h, int w, int c, int k, int s, int p, int ho,
                int wo, int threads) {
    const Shape d = {n, h, w, c, k, s, p, ho, wo};
#pragma omp parallel num_threads(threads)
    {
        float *best = malloc(sizeof(float) * c);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            forward_sample(&d, x + i * h * w * c, y + i * ho * wo * c, arg + i * ho * wo * c, best);
        free(best);
    }
}

void mp_backward(const bf16 *dy, const uint8_t *arg, bf16 *dx, int64_t n, int h, int w, int c, int k, int s, int p,
                 int ho, int wo, int threads) {
    const Shape d = {n, h, w, c, k, s, p, ho, wo};
#pragma omp parallel num_threads(threads)
    {
        float *acc = malloc(sizeof(float) * (size_t)h * w * c);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            backward_sample(&d, dy + i * ho * wo * c, arg + i * ho * wo * c, dx + i * h * w * c, acc);
        free(acc);
    }
}

/* Each output pixel's receptive field as one row: x [N, H, W, C] -> out [N * Ho * Wo, k * k * C],
 * in the order (ky, kx, c) of a channels-last weight, zeros where the window hangs over the edge.
 * One pass writing rows in order, where torch padded a copy and stacked k * k strided slices. */
void windows(const bf16 *x, bf16 *out, int64_t n, int h, int w, int c, int k, int s, int p, int ho, int wo,
             int threads) {
    const int64_t row = (int64_t)k * k * c;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const bf16 *xi = x + i * (int64_t)h * w * c;
        bf16 *o = out + i * (int64_t)ho * wo * row;
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++)
                for (int ky = 0; ky < k; ky++) {
                    int iy = oy * s - p + ky;
                    for (int kx = 0; kx < k; kx++, o += c) {
                        int ix = ox * s - p + kx;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) memset(o, 0, sizeof(bf16) * (size_t)c);
                        else memcpy(o, xi + ((int64_t)iy * w + ix) * c, sizeof(bf16) * (size_t)c);
                    }
                }
    }
}
