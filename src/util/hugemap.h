/* hugemap.h - anonymous memory that starts on a 2 MB boundary, so that the kernel can back it
 * (or a file mapped over it) with transparent huge pages.
 *
 * mmap returns 4 KB-aligned addresses; a region one huge page larger always contains an
 * aligned start. Used for the weights (util/filemap.c: a file mapped over the region, or read
 * into it) and for a session's DeltaNet states (model/session.c). */
#ifndef QNEXT_HUGEMAP_H
#define QNEXT_HUGEMAP_H

#include <stddef.h>

#define HUGEMAP_PAGE ((size_t)2 << 20)

/* Maps bytes + HUGEMAP_PAGE of anonymous memory with protection prot (PROT_NONE to reserve
 * address space only) and returns its first 2 MB boundary, or NULL (errno set by mmap).
 * *region and *region_bytes are what to munmap. With advise, [start, start + bytes) is advised
 * MADV_HUGEPAGE (a hint: without THP the memory works on 4 KB pages). */
void *hugemap_alloc(size_t bytes, int prot, int advise, void **region, size_t *region_bytes);
/* MADV_HUGEPAGE on [p, p + bytes) where the platform has it. */
void hugemap_advise(void *p, size_t bytes);

#endif
