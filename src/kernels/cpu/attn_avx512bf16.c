/* attn_avx512bf16.c - the AVX-512 attention tile with bf16 Q.K products, used for the
 * bf16 KV cache only: the queries are rounded to bf16 once per tile and multiplied with
 * the cached key rows as they are stored, with AMX tiles for whole blocks of 32 keys
 * (where the CPU has them) and vdpbf16ps (AVX512_BF16) for the rest; the softmax and
 * the P.V sums stay f32 (attn_x86.inc, ATT_BF16DOT / ATT_AMX). attn_partial() runs it
 * for bf16 caches when the CPU has AVX512_BF16 and AMX and neither QNEXT_ATTN_BF16 nor
 * QNEXT_AMX is 0; f32 and int8 caches use attn_avx512. */
#if defined(__x86_64__) || defined(_M_X64)
#define KSUFFIX _avx512bf16
#define KNAME "avx512bf16"
#define ATT_512 1
#define ATT_BF16DOT 1
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define ATT_AMX 1
#endif
#include "attn_x86.inc"
#endif
