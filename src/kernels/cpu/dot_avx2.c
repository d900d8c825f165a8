/* dot_avx2.c - the dot kernels for AVX2 + FMA + F16C (compiled with those flags only). */
#if defined(__x86_64__) || defined(_M_X64)
#define KSUFFIX _avx2
#define KNAME "avx2"
#include "dot_x86.inc"
#endif
