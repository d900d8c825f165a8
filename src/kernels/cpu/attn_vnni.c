/* attn_vnni.c - the AVX-512 attention tile with both products of int8 caches on
 * AVX512-VNNI VPDPBUSD (score_block_i8 and value_block_i8 in attn_x86.inc); f32 and bf16
 * caches, and head sizes that are not a multiple of 64, take the f32 AVX-512 path of the
 * same build. Chosen by attn_select_kv() for int8 caches on CPUs with AVX512_VNNI and no
 * AMX tiles (AMD Zen 4 and later, Intel Ice Lake and Cascade Lake) unless
 * QNEXT_ATTN_VNNI=0. Why: the f32 kernel widens each cached byte to f32 in two
 * instructions and does one multiply-add per lane; at depth 16K the int8 cache's attention
 * was compute-bound on Zen 4 (docs/PERF.md). */
#if defined(__x86_64__) && defined(__AVX512VNNI__)
#define KSUFFIX _vnni
#define KNAME "avx512vnni"
#define ATT_512 1
#define ATT_VNNI8 1
#include "attn_x86.inc"

#include "kernels/cpu/gemm_vnni.h"

/* The same CPU check as the VNNI products (AVX-512 F, BW, VL, VNNI; and F16C, which every
 * such CPU has); DQ, which this build also uses, comes with BW and VL on every CPU so far. */
int attn_vnni_usable(void) { return gemm_vnni_available(); }
#elif defined(__x86_64__) || defined(_M_X64)
/* built without the flag (another compiler): never chosen */
#include "attn.h"
const attn_kernels attn_vnni = {"avx512vnni", 0, 32};
int attn_vnni_usable(void) { return 0; }
#endif
