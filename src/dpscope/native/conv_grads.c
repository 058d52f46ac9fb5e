/* Per-example kernel gradients of a 2-d convolution (groups 1), for dpscope's clipping engine.

   g[b, ky, kx, c, o] = sum_{oy, ox} x[b, oy*sh + ky*dh, ox*sw + kx*dw, c] * d[b, oy, ox, o]

   x: (B, Hp, Wp, C), the padded input, channels innermost; d: (B, OH, OW, O), the output
   gradient; g: (B, KH, KW, C, O), or with g NULL, sq: (B,) the squared norms of the per-example
   gradients, which are then never stored. All contiguous. The caller checks that every index read is
   in bounds. Each example's gradient is a (taps x O) block, formed a few taps at a time with
   their accumulators held in registers while the positions stream by: no patch matrix is
   written, the input rows are read where they lie. Vector types are GCC's (clang has them
   too), so the compiler picks the instructions for the machine it runs on. */

#include <string.h>

#if defined(__AVX512F__)
#define VF 16 /* floats per accumulator: one 512-bit register */
#define VD 8
#else
#define VF 8 /* two 128-bit or one 256-bit register */
#define VD 4
#endif
#if defined(__AVX512F__) || defined(__aarch64__)
#define WIDE 1 /* 32 vector registers: room for 16 accumulators */
#else
#define WIDE 0
#endif
/* Tiles of N taps x VO output channels, starting at tap xs and channel o0: N accumulators,
   each VO channels wide, held in registers while the positions stream by. */
