/* conversation.h - keeps a session in step with a growing token sequence (a chat rendered by
 * its template, a server's conversation cache) without re-processing what it already holds.
 *
 * The module owns the list of ids fed to the session so far and a set of snapshots taken at
 * message boundaries (right before each occurrence of a marker token such as <|im_start|>,
 * plus any the caller asks for). Given the next full token sequence, conversation_sync
 * finds the longest common prefix with what was fed:
 *   - the sequence only extends it: feed just the new suffix;
 *   - it diverges earlier (a template rewrote an old turn, e.g. Qwen3's Thinking template
 *     drops earlier reasoning; the user edited a message; a shorter prefix for a retry):
 *     restore the latest snapshot whose position is <= the common prefix (the KV cache below
 *     it is intact, the recurrent state comes from the snapshot), or start from zero when
 *     there is none, and feed from there.
 * Either way the session ends at the end of the new sequence with the logits of its last
 * token, exactly as if the whole sequence had been fed to a fresh session.
 *
 * Generated tokens are appended with conversation_feed so that the module knows them. */
#ifndef QNEXT_CONVERSATION_H
#define QNEXT_CONVERSATION_H

#include <stddef.h>
#include <stdint.h>

#include "qnext.h"

typedef struct {
    int32_t snapshot_token; /* snapshot right before each occurrence of this id; -1: none */
    int max_snapshots;      /* kept at most (the oldest go first); 0: 64 */
} conversation_params;

typedef struct {
    int n_common;  /* longest common prefix of the new sequence and the ids fed before */
    int n_reused;  /* ids of the new sequence the session already held (not processed) */
    int n_fed;     /* ids processed to reach the end of the new sequence */
    int rewound;   /* 1: restored a snapshot or started over because the sequence diverged */
} conversation_stats;

typedef struct conversation conversation;

/* The conversation drives session s of model m (it owns neither); s is reset. p may be NULL. */
conversation *conversation_new(qnext_model *m, qnext_session *s, const conversation_params *p, char *err,
                               size_t errlen);
void conversation_free(conversation *c);

/* Brings the session to the end of tokens[0..n) (n >= 1) with minimal work. logits (vocab
 * floats, may be NULL) receives the logits after the last token; st (may be NULL) says what
 * was reused. On error the conversation stays usable (it may have rewound further). */
qnext_status conversation_sync(conversation *c, const int32_t *tokens, int n, float *logits, conversation_stats *st,
                               char *err, size_t errlen);
/* Appends tokens (e.g. one generated token) at the end; logits as in qnext_session_feed
 * with QNEXT_LOGITS_LAST (may be NULL). */
qnext_status conversation_feed(conversation *c, const int32_t *tokens, int n, float *logits, char *err,
                               size_t errlen);
/* Takes a snapshot at the current position (e.g. before generating an answer), unless one
 * is there already. */
qnext_status conversation_mark(conversation *c, char *err, size_t errlen);
/* Forgets everything: session at position 0, no ids, no snapshots. */
void conversation_reset(conversation *c);

qnext_session *conversation_session(const conversation *c);
/* The ids fed so far (the session's position is *n). */
const int32_t *conversation_tokens(const conversation *c, int *n);
int conversation_n_snapshots(const conversation *c);
/* Bytes held by snapshots. */
size_t conversation_snapshot_bytes(const conversation *c);

#endif
