/* sink_main.c owns impetus-sink's command line, its counters, the JSON
 * summary and the per-message outputs (--jsonl records, --save-dir files).
 * Writing a record or a saved message is synchronous file I/O: the sink is
 * a test tool, and those options are for tests that check content, not for
 * benchmarks. Single thread. */
#include "buf.h"
#include "sink.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "clock.h"
#include "impetus_build.h"
#include "panic.h"

struct sink g_sink;

/* --- counters --- */

static uint32_t hash_str(const char *s)
{
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

struct sink_counter *sink_table_get(struct sink_table *t, const char *key)
{
  struct sink_counter **b = &t->head[hash_str(key) % UTIL_ARRAY_LEN(t->head)];
  for (struct sink_counter *e = *b; e; e = e->next)
    if (!strcmp(e->key, key))
      return e;
  size_t kl = strlen(key);
  struct sink_counter *e = util_xcalloc(1, sizeof(*e) + kl + 1);
  memcpy(e->key, key, kl + 1);
  e->next = *b;
  *b = e;
  return e;
}

static void table_free(struct sink_table *t)
{
  for (size_t i = 0; i < UTIL_ARRAY_LEN(t->head); i++) {
    struct sink_counter *e = t->head[i];
    while (e) {
      struct sink_counter *n = e->next;
      free(e);
      e = n;
    }
    t->head[i] = NULL;
  }
}

double sink_rand(void)
{
  /* splitmix64: deterministic for a given --seed and order of events. */
  uint64_t z = (g_sink.rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* --- JSON output --- */

static void json_str(FILE *f, const char *s, size_t n)
{
  struct buf b = {0};
  buf_append(&b, "\"", 1);
  buf_append_json(&b, s, n, 1);
  buf_append(&b, "\"", 1);
  fwrite(buf_head(&b), 1, buf_avail(&b), f);
  buf_done(&b, 0);
}

static void json_table(FILE *f, const char *name, const struct sink_table *t, int conns)
{
  fprintf(f, ",\n  \"%s\": {", name);
  int first = 1;
  for (size_t i = 0; i < UTIL_ARRAY_LEN(t->head); i++)
    for (const struct sink_counter *e = t->head[i]; e; e = e->next) {
      fprintf(f, "%s", first ? "" : ", ");
      json_str(f, e->key, strlen(e->key));
      fprintf(f, ": %llu", (unsigned long long)(conns ? e->connections : e->messages));
      first = 0;
    }
  fprintf(f, "}");
}

void sink_print_summary(FILE *f)
{
  const struct sink_stats *st = &g_sink.st;
  double el = (double)(clock_mono_ns() - g_sink.start_ns) / 1e9;
  fprintf(f, "{\n  \"messages\": %llu,\n  \"recipients\": %llu,\n  \"bytes\": %llu,\n",
          (unsigned long long)st->messages, (unsigned long long)st->recipients,
          (unsigned long long)st->bytes);
  fprintf(f, "  \"connections\": %llu,\n  \"max_concurrent_connections\": %llu,\n",
          (unsigned long long)st->connections, (unsigned long long)st->max_concurrent);
  fprintf(f, "  \"current_connections\": %llu,\n  \"rejected_connections\": %llu,\n",
          (unsigned long long)st->concurrent, (unsigned long long)st->rejected_connections);
  fprintf(f, "  \"tls_handshakes\": %llu,\n  \"tls_resumed\": %llu,\n"
          "  \"auth_successes\": %llu,\n  \"auth_failures\": %llu,\n",
          (unsigned long long)st->tls_connections, (unsigned long long)st->tls_resumed,
          (unsigned long long)st->auth_ok,
          (unsigned long long)st->auth_failed);
  fprintf(f, "  \"messages_rejected\": %llu,\n  \"bdat_messages\": %llu,\n"
          "  \"bdat_chunks\": %llu,\n  \"elapsed_s\": %.3f",
          (unsigned long long)st->messages_rejected, (unsigned long long)st->bdat_messages,
          (unsigned long long)st->bdat_chunks, el);
  json_table(f, "per_user", &st->per_user, 0);
  json_table(f, "per_mechanism", &st->per_mech, 0);
  json_table(f, "per_source_address", &st->per_source, 0);
  json_table(f, "per_local_address", &st->per_local, 0);
  json_table(f, "connections_per_source_address", &st->per_source, 1);
  json_table(f, "connections_per_local_address", &st->per_local, 1);
  fprintf(f, ",\n  \"errors_injected\": {");
  int first = 1;
  uint64_t total = 0;
#define ITEM(fmt, a, v)                                                   \
  do {                                                                    \
    if (v) {                                                              \
      fprintf(f, "%s\"" fmt "\": %llu", first ? "" : ", ", a, (unsigned long long)(v)); \
      first = 0;                                                          \
      total += (v);                                                       \
    }                                                                     \
  } while (0)
  for (int i = 0; i < CMD__COUNT; i++) {
    const struct sink_fail *fl = &g_sink.o.fail[i];
    char kind[8];
    if (fl->code == 4 || fl->code == 5)
      snprintf(kind, sizeof(kind), "%dxx", fl->code);
    else
      snprintf(kind, sizeof(kind), "%d", fl->code);
    char key[48];
    snprintf(key, sizeof(key), "%s_%s", sink_cmd_names[i], kind);
    ITEM("%s", key, st->fail_injected[i]);
  }
  for (int i = 0; i < CMD__COUNT; i++)
    ITEM("disconnect_%s", sink_cmd_names[i], st->disconnect_injected[i]);
  for (int i = 1; i < HOSTILE__COUNT; i++)
    ITEM("hostile_%s", sink_hostile_names[i], st->hostile_injected[i]);
  for (int i = 0; i < CMD__COUNT; i++)
    ITEM("delay_%s", sink_cmd_names[i], st->delayed[i]);
#undef ITEM
  fprintf(f, "},\n  \"errors_injected_total\": %llu\n}\n", (unsigned long long)total);
}

void sink_print_stats_line(void)
{
  static uint64_t last_msgs, last_ns;
  uint64_t now = clock_mono_ns();
  const struct sink_stats *st = &g_sink.st;
  double dt = (double)(now - (last_ns ? last_ns : g_sink.start_ns)) / 1e9;
  fprintf(stderr,
          "impetus-sink: %.1fs messages=%llu rate=%.0f/s recipients=%llu bytes=%llu "
          "connections=%llu current=%llu rejected=%llu\n",
          (double)(now - g_sink.start_ns) / 1e9, (unsigned long long)st->messages,
          dt > 0 ? (double)(st->messages - last_msgs) / dt : 0.0,
          (unsigned long long)st->recipients, (unsigned long long)st->bytes,
          (unsigned long long)st->connections, (unsigned long long)st->concurrent,
          (unsigned long long)st->rejected_connections);
  last_msgs = st->messages;
  last_ns = now;
}

/* --- per-message outputs --- */

static void save_message(const struct sink_conn *c, uint64_t id, char *path, size_t pathlen)
{
  char tmp[PATH_MAX];
  snprintf(path, pathlen, "%s/%llu.eml", g_sink.o.save_dir, (unsigned long long)id);
  snprintf(tmp, sizeof(tmp), "%s/.%llu.eml.tmp", g_sink.o.save_dir, (unsigned long long)id);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "impetus-sink: %s: %s\n", tmp, strerror(errno));
    path[0] = 0;
    return;
  }
  size_t off = 0, n = buf_avail(&c->msg);
  while (off < n) {
    ssize_t w = write(fd, buf_head(&c->msg) + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      fprintf(stderr, "impetus-sink: %s: %s\n", tmp, strerror(errno));
      break;
    }
    off += (size_t)w;
  }
  close(fd);
  if (rename(tmp, path) < 0) {
    fprintf(stderr, "impetus-sink: %s: %s\n", path, strerror(errno));
    path[0] = 0;
  }
}

static void write_record(const struct sink_conn *c, uint64_t id, const char *path)
{
  FILE *f = g_sink.jsonl;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  fprintf(f, "{\"id\": %llu, \"time\": %ld.%06ld, \"mail_from\": ", (unsigned long long)id,
          (long)tv.tv_sec, (long)tv.tv_usec);
  const char *p = (const char *)buf_head(&c->env);
  const char *end = p + buf_avail(&c->env);
  size_t l = p < end ? strlen(p) : 0;
  json_str(f, p, l);
  p += p < end ? l + 1 : 0;
  fprintf(f, ", \"rcpts\": [");
  for (int first = 1; p < end; first = 0) {
    l = strlen(p);
    if (!first)
      fputs(", ", f);
    json_str(f, p, l);
    p += l + 1;
  }
  fprintf(f, "], \"size\": %llu, \"auth_user\": ", (unsigned long long)c->msg_bytes);
  if (c->user)
    json_str(f, c->user->name, strlen(c->user->name));
  else
    fputs("null", f);
  fputs(", \"auth_mech\": ", f);
  if (c->mech)
    json_str(f, c->mech, strlen(c->mech));
  else
    fputs("null", f);
  fprintf(f, ", \"tls\": %s, \"local\": ", c->tls_active ? "true" : "false");
  json_str(f, c->local, strlen(c->local));
  fputs(", \"peer\": ", f);
  json_str(f, c->peer, strlen(c->peer));
  if (path && path[0]) {
    fputs(", \"file\": ", f);
    json_str(f, path, strlen(path));
  }
  fputs("}\n", f);
  g_sink.jsonl_dirty = 1;
}

uint64_t sink_record_message(struct sink_conn *c)
{
  struct sink_stats *st = &g_sink.st;
  st->messages++;
  st->recipients += c->nrcpt;
  st->bytes += c->msg_bytes;
  if (c->src_ctr)
    c->src_ctr->messages++;
  if (c->local_ctr)
    c->local_ctr->messages++;
  if (c->user) {
    struct sink_user *u = &g_sink.o.users[c->user - g_sink.o.users];
    if (!u->msgs)
      u->msgs = sink_table_get(&st->per_user, u->name);
    u->msgs->messages++;
    sink_table_get(&st->per_mech, c->mech)->messages++;
  }
  uint64_t id = ++g_sink.msg_seq;
  char path[PATH_MAX];
  path[0] = 0;
  if (g_sink.o.save_dir)
    save_message(c, id, path, sizeof(path));
  if (g_sink.jsonl)
    write_record(c, id, path);
  return id;
}

/* --- command line --- */

static void usage(FILE *f)
{
  fprintf(f,
"usage: impetus-sink --listen ADDR:PORT [options]\n"
"An SMTP server for tests and benchmarks: accepts mail, counts it, and\n"
"injects faults on request. Runs in the foreground until SIGTERM or SIGINT,\n"
"then prints a JSON summary on stdout and exits 0. SIGUSR1 prints the\n"
"summary without exiting.\n"
"\n"
"Listening:\n"
"  --listen ADDR:PORT        plain SMTP listener (repeatable; [::1]:PORT for IPv6;\n"
"                            port 0 picks a free port, see --ready-file)\n"
"  --tls-listen ADDR:PORT    implicit-TLS listener (repeatable; needs --cert)\n"
"  --ready-file FILE         once listening, write 'plain|tls ADDR:PORT' lines and\n"
"                            'pid N' to FILE (atomically)\n"
"  --hostname NAME           name in the greeting and EHLO reply (impetus-sink)\n"
"  --max-connections N       connections beyond N get 421 and are closed (0: no limit)\n"
"  --max-message-size BYTES  SIZE advertised and enforced, 552 above (52428800)\n"
"  --max-recipients N        recipients per transaction, 452 above (1000)\n"
"\n"
"TLS and AUTH:\n"
"  --cert FILE --key FILE    certificate chain and key (PEM) for STARTTLS and --tls-listen\n"
"  --no-starttls             do not offer STARTTLS\n"
"  --auth-users FILE         credentials, one 'user:password' per line; enables AUTH\n"
"  --auth-mechs LIST         mechanisms offered, from PLAIN,LOGIN,XOAUTH2 (all)\n"
"                            XOAUTH2 checks the bearer token as the password\n"
"  --require-auth            MAIL without AUTH gets 530\n"
"  --require-tls-for-auth    AUTH only after TLS: not advertised before, 538 if tried\n"
"  --no-pipelining           do not advertise PIPELINING\n"
"  --no-chunking             do not advertise CHUNKING; BDAT gets 502 like an unknown command\n"
"\n"
"Fault injection (CMD is one of CONNECT EHLO HELO STARTTLS AUTH MAIL RCPT DATA\n"
"DOT BDAT RSET NOOP QUIT; DOT is the end of DATA and the reply to BDAT LAST, BDAT\n"
"the reply to a chunk that is not the last, CONNECT the greeting):\n"
"  --greeting-delay MS       wait before the greeting\n"
"  --latency CMD=MS          wait before replying to CMD (repeatable)\n"
"  --reply-delay MS          wait before every reply except the greeting\n"
"  --fail CMD=4xx:RATIO      answer CMD with a temporary failure in RATIO (0..1) of\n"
"  --fail CMD=5xx:RATIO      cases, or a permanent one; an exact code (451:0.5) also\n"
"                            works; for MAIL RCPT DATA DOT BDAT AUTH NOOP STARTTLS (repeatable)\n"
"  --seed N                  seed of the failure draws (1): runs are reproducible\n"
"  --disconnect-at CMD       answer CMD with 421 and close the connection\n"
"  --hostile MODE[:CMD]      misbehave on the reply to CMD (CONNECT); MODE is one of\n"
"                            garbage         a non-SMTP reply\n"
"                            endless-line    an endless line without CRLF (64 MiB), then close\n"
"                            continuations   10,000 continuation lines before the reply\n"
"                            split           every reply from then on one byte per send\n"
"                            drip            like split, one byte per --drip-interval\n"
"                            unsolicited     an extra reply line nobody asked for\n"
"                            reset-mid-data  TCP RST once message data arrives\n"
"                            tls-garbage     after the 220 to STARTTLS (or on a --tls-listen\n"
"                                            connection) bytes that are not TLS, then close\n"
"  --drip-interval MS        pause between dripped bytes (1000)\n"
"\n"
"Output:\n"
"  --save-dir DIR            write each accepted message (unstuffed, or BDAT's octets as\n"
"                            sent) to DIR/ID.eml\n"
"  --jsonl FILE              one JSON record per accepted message: id, time, mail_from,\n"
"                            rcpts, size, auth_user, auth_mech, tls, local, peer, file\n"
"  --stats-interval S        print a running count on stderr every S seconds\n"
"\n"
"Other:\n"
"  --io-fallback             single-shot accept and recv (tests the path for old kernels)\n"
"  --batch-wait US           with 8 or more connections open, sleep until as many completions\n"
"                            as connections (at most 64) or US microseconds passed (500;\n"
"                            0: wake for every completion): fewer wake-ups per message\n"
"  --help, --version\n");
}

static uint64_t parse_u64(const char *opt, const char *s)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-')
    util_fatal("sink: %s: not a number: '%s'", opt, s);
  return v;
}

