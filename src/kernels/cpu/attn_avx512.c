/* attn_avx512.c - the attention tile for AVX-512 (F, BW, DQ, VL): 512-bit vectors, 4x4
 * score and value micro-kernels. */
#if defined(__x86_64__) || defined(_M_X64)
#define KSUFFIX _avx512
#define KNAME "avx512"
#define ATT_512 1
#include "attn_x86.inc"
#endif
