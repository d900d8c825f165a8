/* dot_avx512.c - the dot kernels for AVX-512 (F, BW, VL) with VNNI: 512-bit float loops and
 * vpdpbusd for the integer products. */
#if defined(__x86_64__) || defined(_M_X64)
#define KSUFFIX _avx512
#define KNAME "avx512-vnni"
#define DOT_VNNI 1
#include "dot_x86.inc"
#endif
