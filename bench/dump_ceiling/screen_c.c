/* A measurement prototype of a compiled document cut + top-level screen, for bench/dump_ceiling.py.
 * Not used by the pipeline (ti_pipeline/sage_dump/screen.py is the screen it runs).
 *
 * run() walks a file_rep dump's bytes once: it cuts the BSON documents at their int32 lengths and makes
 * screen.py's file_rep decision (_decide_file_rep) for each. Outcome 0 (decode it fully) puts the
 * document's offset in out[]; 1 (response_code_not_1) and 2 (classification_not_imported) are counted.
 * A decision screen.py leaves to the rule on a stub of the fields read (a code that is not a whole
 * int32/int64/double, or the classification of a code-1 document) is looked up in a cache keyed on
 * those fields' bytes; an unseen key returns NEED_KEY with their offsets in the State, the caller runs
 * screen._outcome on the same stub and gives the outcome to answer(), and run() resumes.
 * deep_walk() is a full validating walk of given documents, every level: the cost of a C extractor.
 *
 *   gcc -O2 -shared -fPIC -o screen_c.so screen_c.c -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MIN_DOCUMENT 5
#define MAX_DOCUMENT (16 * 1024 * 1024 + 16 * 1024)
#define MAX_ELEMENTS 64
#define MAX_NAME 31
#define MIN_MS (-62135596800000LL)
#define MAX_MS (253402300799999LL)

enum { DONE, NEED_KEY, NEED_MORE, CORRUPT };

/* Every field 8 bytes, as bench/dump_ceiling.py declares them. */
typedef struct {
    const uint8_t *buf;
    int64_t *out;        /* offsets of the documents to decode: room for len / MIN_DOCUMENT */
    int64_t len, pos;    /* pos: the next document */
    int64_t n_out, n_docs, n_code_not_1, n_not_imported;
    /* the key of a NEED_KEY: which one ('C' code element, 'K' classification) and its parts (-1: absent) */
    int64_t key_kind, code_off, code_len, resp_off, resp_len, verdict_kind, cls_off, cls_len;
    int64_t pending;     /* -1, or the answer for the document at pos */
} State;

