/* bandwidth.c - memory read-bandwidth probe: the ceiling for a decode step that streams the weights.
 *
 * Token generation of a MoE model is bound by how fast the touched weights can be read from DRAM, so this
 * measures exactly that: T threads (OpenMP) each sum their own contiguous slice of one large buffer
 * (default 2 GiB, far larger than the last-level cache) with 64-byte vector loads (AVX-512 if compiled
 * with it, else AVX2, else plain 64-bit loads), several independent accumulators to keep loads in flight.
 * Best of N runs is reported as GB/s (1e9 bytes/s) for each thread count, by wall time and by thread CPU time
 * (the latter is the better estimate when other processes compete for the two cores).
 *
 * Self-contained on purpose (not part of the CMake build): bench/run_bandwidth.sh builds it with
 *   cc -O3 -march=native -fopenmp bench/bandwidth.c -o build/bandwidth
 * Usage: bandwidth [-s MiB] [-r runs] [-t threads[,threads...]] [-f FILE [-n]]   (defaults: -s 2048 -r 10 -t 1,2)
 *   -f FILE reads a mapping of FILE (its first whole 2 MiB units) instead of anonymous memory, mapped as qnext
 *           maps weights (src/util/filemap.c: at a 2 MiB boundary, MADV_HUGEPAGE); -n leaves the advice out.
 *           Whether the page cache then maps it on huge pages depends on how the file came into the cache
 *           (docs/PERF.md); the line "huge pages" says what this mapping got (FilePmdMapped).
 *   -f FILE -D drops FILE from the page cache (posix_fadvise DONTNEED) and exits: the next reader loads it cold.
 */
#define _DEFAULT_SOURCE
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__AVX512F__)
static const char *kernel_name = "avx512 (64-byte loads, 4 accumulators)";
/* Sum of n bytes (multiple of 256) as 64-bit lanes; the value is only a sink that defeats dead-code removal. */
static uint64_t sum_bytes(const void *p, size_t n) {
    const __m512i *v = (const __m512i *)p;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n / 64; i += 4) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(v + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + i + 3));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(a0);
}
#elif defined(__AVX2__)
static const char *kernel_name = "avx2 (2x32-byte loads per 64 bytes, 4 accumulators)";
static uint64_t sum_bytes(const void *p, size_t n) {
    const __m256i *v = (const __m256i *)p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n / 32; i += 8) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 3));
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i + 4));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 5));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 6));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 7));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#else
static const char *kernel_name = "scalar (8-byte loads, 8 accumulators)";
static uint64_t sum_bytes(const void *p, size_t n) {
    const uint64_t *v = (const uint64_t *)p;
    uint64_t a[8] = {0};
    for (size_t i = 0; i < n / 8; i += 8)
        for (int k = 0; k < 8; k++) a[k] += v[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}
#endif

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One timed pass: every thread reads its own slice (slices are 256-byte multiples). Returns wall seconds and,
 * in *cpu_max, the largest per-thread CPU time: on a shared machine where other processes take time slices,
 * bytes / cpu_max estimates what the pass would reach with the cores to itself (it still shares DRAM). */
static double timed_pass(const unsigned char *buf, size_t bytes, int threads, uint64_t *sink, double *cpu_max) {
    uint64_t total = 0;
    double cmax = 0;
    double t0 = now_seconds();
#pragma omp parallel num_threads(threads) reduction(+ : total) reduction(max : cmax)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t blocks = bytes / 256;
        size_t b0 = blocks * (size_t)id / (size_t)nt, b1 = blocks * (size_t)(id + 1) / (size_t)nt;
        double c0 = thread_cpu_seconds();
        total += sum_bytes(buf + b0 * 256, (b1 - b0) * 256);
        cmax = thread_cpu_seconds() - c0;
    }
    double t1 = now_seconds();
    *sink += total;
    *cpu_max = cmax;
    return t1 - t0;
}

/* Best-of-runs GB/s over buf for each thread count of the list. */
static void report(const unsigned char *buf, size_t bytes, int runs, const char *thread_list) {
    uint64_t sink = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", thread_list);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int threads = atoi(tok);
        if (threads < 1) continue;
        double cpu;
        timed_pass(buf, bytes, threads, &sink, &cpu); /* warm-up: page tables, thread pool */
        double best = 1e30, sum = 0, best_cpu = 1e30;
        for (int r = 0; r < runs; r++) {
            double t = timed_pass(buf, bytes, threads, &sink, &cpu);
            if (t < best) best = t;
            if (cpu < best_cpu) best_cpu = cpu;
            sum += t;
        }
        printf("threads %d: best %.2f GB/s  (mean %.2f GB/s; per thread-CPU-second %.2f GB/s)\n", threads,
               (double)bytes / best / 1e9, (double)bytes * runs / sum / 1e9, (double)bytes / best_cpu / 1e9);
    }
    printf("(sink %llu)\n", (unsigned long long)(sink & 0xff));
}

