/* filemap.h - a whole read-only file in memory, in one of two ways:
 *
 *   - mapped (the default): the file's pages in the page cache, shared with every process that
 *     maps it, read from disk on first touch; nothing is copied. The mapping starts on a 2 MB
 *     boundary with MADV_HUGEPAGE (QNEXT_NO_THP=1 leaves it out, for comparisons), so that a
 *     kernel whose page cache has large folios reads the file in 2 MB folios and maps each
 *     with one huge-page entry;
 *   - read into memory (in_ram, `--no-mmap`): anonymous memory on transparent huge pages, filled
 *     once by reading the file (its page-cache pages are dropped behind the reads, so the system
 *     does not hold two copies).
 *
 * Why the second exists: decode streams gigabytes of weights per token, and the page cache
 * holds a file in scattered 4 KB pages. The hardware prefetchers stop at every 4 KB boundary
 * and every page costs a TLB entry, so on this project's CPU machine plain loads over a mapped
 * file read ~16 GB/s against ~24 GB/s over huge pages (docs/PERF.md). Newer kernels whose page
 * cache keeps large folios (Linux 6.16+ with ext4, xfs since 5.18) map a file on huge pages when
 * its folios are 2 MB: a file first read through an advised, aligned mapping (or with read())
 * gets them, one first read through a plain mapping does not. On the Xeon of the seventh session
 * decode was no faster for it; on the EPYC of the fourteenth, streaming the mapped file read up to
 * 1.8x faster (docs/PERF.md). A file already cached in small folios stays so until the kernel
 * drops it. */
#ifndef QNEXT_FILEMAP_H
#define QNEXT_FILEMAP_H

#include <stddef.h>

typedef struct {
    const void *data; /* the file's bytes */
    size_t size;
    void *region;     /* what to unmap: the mapping, or the anonymous region around data */
    size_t region_size;
} filemap;

/* Maps or reads the open file fd (size bytes; the caller closes fd afterwards). Returns 0, or
 * -1 with a message naming path in err. */
int filemap_open(filemap *m, int fd, size_t size, int in_ram, const char *path, char *err, size_t errlen);
void filemap_close(filemap *m);

#endif