static inline int64_t rd32(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline int64_t rd64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline double rdf64(const uint8_t *p) { double v; memcpy(&v, p, 8); return v; }

/* Per type code, as screen.py's tables: known, fixed size or bytes before the counted part, counted,
 * least length, NUL last. */
static int8_t KNOWN[256], COUNTED[256], NUL_LAST[256];
static int64_t BASE[256], LEAST[256];
static int inited;

static void init_tables(void) {
    static const int fixed[][2] = {{1, 8}, {6, 0}, {7, 12}, {8, 1}, {9, 8}, {10, 0},
                                   {16, 4}, {17, 8}, {18, 8}, {19, 16}, {127, 0}, {255, 0}};
    static const int counted[][3] = {{2, 4, 1}, {3, 0, 5}, {4, 0, 5}, {5, 5, 0}};
    for (int i = 0; i < 256; i++) LEAST[i] = -(1LL << 31);
    for (unsigned i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        KNOWN[fixed[i][0]] = 1;
        BASE[fixed[i][0]] = fixed[i][1];
    }
    for (unsigned i = 0; i < sizeof counted / sizeof counted[0]; i++) {
        int c = counted[i][0];
        KNOWN[c] = COUNTED[c] = 1;
        BASE[c] = counted[i][1];
        LEAST[c] = counted[i][2];
        NUL_LAST[c] = c != 5;
    }
    inited = 1;
}

typedef struct { const char *name; int64_t len; int count; } Want;
typedef struct { int64_t at, value, end; int kind; } Found; /* at: the element's type byte */

/* Walk the elements of the container [s, e) as screen.walk does, recording the last element of each
 * name in want[] and how many there were. 0 when walked to its end, -1 when screen.py calls it bad. */
static int walk(const uint8_t *buf, int64_t buflen, int64_t s, int64_t e, Want *want, int nwant, Found *found) {
    int64_t p = s + 4, stop = e - 1;
    for (int i = 0; i < nwant; i++) want[i].count = 0;
    for (int n = 0; p < stop; n++) {
        if (n == MAX_ELEMENTS) return -1;
        int kind = buf[p];
        const uint8_t *name = buf + p + 1;
        int64_t lim = p + 2 + MAX_NAME < buflen ? p + 2 + MAX_NAME : buflen;
        const uint8_t *nul = memchr(name, 0, (size_t)(lim - (p + 1)));
        if (!nul || !KNOWN[kind] || name[0] == '$') return -1;
        int64_t name_len = nul - name, value = p + 2 + name_len, end;
        if (COUNTED[kind]) {
            if (value + 4 > stop) return -1;
            int64_t length = rd32(buf + value);
            end = value + BASE[kind] + length;
            if (length < LEAST[kind] || end > stop || (NUL_LAST[kind] && buf[end - 1])) return -1;
            if (kind == 5 && buf[value + 4] == 2) return -1; /* old binary: left to bson.decode */
        } else {
            end = value + BASE[kind];
            if (end > stop) return -1;
            if (kind == 8 && buf[value] > 1) return -1;
            if (kind == 9 && (rd64(buf + value) < MIN_MS || rd64(buf + value) > MAX_MS)) return -1;
        }
        for (int i = 0; i < nwant; i++) {
            if (want[i].len == name_len && memcmp(name, want[i].name, (size_t)name_len) == 0) {
                want[i].count++;
                found[i] = (Found){p, value, end, kind};
            }
        }
        p = end;
    }
    return p == stop ? 0 : -1;
}

/* The decision cache (screen.py's `decided`, kept for the whole walk): key bytes -> outcome. */
#define SLOTS 4096
typedef struct { uint64_t hash; uint8_t *key; size_t len; int outcome; } Slot;
static Slot table[SLOTS];
static int used;
static uint8_t *kbuf;
static size_t kcap, klen;

static void kput(const void *p, size_t n) {
    if (klen + n > kcap) {
        kcap = (klen + n) * 2 + 256;
        kbuf = realloc(kbuf, kcap);
    }
    memcpy(kbuf + klen, p, n);
    klen += n;
}

static void kpart(const uint8_t *buf, int64_t off, int64_t len) {
    uint32_t l = off < 0 ? 0xffffffffu : (uint32_t)len;
    kput(&l, 4);
    if (off >= 0) kput(buf + off, (size_t)len);
}

static uint64_t khash(void) { /* FNV-1a */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < klen; i++) h = (h ^ kbuf[i]) * 1099511628211ULL;
    return h;
}

static int lookup(uint64_t h) {
    for (size_t i = h % SLOTS;; i = (i + 1) % SLOTS) {
        if (!table[i].key) return -1;
        if (table[i].hash == h && table[i].len == klen && memcmp(table[i].key, kbuf, klen) == 0) return table[i].outcome;
    }
}

static void insert(uint64_t h, int outcome) {
    if (used >= SLOTS / 2) return; /* full: further keys are answered one document at a time */
    size_t i = h % SLOTS;
    while (table[i].key) i = (i + 1) % SLOTS;
    table[i] = (Slot){h, malloc(klen), klen, outcome};
    memcpy(table[i].key, kbuf, klen);
    used++;
}

void reset_cache(void) {
    for (int i = 0; i < SLOTS; i++) {
        free(table[i].key);
        table[i].key = NULL;
    }
    used = 0;
}

/* The caller's outcome for the key of its last NEED_KEY (still in kbuf). */
void answer(State *st, int outcome) {
    insert(khash(), outcome);
    st->pending = outcome;
}

