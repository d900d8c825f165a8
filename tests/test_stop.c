/* test_stop.c - the stop-string matcher over streamed text: stop strings split across
 * pieces, held-back text released when it can no longer match, the earliest stop string
 * winning, and a randomized comparison with the closed form (the text before the first
 * occurrence of any stop string; after each piece, everything except the longest suffix that
 * is a proper prefix of a stop string has been released). */
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "text/stop.h"

/* Pushes the pieces, concatenates what comes out (plus the flush when not stopped). */
static void run(const char *const *stops, int n_stops, const char *const *pieces, int n_pieces, char *out,
                int *stopped) {
    stop_matcher m;
    char err[128];
    stop_matcher_init(&m, stops, n_stops, err, sizeof err);
    size_t o = 0, n;
    for (int i = 0; i < n_pieces; i++) {
        const char *r = stop_matcher_push(&m, pieces[i], strlen(pieces[i]), &n);
        memcpy(out + o, r, n);
        o += n;
    }
    if (m.stopped < 0) {
        const char *r = stop_matcher_flush(&m, &n);
        memcpy(out + o, r, n);
        o += n;
    }
    out[o] = 0;
    *stopped = m.stopped;
    stop_matcher_free(&m);
}

static void test_cases(void) {
    char out[256];
    int st;
    {
        const char *s[] = {"STOP"}, *p[] = {"Hello ", "ST", "OP more", "ignored"};
        run(s, 1, p, 4, out, &st);
        CHECK(!strcmp(out, "Hello ") && st == 0, "split stop: '%s' %d", out, st);
    }
    {
        const char *s[] = {"STOP"}, *p[] = {"a S", "T", "x", "y"};
        run(s, 1, p, 4, out, &st);
        CHECK(!strcmp(out, "a STxy") && st == -1, "held then released: '%s'", out);
    }
    {
        const char *s[] = {"world", "lo w"}, *p[] = {"hel", "lo world"};
        run(s, 2, p, 2, out, &st);
        CHECK(!strcmp(out, "hel") && st == 1, "the first to complete wins: '%s' %d", out, st);
        const char *s2[] = {"abcd", "bc"}, *p2[] = {"xabcd"};
        run(s2, 2, p2, 1, out, &st);
        CHECK(!strcmp(out, "xa") && st == 1, "the first to complete wins, in one piece too: '%s' %d", out, st);
    }
    {
        const char *s[] = {"aab"}, *p[] = {"a", "a", "a", "b", "c"};
        run(s, 1, p, 5, out, &st);
        CHECK(!strcmp(out, "a") && st == 0, "overlapping prefix: '%s'", out);
    }
    {
        const char *s[] = {"", "X"}, *p[] = {"abXcd"};
        run(s, 2, p, 1, out, &st);
        CHECK(!strcmp(out, "ab") && st == 1, "empty stop ignored, index kept: '%s' %d", out, st);
    }
    {
        const char *p[] = {"no ", "stops"};
        run(NULL, 0, p, 2, out, &st);
        CHECK(!strcmp(out, "no stops") && st == -1, "no stop strings");
    }
    { /* a multi-byte stop string split in the middle of a character */
        const char *s[] = {"\xe3\x80\x82\n"}, *p[] = {"\xe4\xbd\xa0\xe5\xa5\xbd\xe3\x80", "\x82", "\nafter"};
        run(s, 1, p, 3, out, &st);
        CHECK(!strcmp(out, "\xe4\xbd\xa0\xe5\xa5\xbd") && st == 0, "UTF-8 stop: '%s'", out);
    }
    { /* what is released at each step */
        const char *s[] = {"</s>"};
        stop_matcher m;
        stop_matcher_init(&m, s, 1, NULL, 0);
        size_t n;
        const char *r = stop_matcher_push(&m, "abc<", 4, &n);
        CHECK(n == 3 && !memcmp(r, "abc", 3), "releases before a possible start");
        r = stop_matcher_push(&m, "/x", 2, &n);
        CHECK(n == 3 && !memcmp(r, "</x", 3), "releases once it cannot match");
        r = stop_matcher_push(&m, "</", 2, &n);
        CHECK(n == 0, "holds '</'");
        r = stop_matcher_flush(&m, &n);
        CHECK(n == 2 && !memcmp(r, "</", 2), "flush releases the held text");
        stop_matcher_reset(&m);
        r = stop_matcher_push(&m, "x</s>y", 6, &n);
        CHECK(n == 1 && m.stopped == 0, "after reset");
        stop_matcher_free(&m);
    }
}

/* Randomized: small alphabet so that partial matches are frequent. */
static void test_random(void) {
    srand(3);
    const char alpha[] = "aab";
    int bad = 0;
    for (int trial = 0; trial < 3000 && !bad; trial++) {
        char stops_buf[3][6];
        const char *stops[3];
        int ns = 1 + rand() % 3;
        for (int i = 0; i < ns; i++) {
            int l = 1 + rand() % 4;
            for (int j = 0; j < l; j++) stops_buf[i][j] = alpha[rand() % 3];
            stops_buf[i][l] = 0;
            stops[i] = stops_buf[i];
        }
        char text[64];
        int tl = rand() % 40;
        for (int j = 0; j < tl; j++) text[j] = alpha[rand() % 3];
        text[tl] = 0;
        /* closed form: the occurrence of a stop string that ends first (then the longer one, then
         * the first listed) */
        int cut = tl, want_stop = -1;
        for (int e = 1; e <= tl && want_stop < 0; e++)
            for (int p = 0; p < e && want_stop < 0; p++)
                for (int i = 0; i < ns; i++)
                    if ((int)strlen(stops[i]) == e - p && !strncmp(text + p, stops[i], e - p)) { cut = p; want_stop = i; break; }
        stop_matcher m;
        stop_matcher_init(&m, stops, ns, NULL, 0);
        char got[64];
        size_t o = 0, n;
        int pos = 0;
        while (pos < tl && m.stopped < 0) {
            int step = 1 + rand() % 5;
            if (pos + step > tl) step = tl - pos;
            const char *r = stop_matcher_push(&m, text + pos, (size_t)step, &n);
            memcpy(got + o, r, n);
            o += n;
            pos += step;
            if (m.stopped < 0) {
                /* released so far = text[0..pos) minus its longest suffix that is a proper prefix of a stop */
                size_t want = (size_t)pos;
                for (int p = 0; p < pos; p++) {
                    int partial = 0;
                    for (int i = 0; i < ns; i++)
                        partial |= (size_t)(pos - p) < strlen(stops[i]) && !strncmp(stops[i], text + p, pos - p);
                    if (partial) { want = (size_t)p; break; }
                }
                if (o != want) { bad = 1; CHECK(o == want, "trial %d: released %zu of %d, want %zu", trial, o, pos, want); }
            }
        }
        if (m.stopped < 0) {
            const char *r = stop_matcher_flush(&m, &n);
            memcpy(got + o, r, n);
            o += n;
        }
        if (!bad && (o != (size_t)cut || memcmp(got, text, o) || m.stopped != want_stop)) {
            bad = 1;
            CHECK(0, "trial %d: text '%s' got %zu bytes (stop %d), want %d (stop %d)", trial, text, o, m.stopped, cut,
                  want_stop);
        }
        stop_matcher_free(&m);
    }
    CHECK(!bad, "randomized stop matching");
}

int main(void) {
    test_cases();
    test_random();
    return tu_finish("test_stop");
}
