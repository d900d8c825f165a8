/* test_bad_checkpoints.c - broken checkpoints get one clear error, never a crash.
 *
 * Copies a fixture into a temporary directory, breaks one thing at a time (a missing
 * tensor, a wrong shape, a truncated shard, a corrupt header, an unsupported dtype, a
 * missing or invalid config.json, a missing shard) and checks that qnext_model_open
 * returns the right status with a one-line message naming the file and the tensor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qnext.h"
#include "test_util.h"

static char tmpdir[256];

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1);
    if (fread(b, 1, n, f) != (size_t)n) { free(b); fclose(f); return NULL; }
    b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const char *b, size_t len) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, len, f);
    fclose(f);
}

static void copy_file(const char *src_dir, const char *name) {
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/%s", src_dir, name);
    snprintf(b, sizeof b, "%s/%s", tmpdir, name);
    size_t n;
    char *d = slurp(a, &n);
    if (d) spit(b, d, n);
    free(d);
}

/* Fresh copy of a fixture in tmpdir. */
static void fresh(const char *fixture, const char **files) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s/*", tmpdir);
    if (system(cmd)) {}
    for (int i = 0; files[i]; i++) copy_file(fixture, files[i]);
}

/* Replaces the first occurrence of `from` in a file by `to` (same length). */
static int patch(const char *name, const char *from, const char *to) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    size_t n;
    char *b = slurp(p, &n);
    if (!b) return 0;
    size_t fl = strlen(from);
    for (size_t i = 0; i + fl <= n; i++)
        if (!memcmp(b + i, from, fl)) {
            memcpy(b + i, to, strlen(to));
            spit(p, b, n);
            free(b);
            return 1;
        }
    free(b);
    return 0;
}

