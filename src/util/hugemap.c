/* hugemap.c - see hugemap.h. */
#define _GNU_SOURCE
#include "util/hugemap.h"

#include <stdint.h>
#include <sys/mman.h>

void hugemap_advise(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

void *hugemap_alloc(size_t bytes, int prot, int advise, void **region, size_t *region_bytes) {
    const size_t rs = bytes + HUGEMAP_PAGE;
    char *r = mmap(NULL, rs, prot, MAP_PRIVATE | MAP_ANONYMOUS | (prot == PROT_NONE ? MAP_NORESERVE : 0), -1, 0);
    if (r == MAP_FAILED) return NULL;
    char *start = (char *)(((uintptr_t)r + HUGEMAP_PAGE - 1) & ~(uintptr_t)(HUGEMAP_PAGE - 1));
    if (advise) hugemap_advise(start, bytes);
    *region = r;
    *region_bytes = rs;
    return start;
}
