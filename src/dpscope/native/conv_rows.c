/* Per-example kernel gradients of a 2-d convolution (groups 1) in the NCHW layout, for
   dpscope's clipping engine: the layout of torch's own CPU convolutions, so nothing is
   transposed first.

   g[b, o, c, ky, kx] = sum_{oy, ox} d[b, o, oy, ox] * xpad[b, c, oy*sh + ky*dh, ox*sw + kx*dw]

   x: (B, C, H, W), placed at row pt, column pl of a zero (Hp, Wp) plane; d: (B, O, OH, OW)
   with OH = (Hp - dh*(KH-1) - 1) / sh + 1, OW likewise; g: (B, O, C, KH, KW), or with g NULL,
   sq: (B,) the squared norms of the per-example gradients, which are then never stored. All
   contiguous; the caller checks the sizes (and the kernel again).

   Each example is first copied into zero-padded planes, one per channel and stride phase
   (padded row sh*u + ry, column sw*v + rx -> plane (ry, rx), row u, column v; with stride 1 a
   single plane), whose rows are Wq = ceil(Wp / sw) long; the output gradient's rows too (their
   last Wq - OW columns zero). Position p = oy*Wq + ox of the output then reads tap (ky, kx) at
   p + qy*Wq + qx of the plane of phase (ky*dh % sh, kx*dw % sw), qy = ky*dh / sh and
   qx = kx*dw / sw: one tap's sum over all positions is a dot product of two contiguous runs,
   vectorised along positions. A tile of MR output channels by NR taps keeps MR*NR accumulators
   in registers: each loaded vector feeds several multiply-adds, as in a matrix-product kernel. */

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
#else
#define UNROLLED _Pragma("GCC unroll 16")
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define ROWS_SHUFFLE2(NAME, a, b, mask) __builtin_shuffle(a, b, mask)
#else /* portable: lane by lane */
#define ROWS_SHUFFLE2(NAME, a, b, mask) NAME##_pick(a, b, mask)
#endif

/* Whether any of the K taps (dilation dil) falls on stride phase r: a 1x1 stride-2 layer reads
   one phase of four, and the others need not be staged. */
static inline int rows_phase_read(long K, long dil, long stride, long r) {
    for (long k = 0; k < K; ++k)
        if (k * dil % stride == r) return 1;
    return 0;
}

/* A tile of M output channels by N taps (taps t0.. of offsets off[]), over nvec vectors of
   positions; its sums go to out[i*taps + j], or their squares into the lanes of *sq. */
