/* Per-example kernel gradients of a stride-1 2-d convolution (groups 1) in the NCHW layout,
   for dpscope's clipping engine: the layout of torch's own CPU convolutions, so nothing is
   transposed first.

   g[b, o, c, ky, kx] = sum_{oy, ox} d[b, o, oy, ox] * xpad[b, c, oy + ky*dh, ox + kx*dw]

   x: (B, C, H, W), placed at row pt, column pl of a zero (Hp, Wp) plane; d: (B, O, OH, OW)
   with OH = Hp - dh*(KH-1), OW = Wp - dw*(KW-1); g: (B, O, C, KH, KW), or with g NULL, sq: (B,)
   the squared norms of the per-example gradients, which are then never stored. All contiguous;
   the caller checks the sizes.

   Each example is first copied into zero-padded planes whose rows are Wp long, the output
   gradient's too (its last Wp - OW columns zero). Position p = oy*Wp + ox of the output then
   reads the input at p + ky*dh*Wp + kx*dw for every tap, so one tap's sum over all positions
   is a dot product of two contiguous runs, vectorised along positions. A tile of MR output
   channels by NR taps keeps MR*NR accumulators in registers: each loaded vector feeds
   several multiply-adds, as in a matrix-product kernel. */

#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define RVF 16 /* floats per vector: one 512-bit register */
#define RVD 8
#else
#define RVF 8
#define RVD 4
#endif
#if defined(__AVX512F__) || defined(__aarch64__)
#define MR 4 /* 32 vector registers: 24 accumulators, 4 output-gradient vectors, 1 input */
#define NR 6
#else
#define MR 2 /* 16 registers: 12 accumulators */
#define NR 6
#endif

/* the accumulators must be named registers, not an array in memory: unroll every loop over them */
#if defined(__clang__)
#define UNROLLED _Pragma("clang loop unroll(full)")
#define SHUFFLE(v, mask) __builtin_shufflevector(v, v, mask) /* clang 14+: masks as vectors */
#else
#define UNROLLED _Pragma("GCC unroll 16")
#define SHUFFLE(v, mask) __builtin_shuffle(v, mask)
#endif

/* A tile of M output channels by N taps (taps t0.. of offsets off[]), over nvec vectors of
   positions; its sums go to out[i*taps + j], or their squares to *sq. */
#define DEFINE_ROWS_TILE(NAME, T, M, N, TILE)                                                       \
static void NAME##_##TILE(const T* restrict D, long pv, const T* restrict X,                   \
                                 const long* restrict off, long nvec, T* restrict out,          \
                                 long taps, T* sq) {                                            \
    NAME##_vec acc[M][N];                                                                       \
    const T* xp[N];                                                                             \
    UNROLLED for (int i = 0; i < M; ++i)                                                        \
        UNROLLED for (int j = 0; j < N; ++j) acc[i][j] = (NAME##_vec){0};                       \
    UNROLLED for (int j = 0; j < N; ++j) xp[j] = X + off[j];                                    \
    for (long v = 0; v < nvec * NAME##_VL; v += NAME##_VL) {                                    \
        NAME##_vec dv[M];                                                                       \
        UNROLLED for (int i = 0; i < M; ++i) memcpy(&dv[i], D + i * pv + v, sizeof dv[i]);      \
        UNROLLED for (int j = 0; j < N; ++j) {                                                  \
            NAME##_vec xv;                                                                      \
            memcpy(&xv, xp[j] + v, sizeof xv);                                                  \
            UNROLLED for (int i = 0; i < M; ++i) acc[i][j] += dv[i] * xv;                       \
        }                                                                                       \
    }                                                                                           \
    UNROLLED for (int i = 0; i < M; ++i)                                                        \
        UNROLLED for (int j = 0; j < N; ++j) {                                                  \
            T s = NAME##_sum(acc[i][j]);                                                        \
            if (sq) *sq += s * s; else out[i * taps + j] = s;                                   \
        }                                                                                       \
}

/* Every tap of a few output channels: tiles of NR taps, then the taps left one at a time */
#define DEFINE_ROWS_SWEEP(NAME, T, TILE, EDGE, SWEEP)                                           \
static void NAME##_##SWEEP(const T* restrict D, long pv, const T* restrict X,                  \
                           const long* restrict off, long nvec, T* restrict out, long taps,     \
                           T* sq) {                                                             \
    long t = 0;                                                                                 \
    for (; t + NR <= taps; t += NR) NAME##_##TILE(D, pv, X, off + t, nvec, out ? out + t : 0, taps, sq); \
    for (; t < taps; ++t) NAME##_##EDGE(D, pv, X, off + t, nvec, out ? out + t : 0, taps, sq);  \
}