static int parse_cmd(const char *opt, const char *s, size_t n)
{
  char name[32];
  if (n >= sizeof(name))
    util_fatal("sink: %s: unknown command '%.*s'", opt, (int)n, s);
  memcpy(name, s, n);
  name[n] = 0;
  int c = sink_cmd_lookup(name);
  if (c < 0 || c == CMD_OTHER)
    util_fatal("sink: %s: unknown command '%s'", opt, name);
  return c;
}

static void parse_fail(const char *s)
{
  const char *eq = strchr(s, '=');
  if (!eq)
    util_fatal("sink: --fail wants CMD=4xx:RATIO, got '%s'", s);
  int cmd = parse_cmd("--fail", s, (size_t)(eq - s));
  if (cmd != CMD_MAIL && cmd != CMD_RCPT && cmd != CMD_DATA && cmd != CMD_DOT && cmd != CMD_BDAT &&
      cmd != CMD_AUTH && cmd != CMD_NOOP && cmd != CMD_STARTTLS)
    util_fatal("sink: --fail: %s cannot fail (MAIL RCPT DATA DOT BDAT AUTH NOOP STARTTLS can)",
               sink_cmd_names[cmd]);
  const char *k = eq + 1;
  struct sink_fail f = {0, 1.0};
  if ((k[0] == '4' || k[0] == '5') && (k[1] == 'x' || k[1] == 'X'))
    f.code = k[0] - '0';
  else if (k[0] >= '4' && k[0] <= '5' && k[1] >= '0' && k[1] <= '9' && k[2] >= '0' && k[2] <= '9')
    f.code = (k[0] - '0') * 100 + (k[1] - '0') * 10 + (k[2] - '0');
  else
    util_fatal("sink: --fail: want 4xx, 5xx or a 4NN/5NN code in '%s'", s);
  const char *colon = strchr(k, ':');
  if ((colon ? (size_t)(colon - k) : strlen(k)) != 3)
    util_fatal("sink: --fail: bad code in '%s'", s);
  if (colon) {
    char *end;
    f.ratio = strtod(colon + 1, &end);
    if (*end || f.ratio < 0 || f.ratio > 1)
      util_fatal("sink: --fail: ratio must be within 0..1 in '%s'", s);
  }
  g_sink.o.fail[cmd] = f;
}

