/* conversation.c - see conversation.h. Snapshots are kept sorted by position; after a
 * rewind to position p every snapshot beyond p is dropped, because feeding from p
 * overwrites the KV entries those snapshots rely on. */
#include "conversation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct conversation {
    qnext_session *s;
    conversation_params p;
    int vocab;
    int32_t *ids;           /* fed so far; n_ids == the session's position */
    int n_ids, cap_ids;
    qnext_snapshot **snaps; /* sorted by position, distinct positions > 0 */
    int n_snaps;
    float *logits;          /* after the last fed id, when have_logits */
    int have_logits;
};

conversation *conversation_new(qnext_model *m, qnext_session *s, const conversation_params *p, char *err,
                               size_t errlen) {
    char local[128];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!m || !s) { snprintf(err, errlen, "conversation_new: NULL argument"); return NULL; }
    conversation *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->s = s;
    c->p.snapshot_token = -1;
    c->p.max_snapshots = 64;
    if (p) {
        c->p = *p;
        if (c->p.max_snapshots <= 0) c->p.max_snapshots = 64;
    }
    c->vocab = qnext_model_config(m)->vocab_size;
    c->snaps = calloc((size_t)c->p.max_snapshots, sizeof *c->snaps);
    c->logits = malloc((size_t)c->vocab * sizeof *c->logits);
    c->cap_ids = 256;
    c->ids = malloc((size_t)c->cap_ids * sizeof *c->ids);
    if (!c->snaps || !c->logits || !c->ids) goto oom;
    qnext_session_reset(s);
    return c;
oom:
    conversation_free(c);
    snprintf(err, errlen, "out of memory creating a conversation");
    return NULL;
}

static void drop_snapshots_after(conversation *c, int pos) {
    while (c->n_snaps && qnext_snapshot_pos(c->snaps[c->n_snaps - 1]) > pos) qnext_snapshot_free(c->snaps[--c->n_snaps]);
}

void conversation_free(conversation *c) {
    if (!c) return;
    if (c->snaps) drop_snapshots_after(c, -1);
    free(c->snaps);
    free(c->logits);
    free(c->ids);
    free(c);
}

void conversation_reset(conversation *c) {
    drop_snapshots_after(c, -1);
    qnext_session_reset(c->s);
    c->n_ids = 0;
    c->have_logits = 0;
}

qnext_session *conversation_session(const conversation *c) { return c->s; }
const int32_t *conversation_tokens(const conversation *c, int *n) {
    *n = c->n_ids;
    return c->ids;
}
int conversation_n_snapshots(const conversation *c) { return c->n_snaps; }
size_t conversation_snapshot_bytes(const conversation *c) {
    size_t b = 0;
    for (int i = 0; i < c->n_snaps; i++) b += qnext_snapshot_bytes(c->snaps[i]);
    return b;
}

qnext_status conversation_mark(conversation *c, char *err, size_t errlen) {
    int pos = c->n_ids;
    if (pos == 0 || (c->n_snaps && qnext_snapshot_pos(c->snaps[c->n_snaps - 1]) == pos)) return QNEXT_OK;
    qnext_snapshot *snap;
    qnext_status st = qnext_session_snapshot(c->s, &snap, err, errlen);
    if (st) return st;
    if (c->n_snaps == c->p.max_snapshots) { /* drop the oldest: rewinds that far start over */
        qnext_snapshot_free(c->snaps[0]);
        memmove(c->snaps, c->snaps + 1, (size_t)(c->n_snaps - 1) * sizeof *c->snaps);
        c->n_snaps--;
    }
    c->snaps[c->n_snaps++] = snap; /* positions only grow between rewinds, so the list stays sorted */
    return QNEXT_OK;
}

/* Feeds tokens at the end, snapshotting before each marker token; the last piece computes
 * the logits into c->logits. */
