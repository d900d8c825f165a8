/* attn_amx.c - the AVX-512 attention tile with both products on AMX tiles for bf16 and
 * int8 caches (attn_amx.inc, included through attn_x86.inc); f32 caches, and head sizes
 * that are not a multiple of 64, take the f32 AVX-512 path of the same build. Chosen by
 * attn_select_kv() on CPUs with AMX-BF16, AMX-INT8, AVX512_BF16 and AVX512_VBMI unless
 * QNEXT_AMX=0 or QNEXT_ATTN_AMX=0. */
#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__) && \
    defined(__AVX512VBMI__) && defined(__AVX512BF16__)
#include "kernels/cpu/gemm_amx.h"
#define KSUFFIX _amx
#define KNAME "amx"
#define ATT_512 1
#define ATT_TILES 1
#include "attn_x86.inc"

int attn_amx_usable(void) { return amx_usable_amx(); }
size_t attn_amx_work_bytes(int nq, int D) { return amx_work_bytes_amx(nq, D); }
#elif defined(__x86_64__) || defined(_M_X64)
/* built without the AMX flags (another compiler): never chosen */
#include "attn.h"
const attn_kernels attn_amx = {"amx", 0, 32};
int attn_amx_usable(void) { return 0; }
size_t attn_amx_work_bytes(int nq, int D) { (void)nq; (void)D; return 0; }
#endif
