/* dot_iq4_x86.c - AVX2 dot kernels for the non-linear 4-bit formats (IQ4_NL, IQ4_XS, MXFP4).
 *
 * The 16 levels of a format fit one 128-bit register, so a byte shuffle turns 32 four-bit
 * codes into 32 int8 weights at once; the int8 x int8 products are summed with the usual
 * sign trick (|w| as unsigned times x with w's sign, maddubs then madd). The integer sums
 * are exact and the float scale arithmetic is done per block in the same order as the
 * portable kernels of dot_generic.c, so these return the same floats bit for bit.
 *
 * Compiled with function target attributes (no file-wide flags), and used by dot_for_type
 * only when the CPU has AVX2. */
#include <stdint.h>
#include <string.h>

#include "dot.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* no "fma": a fused multiply-add would round the scale products differently from the
 * portable kernels */
#define TARGET __attribute__((target("avx2,f16c")))

/* Decode reads each weight row once from memory; the hardware prefetchers restart at every
 * 4 KB page, so the lines 4 KB ahead are requested explicitly where dot_prefetch says so, as in dot_x86.inc (measured
 * on 96 IQ4_XS matrices of 512 x 2048 from memory, 2 threads: 6.2 -> 4.1 and 7.9 -> 5.9 ms;
 * docs/PERF.md). A 32-value block is smaller than a line: one prefetch per block still
 * covers every line. */
#define PF_AHEAD 4096
#define PF(p)                                                                        \
    do {                                                                             \
        if (dot_prefetch) _mm_prefetch((const char *)(p) + PF_AHEAD, _MM_HINT_T0);   \
    } while (0)

TARGET static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return qn_f16_to_f32(h);
}

/* The 32 int8 weights of 16 code bytes (element j low nibble of byte j, j+16 high) looked up
 * in tbl, dotted with 32 int8 activations and multiplied by the integer scale: 8 int32
 * partial sums (pair sums <= 2 * 127 * 127, times |scale| <= 32, fit easily). */
TARGET static inline __m256i codes_dot(__m256i tbl, const uint8_t *qs, const int8_t *x, __m256i scale16) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
    const __m256i w = _mm256_shuffle_epi8(tbl, idx);
    const __m256i a = _mm256_loadu_si256((const __m256i *)x);
    /* |w| <= 127 and |a| <= 127: each pair sum fits int16 without saturation */
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(p, scale16);
}

TARGET static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

TARGET float dot_iq4_nl_avx2(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)quant_iq4nl_values));
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 18, a += 34) {
        PF(w);
        int32_t sum = hsum_i32(codes_dot(tbl, w + 2, (const int8_t *)(a + 2), _mm256_set1_epi16(1)));
        s += h2f(w) * h2f(a) * (float)sum;
    }
    return s;
}

TARGET float dot_mxfp4_avx2(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)quant_mxfp4_values));
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 17, a += 34) {
        PF(w);
        int32_t sum = hsum_i32(codes_dot(tbl, w + 1, (const int8_t *)(a + 2), _mm256_set1_epi16(1)));
        s += quant_e8m0_to_f32_half(w[0]) * h2f(a) * (float)sum;
    }
    return s;
}

TARGET float dot_iq4_xs_avx2(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)quant_iq4nl_values));
    float s = 0;
    for (int64_t b = 0; b < n / 256; b++, w += 136, a += 292) {
        PF(w);
        PF(w + 64);
        PF(w + 128);
        const int8_t *x = (const int8_t *)(a + 4);
        __m256i acc = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) {
            const int ls = quant_iq4_xs_scale(w, ib);
            acc = _mm256_add_epi32(acc, codes_dot(tbl, w + 8 + 16 * ib, x + 32 * ib, _mm256_set1_epi16((int16_t)ls)));
        }
        float dx;
        memcpy(&dx, a, 4);
        s += h2f(w) * dx * (float)hsum_i32(acc);
    }
    return s;
}

#endif
