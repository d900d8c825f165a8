/* filemap.c - see filemap.h. */
#define _GNU_SOURCE
#include "util/filemap.h"
#include "util/hugemap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define READ_CHUNK ((size_t)64 << 20)

int filemap_open(filemap *m, int fd, size_t size, int in_ram, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    void *region;
    size_t rs;
    if (!in_ram) {
        /* Map the file at a 2 MB boundary of a reserved region, so that offset 0 of the file and
         * every 2 MB after it fall on huge-page boundaries: then, with MADV_HUGEPAGE, a kernel
         * whose page cache has large folios (Linux 6.16+ on ext4, xfs since 5.18) reads the file
         * in 2 MB folios and maps them with one TLB entry each. */
        char *d = hugemap_alloc(size, PROT_NONE, 0, &region, &rs);
        if (!d) {
            snprintf(err, errlen, "%s: cannot reserve %zu bytes of address space: %s", path, size + HUGEMAP_PAGE, strerror(errno));
            return -1;
        }
        if (mmap(d, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) {
            snprintf(err, errlen, "%s: cannot mmap: %s", path, strerror(errno));
            munmap(region, rs);
            return -1;
        }
        if (!getenv("QNEXT_NO_THP")) hugemap_advise(d, size); /* a hint; refused where unsupported */
        m->data = d;
        m->size = size;
        m->region = region;
        m->region_size = rs;
        return 0;
    }
    /* huge pages advised: without THP the copy still works, only slower */
    char *d = hugemap_alloc(size, PROT_READ | PROT_WRITE, 1, &region, &rs);
    if (!d) {
        snprintf(err, errlen, "%s: cannot allocate %zu bytes to read it into (--no-mmap): %s", path, size, strerror(errno));
        return -1;
    }
    for (size_t at = 0; at < size;) {
        size_t want = size - at < READ_CHUNK ? size - at : READ_CHUNK;
        ssize_t got = pread(fd, d + at, want, (off_t)at);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            snprintf(err, errlen, "%s: read failed at byte %zu of %zu: %s", path, at, size,
                     got < 0 ? strerror(errno) : "the file is shorter than it was");
            munmap(region, rs);
            return -1;
        }
#ifdef POSIX_FADV_DONTNEED
        posix_fadvise(fd, (off_t)at, (off_t)got, POSIX_FADV_DONTNEED); /* no second copy in the page cache */
#endif
        at += (size_t)got;
    }
    mprotect(d, size, PROT_READ); /* read-only, as a mapping of the file would be */
    m->data = d;
    m->size = size;
    m->region = region;
    m->region_size = rs;
    return 0;
}

void filemap_close(filemap *m) {
    if (m->region) munmap(m->region, m->region_size);
    memset(m, 0, sizeof *m);
}
