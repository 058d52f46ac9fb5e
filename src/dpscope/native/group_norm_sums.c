/* Per-example weight and bias gradients of a GroupNorm, for dpscope's clipping engine.

   With x_hat = (a - mean_g) * rstd_g the normalised input of example b, group g:
   gw[b, c] = sum_p d[b, c, p] * x_hat[b, c, p] = rstd_g * (sum_p d*a - mean_g * sum_p d)
   gb[b, c] = sum_p d[b, c, p]

   a, d: (B, C, P) contiguous, C = G groups of C/G channels; gw, gb: (B, C), or NULL when not
   wanted. One pass reads a and d once and gathers the four sums per channel (sum a, sum a^2,
   sum d*a, sum d) in double precision, so the group variance, taken as E[a^2] - mean^2, keeps
   float32 data's precision. Torch's ops read a three times (statistics, then a fused backward). */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define GVD 8 /* doubles per accumulator */
#else
#define GVD 4
#endif

typedef double gn_dvec __attribute__((vector_size(GVD * sizeof(double))));

static inline double gn_sum(gn_dvec v) {
    double total = 0;
    for (int k = 0; k < GVD; ++k) total += v[k];
    return total;
}

#define DEFINE_GROUP_NORM(NAME, T)                                                              \
typedef T NAME##_vec __attribute__((vector_size(GVD * sizeof(T))));                            \
/* sums[0..3] = sum a, sum a^2, sum d*a, sum d over n values */                                 \
static void NAME##_channel(const T* restrict a, const T* restrict d, long n, double sums[4]) {  \
    gn_dvec sa = {0}, saa = {0}, sda = {0}, sd = {0};                                           \
    long p = 0;                                                                                 \
    for (; p + GVD <= n; p += GVD) {                                                            \
        NAME##_vec av, dv;                                                                      \
        memcpy(&av, a + p, sizeof av);                                                          \
        memcpy(&dv, d + p, sizeof dv);                                                          \
        gn_dvec x = __builtin_convertvector(av, gn_dvec), g = __builtin_convertvector(dv, gn_dvec); \
        sa += x;                                                                                \
        saa += x * x;                                                                           \
        sda += g * x;                                                                           \
        sd += g;                                                                                \
    }                                                                                           \
    sums[0] = gn_sum(sa), sums[1] = gn_sum(saa), sums[2] = gn_sum(sda), sums[3] = gn_sum(sd);   \
    for (; p < n; ++p) {                                                                        \
        double x = a[p], g = d[p];                                                              \
        sums[0] += x, sums[1] += x * x, sums[2] += g * x, sums[3] += g;                         \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* 0 on success, -1 when the scratch could not be allocated */                                \
int NAME(const T* restrict a, const T* restrict d, T* restrict gw, T* restrict gb, long B,      \
         long C, long P, long G, double eps) {                                                  \
    const long per_group = C / G;                                                               \
    double* channel = malloc(2 * per_group * sizeof(double)); /* sum d*a, sum d per channel */ \
    if (!channel) return -1;                                                                    \
    for (long b = 0; b < B; ++b)                                                                \
        for (long g = 0; g < G; ++g) {                                                          \
            const long c0 = g * per_group, base = (b * C + c0) * P;                             \
            double sa = 0, saa = 0, sums[4];                                                    \
            for (long c = 0; c < per_group; ++c) {                                              \
                NAME##_channel(a + base + c * P, d + base + c * P, P, sums);                    \
                sa += sums[0], saa += sums[1];                                                  \
                channel[2 * c] = sums[2], channel[2 * c + 1] = sums[3];                         \
            }                                                                                   \
            const double count = (double)per_group * P, mean = sa / count;                      \
            const double var = saa / count - mean * mean;                                       \
            const double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);                          \
            for (long c = 0; c < per_group; ++c) {                                              \
                if (gw) gw[b * C + c0 + c] = (T)(rstd * (channel[2 * c] - mean * channel[2 * c + 1])); \
                if (gb) gb[b * C + c0 + c] = (T)channel[2 * c + 1];                             \
            }                                                                                   \
        }                                                                                       \
    free(channel);                                                                              \
    return 0;                                                                                   \
}

DEFINE_GROUP_NORM(dpscope_group_norm_grads_f32, float)
DEFINE_GROUP_NORM(dpscope_group_norm_grads_f64, double)
