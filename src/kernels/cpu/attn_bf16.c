/* attn_bf16.c - the AVX-512 attention tile with both products of bf16 caches on
 * AVX512-BF16 VDPBF16PS (score_block_dp and value_block_dp in attn_x86.inc); f32 and int8
 * caches take the f32 AVX-512 path of the same build. Chosen by attn_select_kv() for bf16
 * caches on CPUs with AVX512_BF16 and no AMX tiles (AMD Zen 4 and later, Intel Cooper
 * Lake) unless QNEXT_ATTN_BF16=0. Why: the f32 kernel widens each cached bf16 value and
 * does one multiply-add per lane and instruction; at depth 16K its attention was
 * compute-bound at about 13 GB/s on Zen 4 (docs/PERF.md). */
#if defined(__x86_64__) && defined(__AVX512BF16__)
#define KSUFFIX _bf16
#define KNAME "avx512bf16"
#define ATT_512 1
#define ATT_DPBF16 1
#include "attn_x86.inc"

#include "kernels/cpu/gemm_vnni.h"

/* The VNNI products' AVX-512 check plus BF16: attn_bf16 only ever replaces attn_avx512,
 * which dot_select() chooses only with VNNI, so asking for it here loses no CPU. */
int attn_bf16_usable(void) {
    static int ok = -1;
    if (ok < 0) ok = gemm_vnni_available() && __builtin_cpu_supports("avx512bf16");
    return ok;
}
#elif defined(__x86_64__) || defined(_M_X64)
/* built without the flag (another compiler): never chosen */
#include "attn.h"
const attn_kernels attn_bf16 = {"avx512bf16", 0, 32};
int attn_bf16_usable(void) { return 0; }
#endif
