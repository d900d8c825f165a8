/* attn_avx2.c - the attention tile for AVX2 + FMA (compiled with those flags only). */
#if defined(__x86_64__) || defined(_M_X64)
#define KSUFFIX _avx2
#define KNAME "avx2"
#include "attn_x86.inc"
#endif
