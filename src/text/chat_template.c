/* chat_template.c - model-level chat template API: loads the template and special tokens
 * from a model directory, prepares the messages the way transformers'
 * apply_chat_template does, and renders with the Jinja2 interpreter (jinja.c). */
#define _GNU_SOURCE /* memmem */
#include "text/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/jinja.h"

struct chat_template {
    jinja_template *tpl;
    json *special; /* JSON object of special-token variables */
};

static void set_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

chat_template *chat_template_parse(const char *source, size_t len, char *err, size_t errlen) {
    jinja_template *t = jinja_parse(source, len, err, errlen);
    if (!t) return NULL;
    chat_template *ct = calloc(1, sizeof *ct);
    if (ct) ct->special = json_new(JSON_OBJECT);
    if (!ct || !ct->special) {
        jinja_free(t);
        free(ct);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    ct->tpl = t;
    return ct;
}

void chat_template_free(chat_template *ct) {
    if (!ct) return;
    jinja_free(ct->tpl);
    json_free(ct->special);
    free(ct);
}

int chat_template_set_special_tokens(chat_template *ct, const json *tokens, char *err, size_t errlen) {
    if (!tokens || tokens->type != JSON_OBJECT) {
        set_err(err, errlen, "special tokens must be a JSON object");
        return -1;
    }
    json *copy = json_clone(tokens);
    if (!copy) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    json_free(ct->special);
    ct->special = copy;
    return 0;
}

/* Reads a whole file; NULL if it cannot be opened. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (buf) *len = n;
    return buf;
}

/* A token value in tokenizer_config.json: a string or an AddedToken object. */
static const json *token_string(const json *v) {
    if (!v) return NULL;
    if (v->type == JSON_STRING) return v;
    if (v->type == JSON_OBJECT) {
        const json *c = json_get(v, "content");
        if (c && c->type == JSON_STRING) return c;
    }
    return NULL;
}

chat_template *chat_template_load_dir(const char *dir, char *err, size_t errlen) {
    char path[4096], msg[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json *cfg = NULL;
    FILE *probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        cfg = json_parse_file(path, msg, sizeof msg);
        if (!cfg) {
            set_err(err, errlen, msg);
            return NULL;
        }
        if (cfg->type != JSON_OBJECT) {
            snprintf(err, errlen, "%s: expected a JSON object", path);
            json_free(cfg);
            return NULL;
        }
    }
    chat_template *ct = NULL;
    char jpath[4096];
    snprintf(jpath, sizeof jpath, "%s/chat_template.jinja", dir);
    size_t len = 0;
    char *src = read_file(jpath, &len);
    if (src) {
        ct = chat_template_parse(src, len, msg, sizeof msg);
        free(src);
        if (!ct) {
            if (err && errlen) snprintf(err, errlen, "%s: %s", jpath, msg);
            json_free(cfg);
            return NULL;
        }
    } else {
        const json *t = cfg ? json_get(cfg, "chat_template") : NULL;
        if (t && t->type == JSON_ARRAY) { /* named templates: use "default" */
            const json *found = NULL;
            for (size_t i = 0; i < t->n; i++) {
                const char *name = json_get_string(t->items[i], "name");
                const json *tt = json_get(t->items[i], "template");
                if (name && !strcmp(name, "default") && tt && tt->type == JSON_STRING) found = tt;
            }
            t = found;
        }
        if (!t || t->type != JSON_STRING) {
            if (err && errlen)
                snprintf(err, errlen, "%s: no chat template (neither chat_template.jinja nor a \"chat_template\" string "
                         "in tokenizer_config.json)", dir);
            json_free(cfg);
            return NULL;
        }
        ct = chat_template_parse(t->str, t->len, msg, sizeof msg);
        if (!ct) {
            if (err && errlen) snprintf(err, errlen, "%s: chat_template: %s", path, msg);
            json_free(cfg);
            return NULL;
        }
    }
    if (cfg) {
        static const char *names[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                                      "mask_token", NULL};
        for (int i = 0; names[i]; i++) {
            const json *s = token_string(json_get(cfg, names[i]));
            if (s && !json_object_set(ct->special, names[i], json_new_string(s->str, s->len))) {
                set_err(err, errlen, "out of memory");
                chat_template_free(ct);
                json_free(cfg);
                return NULL;
            }
        }
    }
    json_free(cfg);
    return ct;
}

static int key_is(const json *obj, size_t i, const char *k) {
    return obj->key_lens[i] == strlen(k) && !memcmp(obj->keys[i], k, obj->key_lens[i]);
}

/* transformers drops keys whose value is None, then, when a message carries reasoning
 * (the first non-null of reasoning_content, thinking, reasoning), rebuilds it as
 * {"thinking": reasoning, **message, "reasoning_content": reasoning}: `thinking` comes
 * first (keeping the message's own value if it has one) and `reasoning_content` keeps its
 * place or is appended. Key order matters to templates that iterate a message. */
static json *prepare_message(const json *m) {
    json *out = json_new(JSON_OBJECT);
    if (!out) return NULL;
    const json *reasoning = NULL;
    static const char *fields[] = {"reasoning_content", "thinking", "reasoning"};
    for (int f = 0; f < 3 && !reasoning; f++) {
        const json *v = json_get(m, fields[f]);
        if (v && v->type != JSON_NULL) reasoning = v;
    }
    if (reasoning && !json_object_set(out, "thinking", json_clone(reasoning))) goto fail;
    for (size_t i = 0; i < m->n; i++) {
        if (m->items[i]->type == JSON_NULL) continue;
        char *key = malloc(m->key_lens[i] + 1);
        if (!key) goto fail;
        memcpy(key, m->keys[i], m->key_lens[i]);
        key[m->key_lens[i]] = 0;
        const json *v = m->items[i];
        if (reasoning && key_is(m, i, "reasoning_content")) v = reasoning;
        int rc = json_object_set(out, key, json_clone(v));
        free(key);
        if (!rc) goto fail;
    }
    if (reasoning && !json_object_set(out, "reasoning_content", json_clone(reasoning))) goto fail;
    return out;
fail:
    json_free(out);
    return NULL;
}

int chat_template_render(const chat_template *ct, const json *messages, const json *tools, int add_generation_prompt,
                         const json *kwargs, char **out, size_t *out_len, char *err, size_t errlen) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!messages || messages->type != JSON_ARRAY) {
        set_err(err, errlen, "messages must be a JSON array");
        return -1;
    }
    if (!messages->n) {
        set_err(err, errlen, "cannot apply the chat template to an empty conversation");
        return -1;
    }
    for (size_t i = 0; i < messages->n; i++)
        if (messages->items[i]->type != JSON_OBJECT) {
            if (err && errlen) snprintf(err, errlen, "message %zu is not a JSON object", i);
            return -1;
        }
    if (tools && tools->type != JSON_ARRAY && tools->type != JSON_NULL) {
        set_err(err, errlen, "tools must be a JSON array");
        return -1;
    }
    if (kwargs && kwargs->type != JSON_OBJECT && kwargs->type != JSON_NULL) {
        set_err(err, errlen, "template kwargs must be a JSON object");
        return -1;
    }
    /* The variables transformers passes: messages, tools, documents, add_generation_prompt,
     * then special tokens, then kwargs (which win over special tokens). */
    json *vars = json_new(JSON_OBJECT), *msgs = json_new(JSON_ARRAY);
    int ok = vars && msgs;
    for (size_t i = 0; ok && i < messages->n; i++) {
        json *m = prepare_message(messages->items[i]);
        ok = m && json_array_push(msgs, m);
        if (!ok) json_free(m);
    }
    if (ok) ok = json_object_set(vars, "messages", msgs);
    else json_free(msgs);
    if (ok) ok = json_object_set(vars, "tools", tools ? json_clone(tools) : json_new(JSON_NULL));
    if (ok) ok = json_object_set(vars, "documents", json_new(JSON_NULL));
    if (ok) ok = json_object_set(vars, "add_generation_prompt", json_new(add_generation_prompt ? JSON_TRUE : JSON_FALSE));
    for (size_t i = 0; ok && ct->special && i < ct->special->n; i++)
        ok = json_object_set(vars, ct->special->keys[i], json_clone(ct->special->items[i]));
    for (size_t i = 0; ok && kwargs && kwargs->type == JSON_OBJECT && i < kwargs->n; i++) {
        char *key = malloc(kwargs->key_lens[i] + 1);
        if (!key) { ok = 0; break; }
        memcpy(key, kwargs->keys[i], kwargs->key_lens[i]);
        key[kwargs->key_lens[i]] = 0;
        ok = json_object_set(vars, key, json_clone(kwargs->items[i]));
        free(key);
    }
    if (!ok) {
        json_free(vars);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    int rc = jinja_render(ct->tpl, vars, out, out_len, err, errlen);
    json_free(vars);
    return rc;
}

int chat_prompt_opens_think(const char *p, size_t n) {
    const char *last = NULL;
    for (const char *q = p; (q = memmem(q, n - (size_t)(q - p), "<|im_start|>assistant", 21)); q++) last = q;
    if (!last) return 0;
    const char *think = NULL;
    size_t rest = n - (size_t)(last - p);
    for (const char *q = last; (q = memmem(q, rest - (size_t)(q - last), "<think>", 7)); q++) think = q;
    if (!think) return 0;
    return memmem(think, n - (size_t)(think - p), "</think>", 8) == NULL;
}
