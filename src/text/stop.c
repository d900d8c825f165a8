/* stop.c - see stop.h. The matcher keeps only the text that could still begin a stop
 * string, so each push costs O((held + piece) * total stop length) at worst, and held text
 * is shorter than the longest stop string. */
#include "stop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int stop_matcher_init(stop_matcher *m, const char *const *stops, int n_stops, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    m->stopped = -1;
    if (n_stops > 0) {
        m->stops = calloc((size_t)n_stops, sizeof *m->stops);
        m->stop_lens = calloc((size_t)n_stops, sizeof *m->stop_lens);
        m->orig_index = calloc((size_t)n_stops, sizeof *m->orig_index);
        if (!m->stops || !m->stop_lens || !m->orig_index) goto oom;
    }
    for (int i = 0; i < n_stops; i++) {
        size_t l = stops[i] ? strlen(stops[i]) : 0;
        if (!l) continue;
        if (!(m->stops[m->n_stops] = malloc(l + 1))) goto oom;
        memcpy(m->stops[m->n_stops], stops[i], l + 1);
        m->stop_lens[m->n_stops] = l;
        m->orig_index[m->n_stops] = i;
        m->n_stops++;
    }
    return 0;
oom:
    stop_matcher_free(m);
    if (err && errlen) snprintf(err, errlen, "out of memory for stop strings");
    return -1;
}

void stop_matcher_free(stop_matcher *m) {
    for (int i = 0; i < m->n_stops; i++) free(m->stops[i]);
    free(m->stops);
    free(m->stop_lens);
    free(m->orig_index);
    free(m->held);
    free(m->out);
    memset(m, 0, sizeof *m);
    m->stopped = -1;
}

void stop_matcher_reset(stop_matcher *m) {
    m->held_len = 0;
    m->stopped = -1;
}

/* 1 when s[0..n) is a proper prefix of some stop string. */
static int is_partial(const stop_matcher *m, const char *s, size_t n) {
    for (int i = 0; i < m->n_stops; i++)
        if (n < m->stop_lens[i] && !memcmp(m->stops[i], s, n)) return 1;
    return 0;
}

static int reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 1;
    size_t c = need * 2 < 64 ? 64 : need * 2;
    char *nb = realloc(*buf, c);
    if (!nb) return 0;
    *buf = nb;
    *cap = c;
    return 1;
}

const char *stop_matcher_push(stop_matcher *m, const char *text, size_t len, size_t *out_len) {
    *out_len = 0;
    if (m->stopped >= 0) return "";
    size_t n = m->held_len + len;
    if (!reserve(&m->out, &m->out_cap, n + 1)) return NULL;
    /* out = held text + the new piece; then decide how much of it to release */
    if (m->held_len) memcpy(m->out, m->held, m->held_len);
    if (len) memcpy(m->out + m->held_len, text, len);
    m->held_len = 0;
    /* The stop string that completes first wins (the smallest end), so the result does not
     * depend on how the text was cut into pieces; at the same end the longer one, then the
     * first listed. */
    size_t best_end = (size_t)-1, best = 0;
    int best_i = -1;
    for (int i = 0; i < m->n_stops; i++)
        for (size_t p = 0; p + m->stop_lens[i] <= n; p++)
            if (!memcmp(m->out + p, m->stops[i], m->stop_lens[i])) {
                if (p + m->stop_lens[i] < best_end || (p + m->stop_lens[i] == best_end && p < best)) {
                    best_end = p + m->stop_lens[i];
                    best = p;
                    best_i = i;
                }
                break;
            }
    if (best_i >= 0) {
        m->stopped = m->orig_index[best_i];
        *out_len = best;
        return m->out;
    }
    /* Hold back the earliest suffix that could still grow into a stop string. */
    size_t keep_from = n;
    for (size_t p = 0; p < n; p++)
        if (is_partial(m, m->out + p, n - p)) { keep_from = p; break; }
    if (keep_from < n) {
        if (!reserve(&m->held, &m->held_cap, n - keep_from)) return NULL;
        memcpy(m->held, m->out + keep_from, n - keep_from);
        m->held_len = n - keep_from;
    }
    *out_len = keep_from;
    return m->out;
}

const char *stop_matcher_flush(stop_matcher *m, size_t *out_len) {
    *out_len = 0;
    if (m->stopped >= 0 || !m->held_len) return "";
    *out_len = m->held_len;
    m->held_len = 0;
    return m->held;
}