/* A field of /proc/self/smaps_rollup in kB, or -1 (not Linux, or no such field). */
static long smaps_kb(const char *field) {
    long kb = -1;
    char line[256], fmt[64];
    snprintf(fmt, sizeof fmt, "%s: %%ld kB", field);
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, fmt, &kb) == 1) break;
    fclose(f);
    return kb;
}

static int drop_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if (rc) fprintf(stderr, "bandwidth: posix_fadvise(%s): %s\n", path, strerror(rc));
    return rc != 0;
}

static int probe_file(const char *path, int advise, int runs, const char *thread_list) {
    const size_t huge = (size_t)2 << 20;
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        return 1;
    }
    size_t bytes = (size_t)st.st_size & ~(huge - 1);
    if (!bytes) {
        fprintf(stderr, "bandwidth: %s is smaller than 2 MiB\n", path);
        return 1;
    }
    unsigned char *r = mmap(NULL, bytes + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned char *d = (unsigned char *)(((uintptr_t)r + huge - 1) & ~(uintptr_t)(huge - 1));
    if (mmap(d, bytes, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    close(fd);
#ifdef MADV_HUGEPAGE
    if (advise) madvise(d, bytes, MADV_HUGEPAGE);
#endif
    volatile uint64_t sink = sum_bytes(d, bytes / 256 * 256); /* fault it in (from disk if it is not cached) */
    printf("file %s: %zu MiB mapped%s, best of %d runs, kernel %s\n", path, bytes >> 20,
           advise ? " (MADV_HUGEPAGE)" : "", runs, kernel_name);
    long pmd = smaps_kb("FilePmdMapped");
    if (pmd >= 0) printf("huge pages: %ld of %zu MiB\n", pmd / 1024, bytes >> 20);
    report(d, bytes, runs, thread_list);
    munmap(r, bytes + huge);
    (void)sink;
    return 0;
}

int main(int argc, char **argv) {
    size_t mib = 2048;
    int runs = 10;
    const char *thread_list = "1,2", *file = NULL;
    int advise = 1, drop = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc) mib = (size_t)strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) thread_list = argv[++i];
        else if (!strcmp(argv[i], "-f") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "-n")) advise = 0;
        else if (!strcmp(argv[i], "-D")) drop = 1;
        else {
            fprintf(stderr, "usage: %s [-s MiB] [-r runs] [-t threads[,threads...]] [-f FILE [-n | -D]]\n", argv[0]);
            return 2;
        }
    }
    if (mib < 1 || runs < 1) {
        fprintf(stderr, "bandwidth: -s and -r must be >= 1\n");
        return 2;
    }
    size_t bytes = mib << 20;
    if (file && drop) return drop_file(file);
    if (file) return probe_file(file, advise, runs, thread_list);
    /* On transparent huge pages where the kernel gives them (2 MiB aligned, MADV_HUGEPAGE: with THP
     * in "madvise" mode, the usual default, an unadvised buffer gets 4 KB pages). qnext maps the
     * weights on huge pages too (src/util/filemap.c), so this is the ceiling its decode is held to;
     * 4 KB pages read slower (more TLB misses, the prefetchers stop at every page). */
    unsigned char *buf = aligned_alloc(2u << 20, bytes);
    if (!buf) {
        fprintf(stderr, "bandwidth: cannot allocate %zu MiB\n", mib);
        return 1;
    }
#ifdef MADV_HUGEPAGE
    madvise(buf, bytes, MADV_HUGEPAGE);
#endif
    /* First touch in parallel, with non-zero data so no page stays the shared zero page. */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < bytes / 8; i++) ((uint64_t *)buf)[i] = i * 0x9E3779B97F4A7C15ull;

    long huge_kb = smaps_kb("AnonHugePages"); /* what the buffer got */
    printf("buffer %zu MiB, best of %d runs, kernel %s\n", mib, runs, kernel_name);
    if (huge_kb >= 0) printf("huge pages: %ld of %zu MiB\n", huge_kb / 1024, mib);
    report(buf, bytes, runs, thread_list);
    free(buf);
    return 0;
}
