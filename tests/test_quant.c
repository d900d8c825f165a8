/* test_quant.c - checks src/kernels/cpu/quant.c against references made by ggml's code:
 *   - tests/data/quant/<TYPE>.bin (tools/make_quant_refs.py): our dequantization must
 *     equal the gguf package's and ggml's dequantize_row_* bit for bit; our quantizer's
 *     bytes must equal the package's (F16, BF16, Q4_0..Q8_0, MXFP4) and ggml's own
 *     quantize_row_*_ref (all quantized types, K quants included; IQ4_NL and IQ4_XS
 *     against quantize_iq4_nl/_xs, which llama-quantize uses; the committed files were
 *     made with ggml's libggml-base.so, see docs/GGUF.md);
 *   - tests/data/quant/types.txt: the type table (block size, bytes per block) of ggml;
 *   - f16/bf16 conversions against closed forms (exhaustive for 16-bit -> f32, nearest-
 *     even property in exact double arithmetic for a large f32 sample);
 *   - K-quant round trips: every code is the nearest one for the stored sub-block scale
 *     (the final step of ggml's algorithm), and the rms error stays within the format's
 *     expected bound (see check_roundtrip). */
#include "kernels/cpu/quant.h"
#include "test_util.h"

#include <stdint.h>

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float fbits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* Index of the first differing float (bitwise), or -1. */
static int64_t first_diff_f32(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) if (bits(a[i]) != bits(b[i])) return i;
    return -1;
}
static int64_t first_diff_u8(const uint8_t *a, const uint8_t *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) if (a[i] != b[i]) return i;
    return -1;
}

/* ------------------------------------------------------------ type table */

static void check_type_table_file(const char *path, int skip_q8_1) {
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s missing", path);
    if (!f) return;
    char name[32];
    int id, bs, ts, n = 0;
    while (fscanf(f, "%31s %d %d %d", name, &id, &bs, &ts) == 4) {
        n++;
        /* gguf-py lists Q8_1 as 40 bytes, but ggml's block_q8_1 is {ggml_half2 ds;
         * int8 qs[32]} = 36 bytes; it is an activation-only format never stored in GGUF
         * files, so the Python table's value is not authoritative here. */
        if (skip_q8_1 && id == QUANT_Q8_1) continue;
        const quant_type_info *t = quant_type_get(id);
        CHECK(t != NULL, "type %s (%d) unknown", name, id);
        if (!t) continue;
        CHECK(strcmp(t->name, name) == 0, "type %d name %s, ggml %s", id, t->name, name);
        CHECK(t->block_size == bs && t->type_size == (size_t)ts, "type %s sizes %lld/%zu, ggml %d/%d", name,
              (long long)t->block_size, t->type_size, bs, ts);
        CHECK(quant_type_from_name(name) == id, "from_name(%s)", name);
        CHECK(quant_row_bytes(id, (int64_t)bs * 3) == (size_t)ts * 3, "row bytes %s", name);
        if (bs > 1) CHECK(quant_row_bytes(id, bs + 1) == 0, "partial block %s", name);
    }
    fclose(f);
    CHECK(n >= 30, "only %d types in %s", n, path);
}

static void check_type_table(void) {
    check_type_table_file("tests/data/quant/types.txt", 1);      /* gguf-py's GGML_QUANT_SIZES */
    check_type_table_file("tests/data/quant/ggml_types.txt", 0); /* ggml's ggml_type_size/blck_size */
    CHECK(quant_type_get(4) == NULL && quant_type_get(-1) == NULL && quant_type_get(1000) == NULL, "bad ids");
}

/* ------------------------------------------------------------ f16 / bf16 */

