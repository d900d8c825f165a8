/* cmd_bench.c - `qnext bench`: prompt-processing and generation speed, like llama-bench.
 *
 *   pp<P>: a fresh session processes P tokens in micro-batches; tokens per second.
 *   tg<N>: after an (untimed) context of D tokens, N tokens are decoded one at a time.
 * Each test is repeated -r times and printed as mean +- standard deviation. For generation
 * the weight bytes read per token and the achieved GB/s are printed too: decoding at batch
 * 1 is memory-bound, so GB/s against the machine's read bandwidth is the figure of merit.
 * --probe measures that bandwidth in the same process just before and after each generation repeat, as
 * bench/bandwidth.c does, so each repeat's fraction of it holds even where the machine's memory
 * speed changes from minute to minute (docs/PERF.md). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "cli.h"
#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/ops.h"
#include "qnext.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The probe: each thread sums its own slice of buf with 64-byte vector loads and four
 * accumulators, built for AVX-512 and for the baseline and chosen at load (as gdn_generic.c's
 * hot loops are). */
typedef uint64_t probe_v8 __attribute__((vector_size(64)));
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "default")))
#endif
static uint64_t probe_sum(const probe_v8 *v, size_t n) {
    probe_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (size_t i = 0; i < n; i += 4) { a0 += v[i]; a1 += v[i + 1]; a2 += v[i + 2]; a3 += v[i + 3]; }
    a0 += a1 + a2 + a3;
    return a0[0] + a0[1] + a0[2] + a0[3] + a0[4] + a0[5] + a0[6] + a0[7];
}

/* Read bandwidth in GB/s over the bytes at buf (a multiple of 256 per thread), best of 5. */
static double probe_read_gbs(const void *buf, size_t bytes, int threads) {
    const size_t per = bytes / (size_t)threads / 256 * 256;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < 5; r++) {
        uint64_t tot = 0;
        double t0 = now_s();
#pragma omp parallel num_threads(threads) reduction(+ : tot)
        tot += probe_sum((const probe_v8 *)((const char *)buf + per * (size_t)omp_get_thread_num()), per / 64);
        double gbs = (double)per * threads / (now_s() - t0) / 1e9;
        sink += tot;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    return best;
}

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* tgN on S sessions decoding together against one session. Each session first takes its
 * own 32-token prompt (untimed), so the streams differ as a server's do; then each of the n
 * steps feeds the single session one token and, right after, every one of the S sessions one
 * token in one forward pass. Alternating step by step keeps both measures in the same
 * conditions however this machine's speed drifts, which matters for their ratio. */
