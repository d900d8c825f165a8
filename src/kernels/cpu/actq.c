/* actq.c - picks the activation quantizer that matches the selected dot kernel set
 * (see actq.h); the portable set and any other type use quant.c's reference code. */
#include "actq.h"

#include "dot.h"
#include "quant.h"

const actq_kernels *actq_select(void) {
    static const actq_kernels *k;
    static int chosen;
    if (!chosen) {
#if defined(__x86_64__) || defined(_M_X64)
        const dot_kernels *d = dot_select();
        k = d == &dot_avx512 ? &actq_avx512 : d == &dot_avx2 ? &actq_avx2 : NULL;
#endif
        chosen = 1;
    }
    return k;
}

static void simd_q8_0(const float *x, void *dst, int64_t n) { actq_quantize_row(QUANT_Q8_0, x, dst, n); }

void actq_quantize_row(int at, const float *x, void *dst, int64_t n) {
    if (at == DOT_ACT_Q8_K4 || at == DOT_ACT_Q8_K6 || at == DOT_ACT_Q8_K32) {
        /* Q8_K, then reordered (K4: the AVX-512 Q4_K/Q5_K kernels), its sums widened to offsets
         * (K6: repacked Q6_K) or added in pairs (K32: repacked Q4_K/Q5_K); dot.h */
        actq_quantize_row(QUANT_Q8_K, x, dst, n);
        dot_act_from_q8_k(at, dst, n);
        return;
    }
    if (at == DOT_ACT_Q8_0G || at == DOT_ACT_Q8_0I) { /* Q8_0, regrouped for the AVX-512 Q8_0 kernels (dot.h) */
        dot_act_quantize_q8_0g(x, dst, n, at == DOT_ACT_Q8_0I, simd_q8_0);
        return;
    }
    const actq_kernels *k = actq_select();
    if (k && at == QUANT_Q8_0 && n % 32 == 0) k->q8_0(x, dst, n);
    else if (k && at == QUANT_Q8_K && n % 256 == 0) k->q8_k(x, dst, n);
    else quant_quantize_row(at, x, dst, n);
}