#define DEFINE_ROWS_TILE(NAME, T, M, N, TILE)                                                       \
static void NAME##_##TILE(const T* restrict D, long pv, const T* restrict X,                   \
                                 const long* restrict off, long nvec, T* restrict out,          \
                                 long taps, NAME##_vec* sq) {                                   \
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
    /* the sums across lanes, VL accumulators at a time (see NAME##_merge): red[m] lane k ends  \
       as the sum of accumulator m*VL + reversed(k), zero past the tile's M*N */                \
    enum { K0 = M * N, K1 = (K0 + 1) / 2, K2 = (K1 + 1) / 2, K3 = (K2 + 1) / 2, K4 = (K3 + 1) / 2 }; \
    NAME##_vec red[K0];                                                                         \
    UNROLLED for (int i = 0; i < M; ++i)                                                        \
        UNROLLED for (int j = 0; j < N; ++j) red[i * N + j] = acc[i][j];                        \
    ROWS_LEVEL(NAME, red, K0, K1, NAME##_VL / 2)                                                \
    ROWS_LEVEL(NAME, red, K1, K2, NAME##_VL / 4)                                                \
    ROWS_LEVEL(NAME, red, K2, K3, NAME##_VL / 8)                                                \
    ROWS_LEVEL(NAME, red, K3, K4, NAME##_VL / 16)                                               \
    enum { KF = NAME##_VL == 16 ? K4 : NAME##_VL == 8 ? K3 : NAME##_VL == 4 ? K2 : K1 };       \
    if (sq) {                                                                                   \
        NAME##_vec total = red[0] * red[0];                                                     \
        UNROLLED for (int m = 1; m < KF; ++m) total += red[m] * red[m];                         \
        *sq += total;                                                                           \
        return;                                                                                 \
    }                                                                                           \
    UNROLLED for (int m = 0; m < KF; ++m)                                                       \
        UNROLLED for (int k = 0; k < NAME##_VL; ++k) {                                          \
            int index = m * NAME##_VL, bit = 1;                                                 \
            UNROLLED for (int w = NAME##_VL / 2; w > 0; w /= 2, bit *= 2)                       \
                if (k & w) index += bit;                                                        \
            if (index < K0) out[index / N * taps + index % N] = red[m][k];                      \
        }                                                                                       \
}

/* One level of the lane sums: red[0..TO) from red[0..FROM) in pairs (the last with zeros) */
#define ROWS_LEVEL(NAME, red, FROM, TO, W)                                                      \
    if ((W) > 0)                                                                                \
        UNROLLED for (int q = 0; q < (TO); ++q)                                                 \
            red[q] = NAME##_merge(red[2 * q], 2 * q + 1 < (FROM) ? red[2 * q + 1] : (NAME##_vec){0}, (W));

/* Every tap of a few output channels: tiles of NR taps, then the taps left one at a time */
#define DEFINE_ROWS_SWEEP(NAME, T, TILE, EDGE, SWEEP)                                           \
static void NAME##_##SWEEP(const T* restrict D, long pv, const T* restrict X,                  \
                           const long* restrict off, long nvec, T* restrict out, long taps,     \
                           NAME##_vec* sq) {                                                    \
    long t = 0;                                                                                 \
    for (; t + NR <= taps; t += NR) NAME##_##TILE(D, pv, X, off + t, nvec, out ? out + t : 0, taps, sq); \
    for (; t < taps; ++t) NAME##_##EDGE(D, pv, X, off + t, nvec, out ? out + t : 0, taps, sq);  \
}

#define DEFINE_ROWS(NAME, T, LANE_INT, VL)                                                      \
enum { NAME##_VL = VL };                                                                        \
typedef T NAME##_vec __attribute__((vector_size(VL * sizeof(T))));                             \
typedef LANE_INT NAME##_ivec __attribute__((vector_size(VL * sizeof(T))));                     \
static inline NAME##_vec NAME##_pick(NAME##_vec a, NAME##_vec b, NAME##_ivec mask) {            \
    NAME##_vec r;                                                                               \
    for (int k = 0; k < VL; ++k) r[k] = mask[k] < VL ? a[mask[k]] : b[mask[k] - VL];            \
    return r;                                                                                   \
}                                                                                               \
/* Lane sums in registers: a sum written to memory and read back lane by lane took as long as  \
   the multiply-adds it ends. merge(a, b, w): lane k holds a[k] + a[k ^ w] where bit w of k is  \
   clear, b[k] + b[k ^ w] where it is set; log2(VL) levels of merges (w = VL/2, ..., 1) turn    \
   VL accumulators into one vector of their sums, two shuffles and one add per merge. With      \
   w = 0, merge(v, v, 0) returns the whole sum of v in lane 0 (butterflies). */                 \
static inline NAME##_vec NAME##_merge(NAME##_vec a, NAME##_vec b, int w) {                      \
    if (w == 0) {                                                                               \
        UNROLLED for (int s = VL / 2; s > 0; s /= 2) a = NAME##_merge(a, a, s);                 \
        return a;                                                                               \
    }                                                                                           \
    NAME##_ivec low, high;                                                                      \
    UNROLLED for (int k = 0; k < VL; ++k) {                                                     \
        low[k] = (k & w) ? VL + k : k;                                                          \
        high[k] = (k & w) ? VL + (k ^ w) : (k ^ w);                                             \
    }                                                                                           \
    return ROWS_SHUFFLE2(NAME, a, b, low) + ROWS_SHUFFLE2(NAME, a, b, high);                    \
}                                                                                               \
static inline T NAME##_sum(NAME##_vec v) {                                                      \
    return NAME##_merge(v, v, 0)[0]; /* w = 0: every butterfly level */                        \
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
         long Hp, long Wp, long dh, long dw, long sh, long sw) {                                \
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1 || pt < 0 || pl < 0 || pt + H > Hp || pl + W > Wp \
        || OH < 1 || OW < 1 || OH != (Hp - (KH - 1) * dh - 1) / sh + 1                         \
        || OW != (Wp - (KW - 1) * dw - 1) / sw + 1)                                             \
        return -2;                                                                              \
    const long Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw; /* a phase plane */           \
    const long taps = C * KH * KW, positions = OH * Wq;                                         \
    const long nvec = (positions + VL - 1) / VL, pv = nvec * VL;                                \
    const long span = (KH - 1) * dh / sh * Wq + (KW - 1) * dw / sw;                             \
    /* every tap's run of pv stays inside its plane */                                          \
    const long cs = Hq * Wq > pv + span ? Hq * Wq : pv + span;                                  \
    const long planes = C * sh * sw;                                                            \
    T* X = aligned_alloc(64, ((planes * cs * sizeof(T) + 63) / 64) * 64);                      \
    T* D = aligned_alloc(64, ((O * pv * sizeof(T) + 63) / 64) * 64);                           \
    /* off: each tap's start; row_at: where input row y lands in a channel's planes (-1: in a   \
       stride phase no tap reads); col_first: the first padded column of each column phase     \
       (-1: not read). Decided once per call, not per staged row. */                            \
    long* off = malloc((taps + H + sw) * sizeof(long));                                         \
    if (!X || !D || !off) {                                                                     \
        free(X); free(D); free(off);                                                            \
        return -1;                                                                              \
    }                                                                                           \
    long *row_at = off + taps, *col_first = row_at + H;                                         \
    for (long y = 0; y < H; ++y) {                                                              \
        const long row = y + pt;                                                                \
        row_at[y] = rows_phase_read(KH, dh, sh, row % sh) ? row % sh * sw * cs + row / sh * Wq : -1; \
    }                                                                                           \
    for (long rx = 0; rx < sw; ++rx)                                                            \
        col_first[rx] = rows_phase_read(KW, dw, sw, rx) ? pl + (rx - pl % sw + sw) % sw : -1;   \
    memset(X, 0, planes * cs * sizeof(T)); /* padding: only the interior is rewritten below */ \
    memset(D, 0, O * pv * sizeof(T));                                                           \
    for (long c = 0; c < C; ++c)                                                                \
        for (long ky = 0; ky < KH; ++ky)                                                        \
            for (long kx = 0; kx < KW; ++kx) {                                                  \
                const long plane = (c * sh + ky * dh % sh) * sw + kx * dw % sw;                 \
                off[(c * KH + ky) * KW + kx] = plane * cs + ky * dh / sh * Wq + kx * dw / sw;   \
            }                                                                                   \
    for (long b = 0; b < B; ++b) {                                                              \
        const T* xb = x + b * C * H * W;                                                        \
        const T* db = d + b * O * OH * OW;                                                      \
        for (long c = 0; c < C; ++c)                                                            \
            for (long y = 0; y < H; ++y) {                                                      \
                if (row_at[y] < 0) continue; /* no tap reads its stride phase */                \
                T* dst = X + c * sh * sw * cs + row_at[y];                                      \
                const T* src = xb + (c * H + y) * W;                                            \
                if (sw == 1)                                                                    \
                    memcpy(dst + pl, src, W * sizeof(T));                                       \
                else /* one stride phase at a time: no division per element */                 \
                    for (long rx = 0; rx < sw; ++rx) {                                          \
                        if (col_first[rx] < 0) continue;                                        \
                        T* plane = dst + rx * cs + col_first[rx] / sw;                          \
                        for (long col = col_first[rx]; col < pl + W; col += sw)                 \
                            *plane++ = src[col - pl];                                           \
                    }                                                                           \
            }                                                                                   \
        for (long o = 0; o < O; ++o)                                                            \
            for (long y = 0; y < OH; ++y)                                                       \
                memcpy(D + o * pv + y * Wq, db + (o * OH + y) * OW, OW * sizeof(T));            \
        T* gb = g ? g + b * O * taps : 0;                                                       \
        NAME##_vec lanes = {0}, *sqb = sq ? &lanes : 0; /* squared sums, lane by lane */       \
        long o = 0;                                                                             \
        for (; o + MR <= O; o += MR)                                                            \
            NAME##_block(D + o * pv, pv, X, off, nvec, gb ? gb + o * taps : 0, taps, sqb);      \
        for (; o < O; ++o)                                                                      \
            NAME##_single(D + o * pv, pv, X, off, nvec, gb ? gb + o * taps : 0, taps, sqb);     \
        if (sq) sq[b] = NAME##_sum(lanes);                                                      \
    }                                                                                           \
    free(X); free(D); free(off);                                                                \
    return 0;                                                                                   \
}

DEFINE_ROWS(dpscope_conv2d_rows_f32, float, int, RVF)
DEFINE_ROWS(dpscope_conv2d_rows_f64, double, long long, RVD)