#define DEFINE_TILE(NAME, T, N)                                                                 \
static void NAME##_tile##N(const T* restrict xs, const T* restrict db, T* restrict out, T* sq,  \
                           long OH, long OW, long O, long rowstride, long sh, long sw, long C,  \
                           long o0) {                                                           \
    NAME##_vec acc[N];                                                                          \
    for (int i = 0; i < N; ++i) acc[i] = (NAME##_vec){0};                                       \
    for (long oy = 0; oy < OH; ++oy) {                                                          \
        const T* xr = xs + oy * sh * rowstride;                                                 \
        const T* dr = db + oy * OW * O + o0;                                                    \
        for (long ox = 0; ox < OW; ++ox) {                                                      \
            const T* xp = xr + ox * sw * C;                                                     \
            NAME##_vec dv;                                                                      \
            memcpy(&dv, dr + ox * O, sizeof dv);                                                \
            for (int i = 0; i < N; ++i) acc[i] += xp[i] * dv;                                   \
        }                                                                                       \
    }                                                                                           \
    if (sq) { /* the block's squared norm only: nothing is stored */                           \
        NAME##_vec total = acc[0] * acc[0];                                                     \
        for (int i = 1; i < N; ++i) total += acc[i] * acc[i];                                   \
        for (int v = 0; v < (int)(sizeof total / sizeof(T)); ++v) *sq += total[v];              \
    } else                                                                                      \
        for (int i = 0; i < N; ++i) memcpy(out + i * O + o0, &acc[i], sizeof acc[i]);           \
}

/* The same with two vectors of output channels per tap: each broadcast input value feeds two
   multiply-adds, for layers with many output channels (16 accumulators: 512-bit machines). */
#define DEFINE_WIDE_TILE(NAME, T)                                                               \
static void NAME##_wide8(const T* restrict xs, const T* restrict db, T* restrict out, T* sq,    \
                         long OH, long OW, long O, long rowstride, long sh, long sw, long C,    \
                         long o0) {                                                             \
    NAME##_vec lo[8], hi[8];                                                                    \
    const long half = sizeof(NAME##_vec) / sizeof(T);                                           \
    for (int i = 0; i < 8; ++i) lo[i] = hi[i] = (NAME##_vec){0};                                \
    for (long oy = 0; oy < OH; ++oy) {                                                          \
        const T* xr = xs + oy * sh * rowstride;                                                 \
        const T* dr = db + oy * OW * O + o0;                                                    \
        for (long ox = 0; ox < OW; ++ox) {                                                      \
            const T* xp = xr + ox * sw * C;                                                     \
            NAME##_vec d0, d1;                                                                  \
            memcpy(&d0, dr + ox * O, sizeof d0);                                                \
            memcpy(&d1, dr + ox * O + half, sizeof d1);                                         \
            for (int i = 0; i < 8; ++i) {                                                       \
                lo[i] += xp[i] * d0;                                                            \
                hi[i] += xp[i] * d1;                                                            \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    if (sq) {                                                                                   \
        NAME##_vec total = lo[0] * lo[0] + hi[0] * hi[0];                                       \
        for (int i = 1; i < 8; ++i) total += lo[i] * lo[i] + hi[i] * hi[i];                     \
        for (int v = 0; v < (int)half; ++v) *sq += total[v];                                    \
    } else                                                                                      \
        for (int i = 0; i < 8; ++i) {                                                           \
            memcpy(out + i * O + o0, &lo[i], sizeof lo[i]);                                     \
            memcpy(out + i * O + o0 + half, &hi[i], sizeof hi[i]);                              \
        }                                                                                       \
}

#define DEFINE(NAME, T, VO)                                                                     \
typedef T NAME##_vec __attribute__((vector_size(VO * sizeof(T))));                             \
DEFINE_TILE(NAME, T, 8) /* 8 accumulators hide the FMA latency */                               \
DEFINE_TILE(NAME, T, 4)                                                                         \
DEFINE_TILE(NAME, T, 2)                                                                         \
DEFINE_TILE(NAME, T, 1)                                                                         \
DEFINE_WIDE_TILE(NAME, T)                                                                       \
                                                                                                \
/* channels [o0, O) of taps [0, taps), one at a time: what the vector tiles leave */            \
static void NAME##_edge(const T* restrict xs, const T* restrict db, T* restrict out, T* sq,    \
                        long OH, long OW, long O, long rowstride, long sh, long sw, long C,    \
                        long taps, long o0) {                                                   \
    for (long i = 0; i < taps; ++i)                                                             \
        for (long o = o0; o < O; ++o) {                                                         \
            T acc = 0;                                                                          \
            for (long oy = 0; oy < OH; ++oy)                                                    \
                for (long ox = 0; ox < OW; ++ox)                                                \
                    acc += xs[oy * sh * rowstride + ox * sw * C + i] * db[(oy * OW + ox) * O + o]; \
            if (sq) *sq += acc * acc; else out[i * O + o] = acc;                                \
        }                                                                                       \
}                                                                                               \
                                                                                                \
/* taps [j, run) of channels [o0, o0 + VO), in tiles of 8, 4, 2 and 1 */                        \
static void NAME##_narrow(const T* restrict xs, const T* restrict db, T* restrict out, T* sq,   \
                          long OH, long OW, long O, long rowstride, long sh, long sw, long C,   \
                          long o0, long j, long run) {                                          \
    for (; j + 8 <= run; j += 8)                                                                \
        NAME##_tile8(xs + j, db, out ? out + j * O : 0, sq, OH, OW, O, rowstride, sh, sw, C, o0); \
    if (j + 4 <= run) {                                                                         \
        NAME##_tile4(xs + j, db, out ? out + j * O : 0, sq, OH, OW, O, rowstride, sh, sw, C, o0); \
        j += 4;                                                                                 \
    }                                                                                           \
    if (j + 2 <= run) {                                                                         \
        NAME##_tile2(xs + j, db, out ? out + j * O : 0, sq, OH, OW, O, rowstride, sh, sw, C, o0); \
        j += 2;                                                                                 \
    }                                                                                           \
    if (j < run)                                                                                \
        NAME##_tile1(xs + j, db, out ? out + j * O : 0, sq, OH, OW, O, rowstride, sh, sw, C, o0); \
}                                                                                               \
                                                                                                \
void NAME(const T* restrict x, const T* restrict d, T* restrict g, T* restrict sq, long B,     \
          long Hp, long Wp, long C, long OH, long OW, long O, long KH, long KW, long sh,        \
          long sw, long dh, long dw) {                                                          \
    const long rowstride = Wp * C, taps = KH * KW * C;                                          \
    /* with dilation 1 in width, the KW*C taps of a kernel row are one contiguous run */        \
    const long run = dw == 1 ? KW * C : C, runs = dw == 1 ? 1 : KW;                             \
    const long o_vec = O - O % VO;                                                              \
    for (long b = 0; b < B; ++b) {                                                              \
        const T* xb = x + b * Hp * rowstride;                                                   \
        const T* db = d + b * OH * OW * O;                                                      \
        T* gb = g ? g + b * taps * O : 0;                                                       \
        T* sqb = sq ? sq + b : 0;                                                               \
        if (sqb) *sqb = 0;                                                                      \
        for (long ky = 0; ky < KH; ++ky)                                                        \
            for (long r = 0; r < runs; ++r) {                                                   \
                const T* xs = xb + ky * dh * rowstride + r * dw * C;                            \
                T* out = gb ? gb + (ky * KW + r) * C * O : 0;                                   \
                for (long o0 = 0; o0 < o_vec;) {                                                \
                    long j = 0;                                                                 \
                    const int wide = WIDE && o0 + 2 * VO <= o_vec;                              \
                    if (wide) {                                                                 \
                        for (; j + 8 <= run; j += 8)                                            \
                            NAME##_wide8(xs + j, db, out ? out + j * O : 0, sqb, OH, OW, O, rowstride, sh, sw, C, o0); \
                        NAME##_narrow(xs, db, out, sqb, OH, OW, O, rowstride, sh, sw, C, o0 + VO, j, run); \
                    }                                                                           \
                    NAME##_narrow(xs, db, out, sqb, OH, OW, O, rowstride, sh, sw, C, o0, j, run); \
                    o0 += wide ? 2 * VO : VO;                                                   \
                }                                                                               \
                NAME##_edge(xs, db, out, sqb, OH, OW, O, rowstride, sh, sw, C, run, o_vec);          \
            }                                                                                   \
    }                                                                                           \
}

DEFINE(dpscope_conv2d_grads_f32, float, VF)
DEFINE(dpscope_conv2d_grads_f64, double, VD)
