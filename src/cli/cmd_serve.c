/* cmd_serve.c - `qnext serve`: the OpenAI-compatible HTTP server (src/serve). This file only
 * parses the command line; see docs/SERVER.md for the endpoints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "serve/server.h"

static const char serve_usage[] =
    "usage: qnext serve -m MODEL_DIR [options]\n"
    "  --host ADDR          numeric address to bind (default 127.0.0.1)\n"
    "  --port N             TCP port (default 8080; 0 picks a free one)\n"
    "  --parallel N         requests decoded together in one batch (default 4)\n"
    "  --ctx N              context window per request in tokens (default 4096, capped at the model's)\n"
    "  --api-key KEY        require 'Authorization: Bearer KEY' (also read from QNEXT_API_KEY)\n"
    "  --cache-mb N         conversation cache budget in MiB (default 1024; 0 disables snapshots)\n"
    "  --queue N            requests that may wait for a slot (default 64)\n"
    "  --queue-full MODE    429 (answer 'too many requests', default) or wait\n"
    "  --max-body BYTES     largest request body (default 8 MiB)\n"
    "  --prefill-chunk N    prompt tokens prefilled per engine step (default 256)\n"
    "  --kv-type T          KV cache: auto (f32 for checkpoints, bf16 for GGUF), f32, bf16, q8\n"
    "  --state-type T       DeltaNet recurrent states: f32 (default, exact) or bf16 (half their memory and\n"
    "                       snapshot size; each update computed in f32, stored rounded)\n"
    "  --drain S            seconds SIGTERM lets running requests finish (default 5)\n"
    "  --alias NAME         model name reported by the API (default: the directory's name)\n"
    "  -t, --threads N      compute threads (default: all cores)\n"
    "  --no-mmap            read the weights into memory (huge pages) instead of mapping the file\n"
    "  --repack             copy Q8_0/Q4_K/Q5_K/Q6_K matrices into groups of 16 interleaved rows at load for a faster\n"
    "                       AVX-512 VNNI kernel (batched decoding); resident size stays about the file's\n"
    "  --act-bits 8|16      activations of the quantized products: 8 bits per block (default), or 16 (two\n"
    "                       8-bit passes: as exact as f32 activations, prompts ~2x slower)\n";

int cmd_serve(int argc, char **argv) {
    serve_options o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    o.port = 8080;
    o.parallel = 4;
    o.n_ctx = 4096;
    o.cache_mb = 1024;
    o.queue_max = 64;
    o.max_body = 8 << 20;
    o.prefill_chunk = 256;
    o.drain_s = 5;
    o.api_key = getenv("QNEXT_API_KEY");
    if (o.api_key && !*o.api_key) o.api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", serve_usage); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(o.model_dir = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--host")) { if (!(o.host = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--alias")) { if (!(o.model_name = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--api-key")) { if (!(o.api_key = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--port")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 65535, &n)) return 2; o.port = (int)n; }
        else if (!strcmp(a, "--parallel") || !strcmp(a, "-np")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 256, &n)) return 2; o.parallel = (int)n; }
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 16, 1 << 24, &n)) return 2; o.n_ctx = (int)n; }
        else if (!strcmp(a, "--cache-mb")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1L << 30, &n)) return 2; o.cache_mb = n; }
        else if (!strcmp(a, "--queue")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 20, &n)) return 2; o.queue_max = (int)n; }
        else if (!strcmp(a, "--max-body")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1024, 1L << 32, &n)) return 2; o.max_body = n; }
        else if (!strcmp(a, "--kv-type")) { if (!(v = args_value(argc, argv, &i)) || (o.kv_type = args_kv_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--state-type")) { if (!(v = args_value(argc, argv, &i)) || (o.state_type = args_state_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--no-mmap")) o.no_mmap = 1;
        else if (!strcmp(a, "--repack")) o.repack = 1;
        else if (!strcmp(a, "--act-bits")) {
            if (!(v = args_value(argc, argv, &i)) || (o.act_bits = args_act_bits(v)) < 0) return 2;
        }
        else if (!strcmp(a, "--prefill-chunk")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1 << 16, &n)) return 2; o.prefill_chunk = (int)n; }
        else if (!strcmp(a, "--drain")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 3600, &n)) return 2; o.drain_s = (int)n; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 4096, &n)) return 2; o.threads = (int)n; }
        else if (!strcmp(a, "--queue-full")) {
            if (!(v = args_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "429")) o.queue_wait = 0;
            else if (!strcmp(v, "wait")) o.queue_wait = 1;
            else { fprintf(stderr, "qnext: --queue-full must be 429 or wait\n"); return 2; }
        } else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, serve_usage); return 2; }
    }
    if (!o.model_dir) { fprintf(stderr, "qnext: -m MODEL_DIR is required\n%s", serve_usage); return 2; }
    return serve_main(&o);
}
