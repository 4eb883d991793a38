/* bfloat16 <-> float for the C kernels next to this file (see c_kernel.py). */
#ifndef ROBOT_LEARNING_BF16_H
#define ROBOT_LEARNING_BF16_H
#include <stdint.h>

typedef uint16_t bf16;

static inline float load(bf16 v) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)v << 16;
    return c.f;
}

static inline bf16 store(float f) {   /* round to nearest even; a NaN stays a NaN */
    union { uint32_t u; float f; } c;
    c.f = f;
    uint32_t u = c.u;
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (bf16)(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : r);
}
#endif
