/* jinja.h - a Jinja2 template interpreter for chat templates (internal to src/text).
 *
 * Models ship their prompt format as a Jinja2 template; chat_template.c renders it with
 * this interpreter. It implements the subset of Jinja2 that Hugging Face chat templates
 * use, with the environment transformers sets up (trim_blocks, lstrip_blocks, no
 * trailing newline, loop controls, transformers' own `tojson`, `raise_exception`,
 * `namespace`, `strftime_now`). docs/TEMPLATES.md lists what is supported. Anything
 * outside the subset is reported as an error with a line and column, never rendered
 * approximately. */
#ifndef QNEXT_JINJA_H
#define QNEXT_JINJA_H

#include <stddef.h>
#include "util/json.h"

typedef struct jinja_template jinja_template;

/* Parses template source. Returns NULL and writes "line L, column C: message" into err
 * on a syntax error or on syntax outside the supported subset. */
jinja_template *jinja_parse(const char *src, size_t len, char *err, size_t errlen);
void jinja_free(jinja_template *t);

/* Renders with the members of the JSON object `vars` as top-level variables (JSON null
 * becomes Python None, numbers keep int/float-ness). On success returns 0 and a malloc'd,
 * NUL-terminated *out (the caller frees it); on error returns -1 and a message in err. */
int jinja_render(const jinja_template *t, const json *vars, char **out, size_t *out_len, char *err,
                 size_t errlen);

#endif