static void expect(const char *what, qnext_status want, const char *must1, const char *must2) {
    qnext_model *m = NULL;
    char err[1024] = "";
    qnext_model_params mp = {.quiet = 1};
    qnext_status st = qnext_model_open(tmpdir, &mp, &m, err, sizeof err);
    CHECK(st == want, "%s: status %s, want %s (%s)", what, qnext_status_str(st), qnext_status_str(want), err);
    CHECK(m == NULL, "%s: a model was returned", what);
    CHECK(err[0] && !strchr(err, '\n'), "%s: message must be one non-empty line: '%s'", what, err);
    if (must1) CHECK(strstr(err, must1) != NULL, "%s: message lacks '%s': %s", what, must1, err);
    if (must2) CHECK(strstr(err, must2) != NULL, "%s: message lacks '%s': %s", what, must2, err);
    printf("%-26s -> %s\n", what, err);
    if (m) qnext_model_close(m);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qnext-bad-XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    const char *fx = "tests/fixtures/base_gqa";
    const char *files[] = {"config.json", "model.safetensors", NULL};

    fresh(fx, files);
    {   /* sanity: the untouched copy opens */
        qnext_model *m;
        char err[512];
        qnext_model_params mp = {.quiet = 1};
        CHECK(qnext_model_open(tmpdir, &mp, &m, err, sizeof err) == QNEXT_OK, "pristine copy: %s", err);
        qnext_model_close(m);
        /* a bad parameter: one line naming it, no model */
        qnext_model *b = NULL;
        qnext_model_params bad = {.quiet = 1, .act_bits = 12};
        CHECK(qnext_model_open(tmpdir, &bad, &b, err, sizeof err) == QNEXT_ERR_ARG && b == NULL && strstr(err, "act_bits") &&
                  strstr(err, "12") && !strchr(err, '\n'),
              "act_bits 12: %s", err);
    }

    fresh(fx, files);
    CHECK(patch("model.safetensors", "\"model.norm.weight\"", "\"model.norm.weighX\""), "patch failed");
    expect("missing tensor", QNEXT_ERR_FORMAT, "model.norm.weight", "missing");

    fresh(fx, files);
    CHECK(patch("model.safetensors", "\"shape\":[512,64]", "\"shape\":[64,512]"), "patch failed");
    expect("wrong shape", QNEXT_ERR_FORMAT, "model.safetensors", "[64, 512]");

    fresh(fx, files);
    CHECK(patch("model.safetensors", "\"dtype\":\"BF16\"", "\"dtype\":\"I16\" "), "patch failed");
    expect("unsupported dtype", QNEXT_ERR_FORMAT, "model.safetensors", "I16");

    fresh(fx, files);
    {
        char p[512];
        snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
        struct stat sb;
        stat(p, &sb);
        if (truncate(p, sb.st_size * 6 / 10)) {}
    }
    expect("truncated shard", QNEXT_ERR_FORMAT, "model.safetensors", "truncated");

    fresh(fx, files);
    {
        char p[512];
        snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
        if (truncate(p, 5)) {}
    }
    expect("file shorter than header", QNEXT_ERR_FORMAT, "model.safetensors", "truncated");

    fresh(fx, files);
    CHECK(patch("model.safetensors", "{", "#"), "patch failed");
    expect("corrupt header JSON", QNEXT_ERR_FORMAT, "model.safetensors", "corrupt");

    fresh(fx, files);
    {
        char p[512];
        snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
        FILE *f = fopen(p, "r+b");
        unsigned char big[8] = {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0};
        fwrite(big, 1, 8, f);
        fclose(f);
    }
    expect("corrupt header length", QNEXT_ERR_FORMAT, "model.safetensors", "header length");

    fresh(fx, files);
    CHECK(patch("model.safetensors", "\"data_offsets\":[0,", "\"data_offsets\":[9,"), "patch failed");
    expect("inconsistent offsets", QNEXT_ERR_FORMAT, "model.safetensors", "bytes");

    const char *nocfg[] = {"model.safetensors", NULL};
    fresh(fx, nocfg);
    expect("missing config.json", QNEXT_ERR_CONFIG, "config.json", "cannot open");

    fresh(fx, files);
    {
        char p[512];
        snprintf(p, sizeof p, "%s/config.json", tmpdir);
        spit(p, "{\"model_type\": \"qwen3_next\", \"hidden_size\": ", 44);
    }
    expect("invalid config.json", QNEXT_ERR_CONFIG, "config.json", "invalid JSON");

    fresh(fx, files);
    CHECK(patch("config.json", "\"hidden_size\": 64", "\"hidden_size\":\"6\""), "patch failed");
    expect("config wrong type", QNEXT_ERR_CONFIG, "config.json", "hidden_size");

    fresh(fx, files);
    CHECK(patch("config.json", "\"qwen3_next\"", "\"qwen2_moe\" "), "patch failed");
    expect("config other model", QNEXT_ERR_CONFIG, "config.json", "qwen2_moe");

    fresh(fx, files);
    CHECK(patch("config.json", "\"hidden_size\": 64", "\"hidden_size\": 96"), "patch failed");
    expect("config disagrees", QNEXT_ERR_FORMAT, "model.embed_tokens.weight", "expected");

    const char *noweights[] = {"config.json", NULL};
    fresh(fx, noweights);
    expect("no weights", QNEXT_ERR_IO, "model.safetensors", NULL);

    /* Sharded checkpoints: a missing shard and a tensor absent from its shard. */
    const char *sfx = "tests/fixtures/mha_sharded_mtp";
    const char *sfiles[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
                            "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", NULL};
    fresh(sfx, sfiles);
    {
        char p[512];
        snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", tmpdir);
        unlink(p);
    }
    expect("missing shard", QNEXT_ERR_IO, "model-00002-of-00003.safetensors", "cannot open");

    fresh(sfx, sfiles);
    CHECK(patch("model.safetensors.index.json", "\"model.norm.weight\": \"model-00003", "\"model.norm.weight\": \"model-00001"),
          "patch failed");
    expect("index names wrong shard", QNEXT_ERR_FORMAT, "model.norm.weight", "model-00001-of-00003.safetensors");

    fresh(sfx, sfiles);
    CHECK(patch("model.safetensors.index.json", "\"weight_map\"", "\"weight_mop\""), "patch failed");
    expect("index without weight_map", QNEXT_ERR_FORMAT, "model.safetensors.index.json", "weight_map");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    return tu_finish("test_bad_checkpoints");
}