/* exact value of an f16 / bf16 bit pattern, closed form, in double */
static double f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}
static double bf16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
    return s ? -v : v;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng32(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* r must be the nearest representable value to x, ties to the even pattern; overflow
 * goes to inf once x reaches max + half an ulp (IEEE round to nearest). */
static int is_rne(double x, uint16_t r, double (*val)(uint16_t), double maxv, double half_ulp_max) {
    uint16_t sign = r & 0x8000;
    if ((x < 0) != (sign != 0) && val(r) != 0) return 0;
    double ax = fabs(x), vr = fabs(val(r));
    if (ax >= maxv + half_ulp_max) return isinf(vr);
    if (isinf(vr)) return 0;
    uint16_t mag = r & 0x7fff;
    double lo = mag > 0 ? fabs(val((uint16_t)(mag - 1))) : -1, hi = fabs(val((uint16_t)(mag + 1)));
    double dr = fabs(ax - vr);
    if (mag > 0 && fabs(ax - lo) < dr) return 0;
    if (!isinf(hi) && fabs(ax - hi) < dr) return 0;
    if (mag > 0 && fabs(ax - lo) == dr && (mag & 1)) return 0;
    if (!isinf(hi) && fabs(ax - hi) == dr && (mag & 1)) return 0;
    return 1;
}

static void check_half_conversions(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        double v = f16_value((uint16_t)h);
        float f = quant_f16_to_f32((uint16_t)h);
        int ok = isnan(v) ? (isnan(f) && (bits(f) >> 31) == (h >> 15) && ((bits(f) >> 13) & 0x3ff) == (h & 0x3ff))
                          : (double)f == v && (bits(f) >> 31) == (h >> 15);
        if (!ok && bad++ < 5) CHECK(0, "f16 %04x -> %a", h, f);
        /* and back: every f16 value round-trips (NaN -> canonical quiet NaN) */
        uint16_t back = quant_f32_to_f16(f);
        ok = isnan(v) ? back == ((h & 0x8000) | 0x7e00) : back == h;
        if (!ok && bad++ < 5) CHECK(0, "f16 %04x -> f32 -> %04x", h, back);
        double b = bf16_value((uint16_t)h);
        float g = quant_bf16_to_f32((uint16_t)h);
        ok = isnan(b) ? (isnan(g) && bits(g) == h << 16) : (double)g == b && bits(g) == h << 16;
        if (!ok && bad++ < 5) CHECK(0, "bf16 %04x -> %a", h, g);
    }
    CHECK(bad == 0, "%d 16-bit -> f32 mismatches", bad);

    /* f32 -> f16/bf16: random bit patterns, plus values crowded around every f16
     * midpoint (ties) and the overflow / underflow boundaries */
    bad = 0;
    const double f16max = 65504.0, f16half = 16.0;            /* ulp(65504) = 32 */
    const double bfmax = bf16_value(0x7f7f), bfhalf = ldexp(1, 127 - 8);
    for (int i = 0; i < 3000000; i++) {
        uint32_t u;
        if (i < 1000000) u = rng32();
        else if (i < 2000000) {
            /* near an f16 value or midpoint: f16-representable magnitude with random low bits */
            uint32_t h = rng32() & 0x7fff;
            float base = quant_f16_to_f32((uint16_t)h);
            if (isnan(base) || isinf(base)) continue;
            u = bits(base) + (rng32() % 8193) - 4096;
            if (rng32() & 1) u = bits(base) | 0x1000 | (rng32() & 1 ? 0 : (rng32() & 0xfff)); /* tie or above */
            u ^= rng32() & 0x80000000u;
        } else {
            /* near a bf16 midpoint */
            u = (rng32() & 0xffff0000u) | 0x8000u | (rng32() & 1 ? 0 : (rng32() & 0x7fff));
        }
        float f = fbits(u);
        uint16_t h = quant_f32_to_f16(f), b = quant_f32_to_bf16(f);
        if (isnan(f)) {
            int ok = h == (((u >> 16) & 0x8000) | 0x7e00) && b == (((u >> 16) | 0x40) & 0xffff);
            if (!ok && bad++ < 5) CHECK(0, "NaN %08x -> f16 %04x bf16 %04x", u, h, b);
            continue;
        }
        if (!is_rne((double)f, h, f16_value, f16max, f16half) && bad++ < 5) CHECK(0, "f32 %a -> f16 %04x", f, h);
        if (!is_rne((double)f, b, bf16_value, bfmax, bfhalf) && bad++ < 5) CHECK(0, "f32 %a -> bf16 %04x", f, b);
    }
    CHECK(bad == 0, "%d f32 -> 16-bit conversion errors", bad);
    CHECK(quant_f32_to_f16(65519.996f) == 0x7bff && quant_f32_to_f16(65520.f) == 0x7c00, "f16 overflow edge");
    CHECK(quant_f32_to_f16(0x1p-25f) == 0 && quant_f32_to_f16(0x1.000002p-25f) == 1, "f16 underflow edge");
    CHECK(quant_f32_to_f16(-0.f) == 0x8000, "-0");
}

/* ------------------------------------------------------------ reference files */