static void load_users(const char *path)
{
  FILE *f = fopen(path, "r");
  if (!f)
    util_fatal("sink: --auth-users %s: %s", path, strerror(errno));
  char line[4096];
  int ln = 0;
  while (fgets(line, sizeof(line), f)) {
    ln++;
    size_t n = strcspn(line, "\r\n");
    line[n] = 0;
    if (n == 0 || line[0] == '#')
      continue;
    char *colon = strchr(line, ':');
    if (!colon || colon == line)
      util_fatal("sink: %s:%d: want user:password", path, ln);
    *colon = 0;
    g_sink.o.users = util_xrealloc(g_sink.o.users, (g_sink.o.nusers + 1) * sizeof(struct sink_user));
    struct sink_user *u = &g_sink.o.users[g_sink.o.nusers++];
    u->name = util_xstrdup(line);
    u->pass = util_xstrdup(colon + 1);
    u->msgs = NULL;
    util_wipe(line, sizeof(line));
  }
  fclose(f);
}

/* Session tickets as Postfix's smtpd issues them (tls_server.c): one
 * TLS 1.3 ticket after a full handshake, and none after a resumption with
 * a ticket that is still good (the key callback answers "valid, do not
 * renew"), instead of OpenSSL's default of two after every handshake.
 * Keys: random per sink process. */