#define STREAM_PROMPT 32
static int bench_streams(qnext_model *m, int S, int n, int reps, int kv_type, int state_type, const int32_t *toks,
                         int n_toks) {
    const qnext_config *c = qnext_model_config(m);
    char err[1024];
    int rc = 1;
    qnext_session **ss = calloc((size_t)S + 1, sizeof *ss); /* ss[S]: the single stream */
    qnext_batch_item *it = calloc((size_t)S, sizeof *it);
    float *lg = malloc(sizeof(float) * (size_t)c->vocab_size * (size_t)(S + 1));
    double *v1 = malloc(sizeof(double) * (size_t)reps), *vs = malloc(sizeof(double) * (size_t)reps);
    if (!ss || !it || !lg || !v1 || !vs) { fprintf(stderr, "qnext: out of memory\n"); goto out; }
    qnext_session_params sp = {.n_ctx = STREAM_PROMPT + n + 16, .n_ubatch = S > STREAM_PROMPT ? S : STREAM_PROMPT,
                                .kv_type = kv_type, .state_type = state_type};
    for (int i = 0; i <= S; i++)
        if (qnext_session_new(m, &sp, &ss[i], err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); goto out; }
    /* stream i's tokens: toks from offset (STREAM_PROMPT + n) * i, modulo the table (the
     * single stream takes stream 0's) */
#define STREAM_TOK(i, j) toks[((size_t)(STREAM_PROMPT + n) * (size_t)((i) % S) + (j)) % (size_t)n_toks]
    for (int k = 0; k < reps; k++) {
        int32_t prompt[STREAM_PROMPT];
        for (int i = 0; i <= S; i++) {
            qnext_session_reset(ss[i]);
            for (int j = 0; j < STREAM_PROMPT; j++) prompt[j] = STREAM_TOK(i, j);
            if (qnext_session_feed(ss[i], prompt, STREAM_PROMPT, NULL, QNEXT_LOGITS_NONE, err, sizeof err)) {
                fprintf(stderr, "qnext: %s\n", err);
                goto out;
            }
        }
        double t1 = 0, ts = 0;
        for (int step = 0; step < n; step++) {
            double t0 = now_s();
            if (qnext_session_feed(ss[S], &STREAM_TOK(S, STREAM_PROMPT + step), 1, lg + (size_t)c->vocab_size * S,
                                   QNEXT_LOGITS_LAST, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); goto out; }
            double t2 = now_s();
            for (int i = 0; i < S; i++)
                it[i] = (qnext_batch_item){.session = ss[i], .tokens = &STREAM_TOK(i, STREAM_PROMPT + step),
                                           .n_tokens = 1, .logits = lg + (size_t)c->vocab_size * i,
                                           .logits_mode = QNEXT_LOGITS_LAST};
            if (qnext_batch_feed(it, S, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); goto out; }
            t1 += t2 - t0;
            ts += now_s() - t2;
        }
        v1[k] = n / t1;
        vs[k] = (double)n * S / ts;
    }
#undef STREAM_TOK
    double mu1, sd1, mus, sds;
    mean_sd(v1, reps, &mu1, &sd1);
    mean_sd(vs, reps, &mus, &sds);
    char name[48];
    snprintf(name, sizeof name, "tg%d x1", n);
    printf("| %-14s | %7.2f ± %6.2f |       |        |\n", name, mu1, sd1);
    snprintf(name, sizeof name, "tg%d x%d", n, S);
    printf("| %-14s | %7.2f ± %6.2f |       |        |\n", name, mus, sds);
    printf("\n%d streams: %.2f t/s together, %.2fx one stream's (step by step interleaved in this run)\n", S, mus,
           mus / mu1);
    rc = 0;
out:
    for (int i = 0; i <= S && ss; i++)
        if (ss[i]) qnext_session_free(ss[i]);
    free(ss);
    free(it);
    free(lg);
    free(v1);
    free(vs);
    return rc;
}

static const char *bench_usage =
    "usage: qnext bench -m MODEL [-p 512] [-n 128] [-d DEPTH] [-s STREAMS] [-t THREADS] [-r REPS] [--ubatch N] [--kv-type auto|f32|bf16|q8] [--state-type f32|bf16] [--no-mmap] [--repack] [--act-bits 8|16] [--probe]\n"
    "Prints prompt (ppP) and generation (tgN) tokens per second, mean +- sd over REPS runs,\n"
    "and for generation the bytes read per token (weights, plus the KV cache at depth) and the achieved GB/s;\n"
    "the +state column adds the recurrent and conv state, which each generated token reads and writes.\n"
    "-p 0 or -n 0 skips that test; -d fills D tokens of context once (timed: fill dD) before generation,\n"
    "and each repeat then also runs tgN at depth 0 just before the one at depth D, so that the cost of\n"
    "depth is measured in one run, interleaved, however the machine's speed drifts.\n"
    "--no-mmap reads the weights into memory (huge pages) instead of mapping the file.\n"
    "--repack copies Q8_0/Q4_K/Q5_K/Q6_K matrices into groups of 16 interleaved rows at load (AVX-512 VNNI).\n"
    "--act-bits: the quantized products' activations in 8 bits per block (default), or 16 (two 8-bit passes).\n"
    "-s S (S >= 2) also runs tgN on S sessions that decode together, one token each per step in one\n"
    "forward pass (qnext_batch_feed, as qnext serve's continuous batching does), each after its own\n"
    "32-token prompt, alternating step by step with the same on one session; prints both, the\n"
    "aggregate t/s and their ratio.\n"
    "--probe measures the read bandwidth (1 GiB, the same threads) just before and after each\n"
    "generation repeat and prints each repeat's GB/s as a fraction of their mean.\n";

int cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    long p = 512, n = 128, d = 0, threads = 0, reps = 3, ubatch = 512, streams = 0;
    int kv_type = 0, state_type = 0, no_mmap = 0, repack = 0, probe = 0, act_bits = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", bench_usage); return 0; }
        if (!strcmp(a, "-m")) { if (!(model = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "-p")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 20, &p)) return 2; }
        else if (!strcmp(a, "-n")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 20, &n)) return 2; }
        else if (!strcmp(a, "-d")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 24, &d)) return 2; }
        else if (!strcmp(a, "-s")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 2, 256, &streams)) return 2; }
        else if (!strcmp(a, "-t")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 4096, &threads)) return 2; }
        else if (!strcmp(a, "-r")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1000, &reps)) return 2; }
        else if (!strcmp(a, "--ubatch") || !strcmp(a, "-ub")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1 << 16, &ubatch)) return 2; }
        else if (!strcmp(a, "--kv-type")) { if (!(v = args_value(argc, argv, &i)) || (kv_type = args_kv_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--state-type")) { if (!(v = args_value(argc, argv, &i)) || (state_type = args_state_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--no-mmap")) no_mmap = 1;
        else if (!strcmp(a, "--repack")) repack = 1;
        else if (!strcmp(a, "--act-bits")) {
            if (!(v = args_value(argc, argv, &i)) || (act_bits = args_act_bits(v)) < 0) return 2;
        }
        else if (!strcmp(a, "--probe")) probe = 1;
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, bench_usage); return 2; }
    }
    if (!model) { fprintf(stderr, "qnext: -m MODEL is required\n%s", bench_usage); return 2; }
    qnext_model *m;
    char err[1024];
    qnext_model_params mp = {.n_threads = (int)threads, .no_mmap = no_mmap, .repack = repack, .act_bits = act_bits};
    if (qnext_model_open(model, &mp, &m, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); return 1; }
    const qnext_config *c = qnext_model_config(m);
    qnext_model_stats st;
    qnext_model_get_stats(m, &st);
    int n_ctx = (int)(p > d + n ? p : d + n) + 16;
    qnext_session_params sp = {.n_ctx = n_ctx, .n_ubatch = (int)ubatch, .kv_type = kv_type, .state_type = state_type};
    qnext_session *s, *s0 = NULL;
    if (qnext_session_new(m, &sp, &s, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); qnext_model_close(m); return 1; }

    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_ctx + 1));
    uint64_t r = 12345;
    for (int i = 0; i <= n_ctx; i++) { r = r * 6364136223846793005ull + 1442695040888963407ull; toks[i] = (int32_t)((r >> 33) % (uint64_t)c->vocab_size); }
    float *lg = malloc(sizeof(float) * c->vocab_size);
    double *v = malloc(sizeof(double) * reps), *v0 = malloc(sizeof(double) * reps), *pv = calloc(2 * (size_t)reps, sizeof(double)); /* probes before and after */
    const size_t probe_bytes = (size_t)1 << 30;
    char *probe_buf = NULL;

    printf("model: %s\n", model);
    printf("weights: %.2f GB, %.3f B params (%.3f B active), %.3f GB read per token\n", st.bytes_total / 1e9,
           st.n_params / 1e9, st.n_params_active / 1e9, st.bytes_per_token / 1e9);
    qnext_session_memory mem;
    qnext_session_get_memory(s, &mem);
    printf("threads: %d, kernels: %s, AMX prefill: %s, ubatch: %ld, activations: %s\n", op_get_threads(), op_kernel_name(),
           gemm_amx_mode() ? "on" : "off", ubatch, act_bits == 16 ? "16-bit (two passes)" : "8-bit");
    printf("session: state %.1f MiB (%s), KV %.1f KiB/token (%s), scratch %.1f MiB\n\n", mem.state_bytes / 1048576.0,
           state_type ? "bf16" : "f32", mem.kv_bytes_per_token / 1024.0, mem.kv_name,
           mem.scratch_bytes / 1048576.0);
    /* GB/s counts the weights (and the KV rows at depth) a token reads; "+state" adds the
     * recurrent and conv state, which every generated token reads and writes in full. */
    const double state_rw = 2.0 * (double)mem.state_bytes;
    printf("| test           |              t/s |  GB/s | +state |\n");
    printf("| -------------- | ---------------- | ----- | ------ |\n");
    fflush(stdout);
    int rc = 0;
    if (probe && n > 0) {
        if (!(probe_buf = aligned_alloc((size_t)2 << 20, probe_bytes))) /* 64-byte loads on whole lines, huge pages where the kernel gives them */ { fprintf(stderr, "qnext: --probe: cannot allocate 1 GiB\n"); rc = 1; goto done; }
        memset(probe_buf, 1, probe_bytes); /* faulted in once, outside every timing */
    }
    /* warm-up: touches the weights once so the first timed run does not pay page faults */
    if (qnext_session_feed(s, toks, 1, lg, QNEXT_LOGITS_LAST, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); rc = 1; goto done; }
    if (p > 0) {
        for (int k = 0; k < reps; k++) {
            qnext_session_reset(s);
            double t0 = now_s();
            if (qnext_session_feed(s, toks, (int)p, lg, QNEXT_LOGITS_LAST, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); rc = 1; goto done; }
            v[k] = p / (now_s() - t0);
        }
        double mu, sd;
        mean_sd(v, (int)reps, &mu, &sd);
        char name[32];
        snprintf(name, sizeof name, "pp%ld", p);
        printf("| %-14s | %7.2f ± %6.2f |       |        |\n", name, mu, sd);
        fflush(stdout);
    }
    if (n > 0) {
        /* The context is filled once (timed: prompt speed at this depth) and snapshotted;
         * each repeat restores it, so -r does not multiply a long fill. */
        qnext_snapshot *filled = NULL;
        if (d > 0) {
            qnext_session_reset(s);
            double t0 = now_s();
            if (qnext_session_feed(s, toks, (int)d, NULL, QNEXT_LOGITS_NONE, err, sizeof err) ||
                qnext_session_snapshot(s, &filled, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); rc = 1; goto done; }
            char name[48];
            snprintf(name, sizeof name, "fill d%ld", d);
            printf("| %-14s | %7.2f ± %6.2f |       |        |\n", name, d / (now_s() - t0), 0.0);
            fflush(stdout);
            /* the depth-0 runs go on a second, short session: the filled one keeps its
             * context, as restoring its snapshot needs */
            qnext_session_params sp0 = {.n_ctx = (int)n + 16, .n_ubatch = (int)ubatch, .kv_type = kv_type,
                                        .state_type = state_type};
            if (qnext_session_new(m, &sp0, &s0, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); qnext_snapshot_free(filled); rc = 1; goto done; }
        }
        for (int k = 0; k < reps; k++)
            for (int at_depth = !filled; at_depth <= 1; at_depth++) {
                /* with -d: depth 0 first (on s0), then depth d (s restored to the fill) */
                qnext_session *run = filled && !at_depth ? s0 : s;
                if (at_depth && filled) {
                    if (qnext_session_restore(s, filled, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); qnext_snapshot_free(filled); rc = 1; goto done; }
                } else qnext_session_reset(run);
                const long d0 = at_depth ? d : 0;
                if (probe_buf && at_depth) pv[k] = probe_read_gbs(probe_buf, probe_bytes, op_get_threads());
                double t0 = now_s();
                for (long i = 0; i < n; i++)
                    if (qnext_session_feed(run, &toks[(d0 + i) % n_ctx], 1, lg, QNEXT_LOGITS_LAST, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); qnext_snapshot_free(filled); rc = 1; goto done; }
                (at_depth ? v : v0)[k] = n / (now_s() - t0);
                if (probe_buf && at_depth) pv[reps + k] = probe_read_gbs(probe_buf, probe_bytes, op_get_threads());
            }
        double mu, sd, mu0 = 0, sd0;
        char name[48];
        if (filled) { /* the interleaved runs at depth 0 */
            mean_sd(v0, (int)reps, &mu0, &sd0);
            snprintf(name, sizeof name, "tg%ld", n);
            double b0 = (double)st.bytes_per_token + (double)mem.kv_bytes_per_token * (double)(n / 2);
            printf("| %-14s | %7.2f ± %6.2f | %5.1f | %6.1f |\n", name, mu0, sd0, mu0 * b0 / 1e9, mu0 * (b0 + state_rw) / 1e9);
        }
        qnext_snapshot_free(filled);
        mean_sd(v, (int)reps, &mu, &sd);
        if (d) snprintf(name, sizeof name, "tg%ld @ d%ld", n, d);
        else snprintf(name, sizeof name, "tg%ld", n);
        /* bytes per token: the weights, plus at depth the KV cache rows every token reads */
        double bytes = (double)st.bytes_per_token + (double)mem.kv_bytes_per_token * (double)(d + n / 2);
        printf("| %-14s | %7.2f ± %6.2f | %5.1f | %6.1f |\n", name, mu, sd, mu * bytes / 1e9, mu * (bytes + state_rw) / 1e9);
        if (d && mu0 > 0) printf("\ndepth %ld: %+.1f%% generation speed against depth 0 (interleaved in this run)\n", d, 100.0 * (mu / mu0 - 1));
        if (probe_buf) {
            /* a fraction of the mean of the probes just before and just after the repeat; where
             * they differ by more than 15% the memory speed changed during it, and the row says so */
            printf("\n%s against a read probe run just before and after each repeat (%d thread%s, 1 GiB):\n", name,
                   op_get_threads(), op_get_threads() == 1 ? "" : "s");
            printf("| repeat | probe before, after GB/s |  t/s  | GB/s | of probe | +state of probe |\n");
            printf("| ------ | ------------------------ | ----- | ---- | -------- | --------------- |\n");
            int changed = 0;
            for (int k = 0; k < reps; k++) {
                const double a = pv[k], b = pv[reps + k], p = 0.5 * (a + b);
                const int moved = fabs(a - b) > 0.15 * (a > b ? a : b);
                changed |= moved;
                printf("| %6d | %11.1f, %11.1f | %5.2f | %4.1f | %7.1f%% | %14.1f%% |%s\n", k + 1, a, b, v[k], v[k] * bytes / 1e9,
                       100.0 * v[k] * bytes / 1e9 / p, 100.0 * v[k] * (bytes + state_rw) / 1e9 / p, moved ? " changed" : "");
            }
            if (changed) printf("(changed: the probes before and after differ by more than 15%%; that repeat's fraction is not meaningful)\n");
        }
    }
    if (streams > 1 && n > 0 && bench_streams(m, (int)streams, (int)n, (int)reps, kv_type, state_type, toks, n_ctx)) rc = 1;
done:
    free(v);
    free(v0);
    free(pv);
    free(probe_buf);
    free(lg);
    free(toks);
    qnext_session_free(s);
    if (s0) qnext_session_free(s0);
    qnext_model_close(m);
    return rc;
}