#define DEFINE_ROWS(NAME, T, LANE_INT, VL)                                                      \
enum { NAME##_VL = VL };                                                                        \
typedef T NAME##_vec __attribute__((vector_size(VL * sizeof(T))));                             \
typedef LANE_INT NAME##_ivec __attribute__((vector_size(VL * sizeof(T))));                     \
/* the sum of the lanes by butterflies in registers (lane k plus lane k ^ w); a sum written     \
   to memory and read back lane by lane took as long as the multiply-adds it ends */            \
static inline T NAME##_sum(NAME##_vec v) {                                                      \
    NAME##_ivec iota;                                                                           \
    UNROLLED for (int k = 0; k < VL; ++k) iota[k] = k;                                          \
    UNROLLED for (int w = VL / 2; w > 0; w /= 2) v += SHUFFLE(v, iota ^ w);                     \
    return v[0];                                                                                \
}                                                                                               \
DEFINE_ROWS_TILE(NAME, T, MR, NR, full) /* the edges: fewer channels or taps */                  \
DEFINE_ROWS_TILE(NAME, T, MR, 1, column)                                                        \
DEFINE_ROWS_TILE(NAME, T, 1, NR, row)                                                           \
DEFINE_ROWS_TILE(NAME, T, 1, 1, one)                                                            \
DEFINE_ROWS_SWEEP(NAME, T, full, column, block) /* MR output channels, every tap */            \
DEFINE_ROWS_SWEEP(NAME, T, row, one, single) /* one output channel, every tap */               \
                                                                                                \
/* 0 on success, -1 when the staging buffers could not be allocated, -2 for sizes that do    \
   not fit together (the caller's check, repeated: nothing out of bounds is ever read) */      \
int NAME(const T* restrict x, const T* restrict d, T* restrict g, T* restrict sq, long B,      \
         long C, long H, long W, long O, long OH, long OW, long KH, long KW, long pt, long pl,  \
         long Hp, long Wp, long dh, long dw) {                                                  \
    const long taps = C * KH * KW, positions = OH * Wp;                                         \
    const long nvec = (positions + VL - 1) / VL, pv = nvec * VL;                                \
    const long span = (KH - 1) * dh * Wp + (KW - 1) * dw;                                       \
    const long cs = pv + span; /* >= Hp * Wp: every tap's run stays inside its channel */       \
    if (OH != Hp - (KH - 1) * dh || OW != Wp - (KW - 1) * dw || pt < 0 || pl < 0 ||           \
        pt + H > Hp || pl + W > Wp || OH < 1 || OW < 1)                                        \
        return -2;                                                                              \
    T* X = aligned_alloc(64, ((C * cs * sizeof(T) + 63) / 64) * 64);                           \
    T* D = aligned_alloc(64, ((O * pv * sizeof(T) + 63) / 64) * 64);                           \
    long* off = malloc(taps * sizeof(long));                                                    \
    if (!X || !D || !off) {                                                                     \
        free(X); free(D); free(off);                                                            \
        return -1;                                                                              \
    }                                                                                           \
    memset(X, 0, C * cs * sizeof(T)); /* padding: only the interior is rewritten below */      \
    memset(D, 0, O * pv * sizeof(T));                                                           \
    for (long c = 0; c < C; ++c)                                                                \
        for (long ky = 0; ky < KH; ++ky)                                                        \
            for (long kx = 0; kx < KW; ++kx)                                                    \
                off[(c * KH + ky) * KW + kx] = c * cs + ky * dh * Wp + kx * dw;                 \
    for (long b = 0; b < B; ++b) {                                                              \
        const T* xb = x + b * C * H * W;                                                        \
        const T* db = d + b * O * OH * OW;                                                      \
        for (long c = 0; c < C; ++c)                                                            \
            for (long y = 0; y < H; ++y)                                                        \
                memcpy(X + c * cs + (y + pt) * Wp + pl, xb + (c * H + y) * W, W * sizeof(T));  \
        for (long o = 0; o < O; ++o)                                                            \
            for (long y = 0; y < OH; ++y)                                                       \
                memcpy(D + o * pv + y * Wp, db + (o * OH + y) * OW, OW * sizeof(T));            \
        T* gb = g ? g + b * O * taps : 0;                                                       \
        T* sqb = sq ? sq + b : 0;                                                               \
        if (sqb) *sqb = 0;                                                                      \
        long o = 0;                                                                             \
        for (; o + MR <= O; o += MR)                                                            \
            NAME##_block(D + o * pv, pv, X, off, nvec, gb ? gb + o * taps : 0, taps, sqb);      \
        for (; o < O; ++o)                                                                      \
            NAME##_single(D + o * pv, pv, X, off, nvec, gb ? gb + o * taps : 0, taps, sqb);     \
    }                                                                                           \
    free(X); free(D); free(off);                                                                \
    return 0;                                                                                   \
}

DEFINE_ROWS(dpscope_conv2d_rows_f32, float, int, RVF)
DEFINE_ROWS(dpscope_conv2d_rows_f64, double, long long, RVD)