static unsigned char tk_name[16], tk_aes[32], tk_hmac[32];
static char tk_digest[] = "SHA256";

static int ticket_key_cb(SSL *s, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
{
  (void)s;
  OSSL_PARAM params[] = {
    OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, tk_hmac, sizeof(tk_hmac)),
    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, tk_digest, 0),
    OSSL_PARAM_construct_end(),
  };
  if (enc) {
    memcpy(key_name, tk_name, sizeof(tk_name));
    if (RAND_bytes(iv, 16) != 1 ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, tk_aes, iv) != 1 ||
        EVP_MAC_CTX_set_params(hctx, params) != 1)
      return -1;
    return 1;
  }
  if (memcmp(key_name, tk_name, sizeof(tk_name)) != 0)
    return 0; /* not ours (an earlier sink's): full handshake */
  if (EVP_MAC_CTX_set_params(hctx, params) != 1 ||
      EVP_DecryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, tk_aes, iv) != 1)
    return -1;
  return 1; /* good, and no new ticket */
}

static void setup_tls(void)
{
  const char *cert = g_sink.o.cert, *key = g_sink.o.key ? g_sink.o.key : g_sink.o.cert;
  if (!cert)
    return;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx)
    util_fatal("sink: SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
    util_fatal("sink: --cert %s: cannot load certificate", cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
    util_fatal("sink: --key %s: cannot load key", key);
  if (SSL_CTX_check_private_key(ctx) != 1)
    util_fatal("sink: --key %s does not match --cert %s", key, cert);
  if (RAND_bytes(tk_name, sizeof(tk_name)) != 1 || RAND_bytes(tk_aes, sizeof(tk_aes)) != 1 ||
      RAND_bytes(tk_hmac, sizeof(tk_hmac)) != 1)
    util_fatal("sink: RAND_bytes failed");
  SSL_CTX_set_num_tickets(ctx, 1);
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
  g_sink.ssl_ctx = ctx;
}

enum {
  O_LISTEN = 256, O_TLS_LISTEN, O_READY, O_HOSTNAME, O_MAXCONN, O_MAXSIZE, O_MAXRCPT, O_CERT,
  O_KEY, O_NOSTARTTLS, O_USERS, O_MECHS, O_REQAUTH, O_REQTLS, O_NOPIPE, O_NOCHUNK, O_GREETDELAY,
  O_LATENCY, O_REPLYDELAY, O_FAIL, O_SEED, O_DISCONNECT, O_HOSTILE, O_DRIP, O_SAVEDIR,
  O_JSONL, O_STATS, O_FALLBACK, O_BATCHWAIT, O_HELP, O_VERSION,
};

int main(int argc, char **argv)
{
  static const struct option lo[] = {
    {"listen", required_argument, NULL, O_LISTEN},
    {"tls-listen", required_argument, NULL, O_TLS_LISTEN},
    {"ready-file", required_argument, NULL, O_READY},
    {"hostname", required_argument, NULL, O_HOSTNAME},
    {"max-connections", required_argument, NULL, O_MAXCONN},
    {"max-message-size", required_argument, NULL, O_MAXSIZE},
    {"max-recipients", required_argument, NULL, O_MAXRCPT},
    {"cert", required_argument, NULL, O_CERT},
    {"key", required_argument, NULL, O_KEY},
    {"no-starttls", no_argument, NULL, O_NOSTARTTLS},
    {"auth-users", required_argument, NULL, O_USERS},
    {"auth-mechs", required_argument, NULL, O_MECHS},
    {"require-auth", no_argument, NULL, O_REQAUTH},
    {"require-tls-for-auth", no_argument, NULL, O_REQTLS},
    {"no-pipelining", no_argument, NULL, O_NOPIPE},
    {"no-chunking", no_argument, NULL, O_NOCHUNK},
    {"greeting-delay", required_argument, NULL, O_GREETDELAY},
    {"latency", required_argument, NULL, O_LATENCY},
    {"reply-delay", required_argument, NULL, O_REPLYDELAY},
    {"fail", required_argument, NULL, O_FAIL},
    {"seed", required_argument, NULL, O_SEED},
    {"disconnect-at", required_argument, NULL, O_DISCONNECT},
    {"hostile", required_argument, NULL, O_HOSTILE},
    {"drip-interval", required_argument, NULL, O_DRIP},
    {"save-dir", required_argument, NULL, O_SAVEDIR},
    {"jsonl", required_argument, NULL, O_JSONL},
    {"stats-interval", required_argument, NULL, O_STATS},
    {"io-fallback", no_argument, NULL, O_FALLBACK},
    {"batch-wait", required_argument, NULL, O_BATCHWAIT},
    {"help", no_argument, NULL, O_HELP},
    {"version", no_argument, NULL, O_VERSION},
    {NULL, 0, NULL, 0},
  };
  struct sink_opts *o = &g_sink.o;
  o->hostname = "impetus-sink";
  o->auth_mechs = AUTH_PLAIN | AUTH_LOGIN | AUTH_XOAUTH2;
  o->max_size = SINK_MAX_SIZE_DEFAULT;
  o->max_rcpts = SINK_MAX_RCPTS_DEFAULT;
  o->seed = 1;
  o->disconnect_at = -1;
  o->hostile_stage = CMD_CONNECT;
  o->drip_ms = 1000;
  o->batch_wait_us = 500;
  char **listen = util_xcalloc((size_t)argc, sizeof(char *));
  char **tls_listen = util_xcalloc((size_t)argc, sizeof(char *));
  size_t nlisten = 0, ntls = 0;
  const char *users_file = NULL;
  int reply_delay = -1;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (opt) {
    case O_LISTEN: listen[nlisten++] = optarg; break;
    case O_TLS_LISTEN: tls_listen[ntls++] = optarg; break;
    case O_READY: o->ready_file = optarg; break;
    case O_HOSTNAME: o->hostname = optarg; break;
    case O_MAXCONN: o->max_connections = (uint32_t)parse_u64("--max-connections", optarg); break;
    case O_MAXSIZE: o->max_size = parse_u64("--max-message-size", optarg); break;
    case O_MAXRCPT: o->max_rcpts = (uint32_t)parse_u64("--max-recipients", optarg); break;
    case O_CERT: o->cert = optarg; break;
    case O_KEY: o->key = optarg; break;
    case O_NOSTARTTLS: o->no_starttls = 1; break;
    case O_USERS: users_file = optarg; break;
    case O_MECHS: {
      o->auth_mechs = 0;
      char *dup = util_xstrdup(optarg), *save = NULL;
      for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcasecmp(t, "PLAIN")) o->auth_mechs |= AUTH_PLAIN;
        else if (!strcasecmp(t, "LOGIN")) o->auth_mechs |= AUTH_LOGIN;
        else if (!strcasecmp(t, "XOAUTH2")) o->auth_mechs |= AUTH_XOAUTH2;
        else util_fatal("sink: --auth-mechs: unknown mechanism '%s'", t);
      }
      free(dup);
      break;
    }
    case O_REQAUTH: o->require_auth = 1; break;
    case O_REQTLS: o->require_tls_for_auth = 1; break;
    case O_NOPIPE: o->no_pipelining = 1; break;
    case O_NOCHUNK: o->no_chunking = 1; break;
    case O_GREETDELAY: o->latency_ms[CMD_CONNECT] = (uint32_t)parse_u64("--greeting-delay", optarg); break;
    case O_LATENCY: {
      const char *eq = strchr(optarg, '=');
      if (!eq)
        util_fatal("sink: --latency wants CMD=MS, got '%s'", optarg);
      int cmd = parse_cmd("--latency", optarg, (size_t)(eq - optarg));
      o->latency_ms[cmd] = (uint32_t)parse_u64("--latency", eq + 1);
      break;
    }
    case O_REPLYDELAY: reply_delay = (int)parse_u64("--reply-delay", optarg); break;
    case O_FAIL: parse_fail(optarg); break;
    case O_SEED: o->seed = parse_u64("--seed", optarg); break;
    case O_DISCONNECT: o->disconnect_at = parse_cmd("--disconnect-at", optarg, strlen(optarg)); break;
    case O_HOSTILE: {
      const char *colon = strchr(optarg, ':');
      size_t ml = colon ? (size_t)(colon - optarg) : strlen(optarg);
      o->hostile = HOSTILE_NONE;
      for (int i = 1; i < HOSTILE__COUNT; i++)
        if (strlen(sink_hostile_names[i]) == ml && !strncmp(optarg, sink_hostile_names[i], ml))
          o->hostile = i;
      if (o->hostile == HOSTILE_NONE)
        util_fatal("sink: --hostile: unknown mode '%.*s'", (int)ml, optarg);
      if (colon)
        o->hostile_stage = parse_cmd("--hostile", colon + 1, strlen(colon + 1));
      break;
    }
    case O_DRIP: o->drip_ms = (uint32_t)parse_u64("--drip-interval", optarg); break;
    case O_SAVEDIR: o->save_dir = optarg; break;
    case O_JSONL: o->jsonl = optarg; break;
    case O_STATS: {
      char *end;
      o->stats_interval = strtod(optarg, &end);
      if (*end || o->stats_interval < 0)
        util_fatal("sink: --stats-interval: bad value '%s'", optarg);
      break;
    }
    case O_FALLBACK: o->io_fallback = 1; break;
    case O_BATCHWAIT: o->batch_wait_us = (uint32_t)parse_u64("--batch-wait", optarg); break;
    case O_HELP: case 'h': usage(stdout); free(listen); free(tls_listen); return 0;
    case O_VERSION:
      printf("impetus-sink %s\n", IMPETUS_VERSION);
      free(listen);
      free(tls_listen);
      return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "impetus-sink: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  if (nlisten + ntls == 0) {
    fprintf(stderr, "impetus-sink: need at least one --listen or --tls-listen\n");
    usage(stderr);
    return 2;
  }
  if (reply_delay >= 0)
    for (int i = CMD_EHLO; i < CMD__COUNT; i++)
      if (!o->latency_ms[i])
        o->latency_ms[i] = (uint32_t)reply_delay;
  if (users_file)
    load_users(users_file);
  if (ntls && !o->cert)
    util_fatal("sink: --tls-listen needs --cert and --key");
  if (o->save_dir && access(o->save_dir, W_OK) != 0)
    util_fatal("sink: --save-dir %s: %s", o->save_dir, strerror(errno));
  if (o->jsonl) {
    g_sink.jsonl = fopen(o->jsonl, "a");
    if (!g_sink.jsonl)
      util_fatal("sink: --jsonl %s: %s", o->jsonl, strerror(errno));
  }
  setup_tls();
  g_sink.rng = o->seed;
  g_sink.start_ns = clock_mono_ns();
  g_sink.greeting_len = (size_t)snprintf(g_sink.greeting, sizeof(g_sink.greeting),
                                         "220 %.200s ESMTP impetus-sink\r\n", o->hostname);

  sink_io_run(listen, nlisten, tls_listen, ntls);

  sink_print_summary(stdout);
  fflush(stdout);
  if (g_sink.jsonl)
    fclose(g_sink.jsonl);
  SSL_CTX_free(g_sink.ssl_ctx);
  table_free(&g_sink.st.per_user);
  table_free(&g_sink.st.per_mech);
  table_free(&g_sink.st.per_source);
  table_free(&g_sink.st.per_local);
  for (size_t i = 0; i < o->nusers; i++) {
    free(o->users[i].name);
    util_wipe(o->users[i].pass, strlen(o->users[i].pass));
    free(o->users[i].pass);
  }
  free(o->users);
  free(listen);
  free(tls_listen);
  return 0;
}