/* The decision for the document [s, e): 0, 1, 2, or -1 = NEED_KEY (the key's parts in st). */
static int decide(State *st, int64_t s, int64_t e) {
    const uint8_t *buf = st->buf;
    Want top[3] = {{"value", 5, 0}, {"response", 8, 0}, {"vtClassifierV2Classification", 28, 0}};
    Want code[1] = {{"response_code", 13, 0}};
    Found tf[3], cf[1];
    if (walk(buf, st->len, s, e, top, 3, tf) < 0 || top[0].count != 1 || top[1].count > 1 || top[2].count > 1) return 0;
    if (tf[0].kind != 3 || walk(buf, st->len, tf[0].value, tf[0].end, code, 1, cf) < 0 || code[0].count != 1) return 0;
    int whole = 0, one = 0;
    if (cf[0].kind == 16) whole = 1, one = rd32(buf + cf[0].value) == 1;
    else if (cf[0].kind == 18) whole = 1, one = rd64(buf + cf[0].value) == 1;
    else if (cf[0].kind == 1) {
        double d = rdf64(buf + cf[0].value);
        whole = isfinite(d) && d == nearbyint(d);
        one = d == 1.0;
    }
    klen = 0;
    if (!whole) {
        kput("C", 1);
        kpart(buf, cf[0].at, cf[0].end - cf[0].at);
        int o = lookup(khash());
        if (o < 0) st->key_kind = 'C', st->code_off = cf[0].at, st->code_len = cf[0].end - cf[0].at;
        return o;
    }
    if (!one) return 1;
    /* code 1: the classification, from `response` and the ML verdict's `classification` */
    int64_t cls_off = -1, cls_len = 0, verdict_kind = top[2].count ? tf[2].kind : 0;
    if (verdict_kind == 3) {
        Want w[1] = {{"classification", 14, 0}};
        Found f[1];
        if (walk(buf, st->len, tf[2].value, tf[2].end, w, 1, f) < 0 || w[0].count > 1) return 0;
        if (w[0].count) cls_off = f[0].at, cls_len = f[0].end - f[0].at;
    }
    int64_t resp_off = top[1].count ? tf[1].at : -1, resp_len = top[1].count ? tf[1].end - tf[1].at : 0;
    uint8_t vk = (uint8_t)verdict_kind;
    kput("K", 1);
    kpart(buf, resp_off, resp_len);
    kput(&vk, 1);
    kpart(buf, cls_off, cls_len);
    int o = lookup(khash());
    if (o < 0) {
        st->key_kind = 'K', st->resp_off = resp_off, st->resp_len = resp_len, st->verdict_kind = verdict_kind;
        st->cls_off = cls_off, st->cls_len = cls_len;
    }
    return o;
}

/* Cut and decide from st->pos on; offsets in out[] are into buf. */
int run(State *st) {
    if (!inited) init_tables();
    const uint8_t *buf = st->buf;
    int64_t pos = st->pos;
    while (pos + 4 <= st->len) {
        int64_t length = rd32(buf + pos), end = pos + length;
        if (length < MIN_DOCUMENT || length > MAX_DOCUMENT) break;
        if (end > st->len) {
            st->pos = pos;
            return NEED_MORE;
        }
        if (buf[end - 1]) break;
        int o = st->pending >= 0 ? st->pending : decide(st, pos, end);
        st->pending = -1;
        if (o < 0) {
            st->pos = pos;
            return NEED_KEY;
        }
        if (o == 0) st->out[st->n_out++] = pos;
        else if (o == 1) st->n_code_not_1++;
        else st->n_not_imported++;
        st->n_docs++;
        pos = end;
    }
    st->pos = pos;
    return pos == st->len ? DONE : pos + 4 > st->len ? NEED_MORE : CORRUPT;
}

static int64_t deep(const uint8_t *buf, int64_t s, int64_t e, int depth) {
    int64_t p = s + 4, stop = e - 1, n = 0;
    if (depth > 100) return -1;
    while (p < stop) {
        int kind = buf[p];
        const uint8_t *name = buf + p + 1, *nul = memchr(name, 0, (size_t)(stop - (p + 1)));
        if (!nul || !KNOWN[kind]) return -1;
        int64_t value = p + 2 + (nul - name), end;
        if (COUNTED[kind]) {
            if (value + 4 > stop) return -1;
            int64_t length = rd32(buf + value);
            end = value + BASE[kind] + length;
            if (length < LEAST[kind] || end > stop || (NUL_LAST[kind] && buf[end - 1])) return -1;
            if (kind == 3 || kind == 4) {
                int64_t m = deep(buf, value, end, depth + 1);
                if (m < 0) return -1;
                n += m;
            }
        } else {
            end = value + BASE[kind];
            if (end > stop) return -1;
        }
        n++;
        p = end;
    }
    return p == stop ? n : -1;
}

/* Elements in the n documents at offs (all levels), or -1 - i when document i does not walk. */
int64_t deep_walk(const uint8_t *buf, const int64_t *offs, int64_t n) {
    if (!inited) init_tables();
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t m = deep(buf, offs[i], offs[i] + rd32(buf + offs[i]), 0);
        if (m < 0) return -1 - i;
        total += m;
    }
    return total;
}