/* K-quant round-trip: the stored block must decode, per sub-block, to
 * x_hat = d_j * q - m_j with q the code nearest to x (within float rounding), unless q
 * sits at an end of its range 0..nmax (clamped). Returns the number of violations. */
static int check_nearest_codes(int type, const float *x, const uint8_t *blk, const float *xh) {
    int viol = 0;
    int sub = type == QUANT_Q6_K ? 16 : 32;
    for (int j = 0; j < 256 / sub; j++) {
        /* recover the sub-block step from the decoded values: codes differ by integers */
        double step;
        if (type == QUANT_Q6_K) {
            double d = quant_f16_to_f32((uint16_t)(blk[208] | blk[209] << 8));
            step = fabs(d * (int8_t)blk[192 + j]);
        } else {
            double d = quant_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
            const uint8_t *q = blk + 4;
            int sc = j < 4 ? (q[j] & 63) : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            step = d * sc;
        }
        if (step == 0) continue;
        double lo = 1e300, hi = -1e300;
        for (int i = 0; i < sub; i++) {
            double v = xh[j * sub + i];
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        for (int i = 0; i < sub; i++) {
            double xv = x[j * sub + i], yv = xh[j * sub + i], e = xv - yv;
            if (fabs(e) <= 0.5 * step * (1 + 1e-5) + 1e-30) continue;
            int at_end;
            if (type == QUANT_Q6_K) {
                /* codes -32..31 times the signed scale s: clamped at -32 or 31 */
                double s = quant_f16_to_f32((uint16_t)(blk[208] | blk[209] << 8)) * (int8_t)blk[192 + j];
                double c = yv / s, cx = xv / s;
                at_end = (fabs(c + 32) < 1e-3 && cx < -32) || (fabs(c - 31) < 1e-3 && cx > 31);
            } else {
                /* codes 0..nmax: x beyond an end of the range and x_hat at that end */
                at_end = (e > 0 && yv == hi) || (e < 0 && yv == lo);
            }
            if (!at_end) viol++;
        }
    }
    return viol;
}

static void check_file(const char *tname) {
    char path[256];
    snprintf(path, sizeof path, "tests/data/quant/%s.bin", tname);
    size_t len;
    uint8_t *buf = read_file(path, &len);
    CHECK(buf != NULL, "cannot read %s", path);
    if (!buf) return;
    CHECK(len >= 24 && memcmp(buf, "QNQREF1", 8) == 0, "%s: bad header", path);
    int type = (int)rd32(buf + 8);
    uint32_t nblk = rd32(buf + 12), nq = rd32(buf + 16), flags = rd32(buf + 20);
    const quant_type_info *t = quant_type_get(type);
    CHECK(t && strcmp(t->name, tname) == 0, "%s: type %d", path, type);
    if (!t) { free(buf); return; }
    int64_t n_deq = (int64_t)nblk * t->block_size;
    size_t raw_bytes = (size_t)nblk * t->type_size, qbytes = quant_row_bytes(type, nq);
    size_t need = 24 + raw_bytes + 4 * (size_t)n_deq + 4 * (size_t)nq + ((flags & 1) ? qbytes : 0) +
                  ((flags & 2) ? qbytes : 0) + ((flags & 4) ? 4 * (size_t)n_deq : 0);
    CHECK(len == need, "%s: %zu bytes, expected %zu", path, len, need);
    if (len != need) { free(buf); return; }
    const uint8_t *raw = buf + 24;
    const float *ref_deq = (const float *)(raw + raw_bytes); /* offsets are multiples of 4 */
    const float *x = ref_deq + n_deq;
    const uint8_t *p = (const uint8_t *)(x + nq);
    const uint8_t *pkg_q = (flags & 1) ? p : NULL;
    if (flags & 1) p += qbytes;
    const uint8_t *ggml_q = (flags & 2) ? p : NULL;
    if (flags & 2) p += qbytes;
    const float *ggml_deq = (flags & 4) ? (const float *)p : NULL;

    /* (a) dequantization, bit for bit */
    float *deq = malloc(sizeof(float) * (size_t)n_deq);
    CHECK(quant_dequantize_row(type, raw, deq, n_deq) == 0, "%s dequantize failed", tname);
    int64_t di = first_diff_f32(deq, ref_deq, n_deq);
    CHECK(di < 0, "%s dequant differs from gguf package at %lld: %a vs %a", tname, (long long)di,
          di >= 0 ? deq[di] : 0, di >= 0 ? ref_deq[di] : 0);
    if (ggml_deq) {
        di = first_diff_f32(deq, ggml_deq, n_deq);
        CHECK(di < 0, "%s dequant differs from ggml at %lld", tname, (long long)di);
    }

    /* reference dot product: equals a double-precision dot of the package's values
     * to within fp32 accumulation error */
    if (t->block_size <= 256 && n_deq >= 256) {
        float xs[256];
        for (int i = 0; i < 256; i++) xs[i] = (float)((i * 37 % 101) - 50) / 64.f;
        for (int64_t r = 0; r + 256 <= n_deq; r += 256) {
            size_t off = (size_t)(r / t->block_size) * t->type_size;
            double exact = 0, mag = 0;
            for (int i = 0; i < 256; i++) {
                exact += (double)ref_deq[r + i] * xs[i];
                mag += fabs((double)ref_deq[r + i] * xs[i]);
            }
            float got = quant_dot_row_f32(type, raw + off, xs, 256);
            if (!(mag < 1e30)) continue; /* fp32 accumulation would overflow */
            CHECK(fabs(got - exact) <= 1e-5 * mag + 1e-30, "%s dot row %lld: %g vs %g", tname, (long long)r, got, exact);
        }
    }

    /* read-only formats: the file holds no quantization rows */
    if (!t->can_quantize) {
        CHECK(nq == 0 && !(flags & 3), "%s: quantization data for a read-only format", tname);
        uint8_t blk[256];
        CHECK(quant_quantize_row(type, deq, blk, t->block_size) == -1, "%s: quantize accepted", tname);
        free(deq);
        free(buf);
        return;
    }

    /* (b) quantization bytes */
    uint8_t *q = malloc(qbytes);
    CHECK(quant_quantize_row(type, x, q, nq) == 0, "%s quantize failed", tname);
    if (pkg_q) {
        int64_t qi = first_diff_u8(q, pkg_q, (int64_t)qbytes);
        CHECK(qi < 0, "%s quant differs from gguf package at byte %lld (block %lld): %02x vs %02x", tname,
              (long long)qi, (long long)(qi / (int64_t)t->type_size), qi >= 0 ? q[qi] : 0, qi >= 0 ? pkg_q[qi] : 0);
    }
    if (ggml_q) {
        int64_t qi = first_diff_u8(q, ggml_q, (int64_t)qbytes);
        CHECK(qi < 0, "%s quant differs from ggml at byte %lld (block %lld): %02x vs %02x", tname, (long long)qi,
              (long long)(qi / (int64_t)t->type_size), qi >= 0 ? q[qi] : 0, qi >= 0 ? ggml_q[qi] : 0);
    }

    /* (c) round trip: error bounds per 256-element test row (every row is one
     * distribution, see make_quant_refs.py). */
    float *xh = malloc(sizeof(float) * nq);
    CHECK(quant_dequantize_row(type, q, xh, nq) == 0, "%s dequantize of own blocks", tname);
    for (uint32_t r = 0; r + 256 <= nq && type != QUANT_F32 && type != QUANT_F16 && type != QUANT_BF16; r += 256) {
        const float *xr = x + r, *yr = xh + r;
        double se = 0, amax = 0, sx = 0;
        for (int i = 0; i < 256; i++) {
            double e = (double)xr[i] - yr[i];
            se += e * e;
            sx += (double)xr[i] * xr[i];
            if (fabs(xr[i]) > amax) amax = fabs(xr[i]);
        }
        double rms_err = sqrt(se / 256), rms_x = sqrt(sx / 256);
        /* Expected error: a code of b bits over a range R has step R/(2^b-1) and, for
         * values spread over the step, rms error step/sqrt(12). The symmetric formats
         * (Q4_0, Q5_0, Q8_0, Q6_K, Q8_K) span R = 2*amax of the (sub-)block; with the
         * row's amax as an upper bound for every block this gives
         *   rms_err <= 2*amax/(2^b-1)/sqrt(12) * 1.25,
         * the 1.25 covering the f16 scale, the 6/8-bit sub-scales and clamping. The
         * affine formats (Q4_1, Q5_1, Q4_K, Q5_K) have R <= 2*amax too. Rows whose
         * values underflow the f16 scale (tiny inputs) are all-zero blocks: error = |x|. */
        int b = type == QUANT_Q4_0 || type == QUANT_Q4_1 || type == QUANT_Q4_K ? 4
              : type == QUANT_Q5_0 || type == QUANT_Q5_1 || type == QUANT_Q5_K ? 5
              : type == QUANT_Q6_K ? 6 : 8;
        double bound = 2 * amax / ((1 << b) - 1) / sqrt(12.0) * 1.25;
        /* An f16 scale below 2^-14 is subnormal, with an absolute rounding error of up
         * to 2^-25 whatever its size; multiplied by the largest |code * sub-scale| it
         * is an error floor of the format for rows of tiny values (Q8_K's f32 scale has
         * no such floor). */
        double cmax = type == QUANT_Q4_0 ? 8 : type == QUANT_Q4_1 ? 16 : type == QUANT_Q5_0 ? 16
                    : type == QUANT_Q5_1 ? 32 : type == QUANT_Q8_0 ? 127 : type == QUANT_Q4_K ? 16 * 63
                    : type == QUANT_Q5_K ? 32 * 63 : type == QUANT_Q6_K ? 32 * 128 : 0;
        bound += cmax * 0x1p-25;
        /* MXFP4: levels 0, 1, 2, 3, 4, 6, 8, 12 times d = 2^(floor(log2 amax) - 3), so a value
         * is within half the widest gap (2d) of a level, or above 12d and clipped by less than
         * 16d - 12d = 4d <= amax / 2 */
        if (type == QUANT_MXFP4) bound = amax / 2;
        /* IQ4_NL / IQ4_XS: 16 levels from -127 to 113 times the (sub-)block scale, at most 24
         * apart; the scale puts the block's largest magnitude near level -127 or 113, so the
         * step is at most 24 / 113 of amax, with the same 1.25 margin (IQ4_XS: its 6-bit
         * sub-scales) and the subnormal-f16 floor (largest |code * sub-scale|: 127 * 32) */
        if (type == QUANT_IQ4_NL || type == QUANT_IQ4_XS)
            bound = 24.0 / 113 * amax / sqrt(12.0) * 1.25 + (type == QUANT_IQ4_XS ? 127 * 32 : 127) * 0x1p-25;
        (void)rms_x;
        CHECK(rms_err <= bound + 1e-35, "%s row %u: rms error %g > bound %g (rms x %g)", tname, r / 256, rms_err,
              bound, rms_x);
        if (type == QUANT_Q4_K || type == QUANT_Q5_K || type == QUANT_Q6_K) {
            int v = check_nearest_codes(type, xr, q + (size_t)(r / 256) * t->type_size, yr);
            CHECK(v == 0, "%s row %u: %d codes are not the nearest for their stored scale", tname, r / 256, v);
        }
    }
    /* exact formats: the round trip through the 16-bit type is the conversion */
    if (type == QUANT_F32) CHECK(first_diff_f32(x, xh, nq) < 0, "F32 round trip");

    free(xh);
    free(q);
    free(deq);
    free(buf);
}

static void check_api_errors(void) {
    float f[64] = {0};
    uint8_t b[512] = {0};
    CHECK(quant_dequantize_row(QUANT_Q4_K, b, f, 100) == -1, "partial block accepted");
    CHECK(quant_quantize_row(QUANT_Q3_K, f, b, 256) == -1, "Q3_K quantize accepted");
    CHECK(quant_dequantize_row(QUANT_IQ2_XS, b, f, 256) == -1, "IQ2_XS accepted");
    CHECK(quant_dequantize_row(5, b, f, 32) == -1, "type 5 accepted");
    CHECK(isnan(quant_dot_row_f32(QUANT_Q4_0, b, f, 33)), "dot partial block");
    /* non-finite input must not crash (values are unspecified) */
    float nasty[256];
    for (int i = 0; i < 256; i++) nasty[i] = i % 3 == 0 ? NAN : i % 3 == 1 ? INFINITY : -1e38f;
    int types[] = {QUANT_Q4_0, QUANT_Q4_1, QUANT_Q5_0, QUANT_Q5_1, QUANT_Q8_0, QUANT_Q4_K, QUANT_Q5_K, QUANT_Q6_K, QUANT_Q8_K, QUANT_MXFP4, QUANT_IQ4_NL, QUANT_IQ4_XS};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        CHECK(quant_quantize_row(types[i], nasty, b, 256) == 0, "nasty input %d", types[i]);
}

int main(void) {
    check_type_table();
    check_half_conversions();
    const char *names[] = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
                           "IQ4_NL", "IQ4_XS", "MXFP4"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) check_file(names[i]);
    check_api_errors();
    return tu_finish("test_quant");
}
