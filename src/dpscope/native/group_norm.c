/* GroupNorm kernels for dpscope's clipping engine: per-example weight and bias gradients, alone
   (dpscope_group_norm_grads_*) or with the input gradient in the same pass (dpscope_group_norm_
   backward_*).

   With x_hat = (a - mean_g) * rstd_g the normalised input of example b, group g:
   gw[b, c] = sum_p d[b, c, p] * x_hat[b, c, p] = rstd_g * (sum_p d*a - mean_g * sum_p d)
   gb[b, c] = sum_p d[b, c, p]

   a, d: (B, C, P) contiguous, C = G groups of C/G channels; gw, gb: (B, C), or NULL when not
   wanted. One pass reads a and d once and gathers the four sums per channel (sum a, sum a^2,
   sum d*a, sum d) in double precision, so the group variance, taken as E[a^2] - mean^2, keeps
   float32 data's precision. Torch's ops read a three times (statistics, then a fused backward).

   The backward takes the statistics saved by the forward and, one group of one example at a
   time, gathers sum d*a and sum d per channel (which are the per-example gradients), then forms
   the input gradient from the same channels while they are still in cache:
   dx = rstd*gamma_c*d + k2*a + k3, with per group k2 = (db*mean - ds)*rstd^3/n,
   k3 = -k2*mean - db*rstd/n, ds = sum_c gamma_c*(sum d*a), db = sum_c gamma_c*(sum d) and
   n = (C/G)*P. Torch's backward reads a and d twice from memory (the sums over the whole batch
   first); with the per-example sums as well that made three reads. */

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

#define DEFINE_GROUP_NORM(NAME, SUFFIX, T)                                                      \
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
int dpscope_group_norm_grads_##SUFFIX(const T* restrict a, const T* restrict d, T* restrict gw, \
                                      T* restrict gb, long B, long C, long P, long G, double eps) { \
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
}                                                                                               \
                                                                                                \
/* sums[0..1] = sum d*a, sum d over n values */                                                 \
static void NAME##_channel_grads(const T* restrict a, const T* restrict d, long n, double sums[2]) { \
    gn_dvec sda = {0}, sd = {0};                                                                \
    long p = 0;                                                                                 \
    for (; p + GVD <= n; p += GVD) {                                                            \
        NAME##_vec av, dv;                                                                      \
        memcpy(&av, a + p, sizeof av);                                                          \
        memcpy(&dv, d + p, sizeof dv);                                                          \
        gn_dvec g = __builtin_convertvector(dv, gn_dvec);                                       \
        sda += g * __builtin_convertvector(av, gn_dvec);                                        \
        sd += g;                                                                                \
    }                                                                                           \
    sums[0] = gn_sum(sda), sums[1] = gn_sum(sd);                                                \
    for (; p < n; ++p) sums[0] += (double)d[p] * a[p], sums[1] += d[p];                         \
}                                                                                               \
                                                                                                \
/* mean, rstd: (B, G) as saved by the forward; gamma: (C) or NULL (a scale of 1); dx: (B, C, P) \
   or NULL; gw, gb: (B, C) or NULL. 0 on success, -1 when the scratch could not be allocated */ \
int dpscope_group_norm_backward_##SUFFIX(const T* restrict a, const T* restrict d,              \
                                         const T* restrict mean, const T* restrict rstd,       \
                                         const T* restrict gamma, T* restrict dx, T* restrict gw, \
                                         T* restrict gb, long B, long C, long P, long G) {     \
    const long per_group = C / G;                                                               \
    const double n = (double)per_group * P;                                                     \
    double* channel = malloc(2 * per_group * sizeof(double)); /* sum d*a, sum d per channel */ \
    if (!channel) return -1;                                                                    \
    for (long b = 0; b < B; ++b)                                                                \
        for (long g = 0; g < G; ++g) {                                                          \
            const long c0 = g * per_group, base = (b * C + c0) * P;                             \
            const double mu = mean[b * G + g], rs = rstd[b * G + g];                            \
            double ds = 0, db = 0;                                                              \
            for (long c = 0; c < per_group; ++c) {                                              \
                double* sums = channel + 2 * c;                                                 \
                NAME##_channel_grads(a + base + c * P, d + base + c * P, P, sums);              \
                const double scale = gamma ? gamma[c0 + c] : 1.0;                               \
                ds += scale * sums[0], db += scale * sums[1];                                   \
                if (gw) gw[b * C + c0 + c] = (T)(rs * (sums[0] - mu * sums[1]));                \
                if (gb) gb[b * C + c0 + c] = (T)sums[1];                                        \
            }                                                                                   \
            if (!dx) continue;                                                                  \
            const double k2 = (db * mu - ds) * rs * rs * rs / n, k3 = -k2 * mu - db * rs / n;   \
            const T t2 = (T)k2, t3 = (T)k3;                                                     \
            for (long c = 0; c < per_group; ++c) {                                              \
                const T t1 = (T)(rs * (gamma ? gamma[c0 + c] : 1.0));                           \
                const T* restrict ac = a + base + c * P;                                        \
                const T* restrict dc = d + base + c * P;                                        \
                T* restrict xc = dx + base + c * P;                                             \
                for (long p = 0; p < P; ++p) xc[p] = t1 * dc[p] + t2 * ac[p] + t3;              \
            }                                                                                   \
        }                                                                                       \
    free(channel);                                                                              \
    return 0;                                                                                   \
}

DEFINE_GROUP_NORM(group_norm_f32, f32, float)
DEFINE_GROUP_NORM(group_norm_f64, f64, double)
