/* stop.h - stop strings over streamed text. Generation produces text piece by piece (one
 * token's worth at a time); a stop string may be split across pieces, so text that could
 * still be the start of a stop string is held back until it either completes the stop
 * string (then it is dropped, with everything after it) or can no longer match (then it
 * is released). The stop string itself is never emitted, as in OpenAI's API and vLLM.
 * When stop strings overlap, the one that completes first in the text wins (at the same
 * end, the longer one), so the result does not depend on how the text was cut.
 *
 *   stop_matcher m; stop_matcher_init(&m, stops, n, err, sizeof err);
 *   for each piece: { size_t n; const char *out = stop_matcher_push(&m, piece, len, &n);
 *                     write(out, n); if (m.stopped >= 0) break; }
 *   at the end:     out = stop_matcher_flush(&m, &n); write(out, n);
 *
 * With pieces that end on UTF-8 character boundaries (tokenizer_stream does that) and valid
 * UTF-8 stop strings, everything released ends on a character boundary too. */
#ifndef QNEXT_STOP_H
#define QNEXT_STOP_H

#include <stddef.h>

typedef struct {
    char **stops;       /* copies of the non-empty stop strings */
    size_t *stop_lens;
    int n_stops;
    char *held;         /* text held back: it could still begin a stop string */
    size_t held_len, held_cap;
    char *out;          /* the text a push releases (returned to the caller) */
    size_t out_cap;
    int stopped;        /* index (into the list given to init) of the stop string found, or -1 */
    int *orig_index;    /* stops[i] was argument orig_index[i] */
} stop_matcher;

/* Copies the stop strings (empty ones are ignored). Returns 0, or -1 when out of memory. */
int stop_matcher_init(stop_matcher *m, const char *const *stops, int n_stops, char *err, size_t errlen);
void stop_matcher_free(stop_matcher *m);
/* Forgets held text and the stopped state (for the next generation). */
void stop_matcher_reset(stop_matcher *m);
/* Appends text[0..len) and returns the text that is now safe to emit (*out_len bytes; the
 * pointer is valid until the next call). When a stop string completes, m->stopped is set to
 * its index and what is returned is the text before it; later pushes return nothing.
 * Returns NULL with *out_len 0 when out of memory. */
const char *stop_matcher_push(stop_matcher *m, const char *text, size_t len, size_t *out_len);
/* At the end of generation (no stop string found): releases the held-back text. */
const char *stop_matcher_flush(stop_matcher *m, size_t *out_len);

#endif
