/* sampler.h - picks the next token from a row of logits: greedy or random sampling with
 * temperature, top-k, top-p (nucleus) and min-p, after repetition / presence / frequency
 * penalties, with a seeded PRNG of its own so that a seed always gives the same tokens.
 *
 * Semantics follow vLLM (and Hugging Face transformers' logits processors):
 *   0. logit bias (OpenAI's logit_bias, sampler_set_logit_bias): bias[id] is added to the
 *      logit of id, before everything else (vLLM applies it before the penalties);
 *   1. penalties, on the (biased) logits:
 *      - repetition_penalty r (1 = off) for every token seen in the prompt or the output:
 *        a positive logit is divided by r, a negative one multiplied by r;
 *      - presence_penalty a: logit -= a for every token that occurs in the output so far;
 *      - frequency_penalty f: logit -= f * count for every token of the output so far;
 *   2. temperature T: logits / T (T == 0 means greedy: the argmax of the penalised logits);
 *   3. top-k (0 = off): keep the k largest (ties broken by the lower id);
 *   4. top-p (1 = off): in descending order keep each token while the probability mass of the
 *      tokens before it is < p (the smallest set whose mass reaches p; at least one token);
 *   5. min-p (0 = off): keep tokens whose probability is >= min_p * the largest probability;
 *   6. draw from the renormalised softmax of what is kept.
 * "Prompt" and "output" are what the caller told the sampler with sampler_set_prompt and
 * sampler_accept (vLLM: the repetition penalty looks at both, presence and frequency only at
 * the output).
 *
 * Every buffer is allocated by sampler_new, sized by the vocabulary: sampling a token
 * allocates nothing. A sampler is not thread-safe; use one per sequence. */
#ifndef QNEXT_SAMPLER_H
#define QNEXT_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#define SAMPLER_MAX_TOP_LOGPROBS 20 /* OpenAI's limit for top_logprobs */
#define SAMPLER_MAX_EOS 16

typedef struct {
    float temperature;        /* 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repetition_penalty; /* 1: off; must be > 0 */
    float presence_penalty;   /* 0: off */
    float frequency_penalty;  /* 0: off */
    uint64_t seed;
    int n_top_logprobs;       /* top-N log-probabilities to report, 0..SAMPLER_MAX_TOP_LOGPROBS */
} sampler_params;

/* What one draw produced. Log-probabilities are those of the model's distribution, the
 * log-softmax of the raw logits before any penalty or filter (what OpenAI-style `logprobs`
 * report, and vLLM's default). */
typedef struct {
    int32_t token;
    float logprob;                                /* of the chosen token */
    int n_top;                                    /* entries in top_* (n_top_logprobs) */
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];    /* most likely first */
    float top_logprobs[SAMPLER_MAX_TOP_LOGPROBS];
} sampler_result;

typedef struct sampler sampler;

/* Greedy, no filters, no penalties, seed 0. */
sampler_params sampler_params_default(void);

/* Reads DIR/generation_config.json when it exists and overrides the members of *p that it
 * names: temperature, top_k, top_p, min_p, repetition_penalty, and do_sample (false sets
 * temperature to 0: greedy). Its eos_token_id (an integer or a list) goes to eos[0..*n_eos)
 * (at most max_eos ids; *n_eos is left alone when the file has none).
 * Returns 1 when the file was read, 0 when there is none, -1 with a message in err when it
 * is malformed. */
int sampler_load_generation_config(const char *dir, sampler_params *p, int32_t *eos, int *n_eos, int max_eos,
                                   char *err, size_t errlen);

/* Checks the parameters (ranges) and allocates the buffers for vocab_size ids. Returns NULL
 * with a message in err on a bad parameter or when out of memory. */
sampler *sampler_new(int vocab_size, const sampler_params *p, char *err, size_t errlen);
void sampler_free(sampler *s);
const sampler_params *sampler_get_params(const sampler *s);
/* Re-seeds the PRNG (the same seed gives the same sequence of draws). */
void sampler_seed(sampler *s, uint64_t seed);

/* Forgets the prompt and output history (not the PRNG state). */
void sampler_reset_history(sampler *s);
/* Marks ids as seen in the prompt (for the repetition penalty). Out-of-range ids are ignored. */
void sampler_set_prompt(sampler *s, const int32_t *ids, int n);
/* Records a token appended to the output (call it with each generated token). */
void sampler_accept(sampler *s, int32_t token);

/* Sets the logit bias (step 0): bias[k] is added to the logit of ids[k]. Replaces any earlier
 * bias; n == 0 clears it. An id given twice keeps its last bias (as a JSON object's last key
 * wins). The list is copied once here (a sparse list: sampling stays allocation-free and
 * touches only these ids). Returns 0, or -1 with a message in err for an id outside the
 * vocabulary, a non-finite bias, or no memory. */
int sampler_set_logit_bias(sampler *s, const int32_t *ids, const float *bias, int n, char *err, size_t errlen);

/* Applies the penalties of the current history to logits[0..vocab) in place; exposed for tests
 * and for callers that want the processed logits. */
void sampler_apply_penalties(const sampler *s, float *logits);

/* Draws the next token from logits[0..vocab) (not modified). res may be NULL. Returns the
 * token id. Does not call sampler_accept. */
int32_t sampler_sample(sampler *s, const float *logits, sampler_result *res);

/* The candidate set that steps 2-5 keep for these (already penalised) logits: writes the kept
 * ids in descending order of logit to ids (room for vocab ids) and returns how many. With
 * temperature 0 it is the single argmax. Exposed so that tests can check the filters. */
int sampler_candidates(sampler *s, const float *logits, int32_t *ids);

#endif