static qnext_status feed_pieces(conversation *c, const int32_t *tokens, int n, char *err, size_t errlen) {
    if (c->n_ids + n > c->cap_ids) {
        int cap = c->cap_ids;
        while (cap < c->n_ids + n) cap *= 2;
        int32_t *ni = realloc(c->ids, (size_t)cap * sizeof *ni);
        if (!ni) { snprintf(err, errlen, "out of memory for %d conversation tokens", cap); return QNEXT_ERR_MEMORY; }
        c->ids = ni;
        c->cap_ids = cap;
    }
    c->have_logits = 0;
    int i = 0;
    while (i < n) {
        if (tokens[i] == c->p.snapshot_token) {
            qnext_status st = conversation_mark(c, err, errlen);
            if (st) return st;
        }
        int j = i + 1; /* the piece runs up to the next marker */
        while (j < n && tokens[j] != c->p.snapshot_token) j++;
        int last = j == n;
        qnext_status st = qnext_session_feed(c->s, tokens + i, j - i, last ? c->logits : NULL,
                                             last ? QNEXT_LOGITS_LAST : QNEXT_LOGITS_NONE, err, errlen);
        if (st) return st;
        memcpy(c->ids + c->n_ids, tokens + i, (size_t)(j - i) * sizeof *tokens);
        c->n_ids += j - i;
        i = j;
    }
    c->have_logits = 1;
    return QNEXT_OK;
}

static qnext_status check_ids(const conversation *c, const int32_t *tokens, int n, char *err, size_t errlen) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab) {
            snprintf(err, errlen, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, c->vocab);
            return QNEXT_ERR_ARG;
        }
    return QNEXT_OK;
}

qnext_status conversation_feed(conversation *c, const int32_t *tokens, int n, float *logits, char *err,
                               size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!c || n < 1 || !tokens) { snprintf(err, errlen, "conversation_feed: bad arguments"); return QNEXT_ERR_ARG; }
    qnext_status st = check_ids(c, tokens, n, err, errlen);
    if (st) return st;
    if (c->n_ids + n > qnext_session_n_ctx(c->s)) {
        snprintf(err, errlen, "context full: %d tokens in the session + %d new > n_ctx %d", c->n_ids, n,
                 qnext_session_n_ctx(c->s));
        return QNEXT_ERR_CONTEXT;
    }
    st = feed_pieces(c, tokens, n, err, errlen);
    if (!st && logits) memcpy(logits, c->logits, (size_t)c->vocab * sizeof *logits);
    return st;
}

qnext_status conversation_sync(conversation *c, const int32_t *tokens, int n, float *logits, conversation_stats *st,
                               char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    conversation_stats dummy;
    if (!st) st = &dummy;
    memset(st, 0, sizeof *st);
    if (!c || n < 1 || !tokens) { snprintf(err, errlen, "conversation_sync: bad arguments"); return QNEXT_ERR_ARG; }
    qnext_status rc = check_ids(c, tokens, n, err, errlen);
    if (rc) return rc;
    if (n > qnext_session_n_ctx(c->s)) {
        snprintf(err, errlen, "context full: %d tokens > n_ctx %d", n, qnext_session_n_ctx(c->s));
        return QNEXT_ERR_CONTEXT;
    }
    int lcp = 0;
    while (lcp < n && lcp < c->n_ids && tokens[lcp] == c->ids[lcp]) lcp++;
    st->n_common = lcp;
    if (lcp == n && n == c->n_ids && c->have_logits) { /* nothing new */
        st->n_reused = n;
        if (logits) memcpy(logits, c->logits, (size_t)c->vocab * sizeof *logits);
        return QNEXT_OK;
    }
    if (lcp < c->n_ids || lcp == n) {
        /* Diverged (or a prefix of what is there, whose last logits we must recompute): go back
         * to the latest snapshot that leaves at least one id to feed. */
        int target = lcp < n ? lcp : n - 1;
        st->rewound = 1;
        for (;;) {
            drop_snapshots_after(c, target);
            if (!c->n_snaps) {
                qnext_session_reset(c->s);
                c->n_ids = 0;
                break;
            }
            qnext_snapshot *snap = c->snaps[c->n_snaps - 1];
            char e2[256];
            if (!qnext_session_restore(c->s, snap, e2, sizeof e2)) {
                c->n_ids = qnext_snapshot_pos(snap);
                break;
            }
            /* a stale snapshot (should not happen: we never overwrite below a kept one) */
            qnext_snapshot_free(c->snaps[--c->n_snaps]);
        }
        c->have_logits = 0;
    }
    st->n_reused = c->n_ids;
    st->n_fed = n - c->n_ids;
    rc = feed_pieces(c, tokens + c->n_ids, n - c->n_ids, err, errlen);
    if (!rc && logits) memcpy(logits, c->logits, (size_t)c->vocab * sizeof *logits);
    return rc;
}
