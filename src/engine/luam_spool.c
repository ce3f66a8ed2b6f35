/* luam_spool.c owns nothing: it adapts a spooled message to luam's message
 * operations. It never logs; a failed context load is remembered in the
 * handle (load_error) and the context reads as empty. Owner thread only. */
#include "signing.h"
#include "luam_spool.h"

#include "conf.h"
#include "ctx.h"

#include "panic.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct ctx *dict(struct luam_spool_msg *h, int which)
{
  struct spool_msg *m = h->msg;
  if (!m->mess && !m->conn && h->sp) {
    int rc = spool_load_ctx(h->sp, m);
    if (rc < 0)
      h->load_error = rc;
  }
  return which == LUAM_CTX_CONN ? m->conn : m->mess;
}

static const char *s_ctx_get(void *arg, int which, const char *key, size_t *len)
{
  struct ctx *c = dict(arg, which);
  return c ? ctx_getn(c, key, strlen(key), len) : NULL;
}

static int s_ctx_set(void *arg, int which, const char *key, const char *val, size_t len)
{
  struct ctx *c = dict(arg, which);
  if (!c)
    return -EIO;
  return ctx_setn(c, key, strlen(key), val, len, 0);
}

static int s_ctx_delete(void *arg, int which, const char *key)
{
  struct ctx *c = dict(arg, which);
  return c && ctx_delete(c, key) == 0 ? 1 : 0;
}

static const char *s_mailfrom(void *arg)
{
  return ((struct luam_spool_msg *)arg)->msg->sender;
}

static const char *s_rcptto(void *arg, size_t i)
{
  struct spool_msg *m = ((struct luam_spool_msg *)arg)->msg;
  return i < m->nrcpt ? m->rcpt[i] : NULL;
}

/* Split the header block (up to the first empty line) into unfolded
 * name/value pairs, in place. */
static void parse_headers(struct luam_spool_msg *h, size_t len)
{
  char *p = h->hdr_block, *end = p + len;
  h->hdr = util_xcalloc(LUAM_SPOOL_MAX_HEADERS, sizeof *h->hdr);
  while (p < end && h->nhdr < LUAM_SPOOL_MAX_HEADERS) {
    if (*p == '\r' || *p == '\n')
      break; /* end of the header block */
    char *line_end = memchr(p, '\n', (size_t)(end - p));
    /* extend over folded continuation lines */
    while (line_end && line_end + 1 < end && (line_end[1] == ' ' || line_end[1] == '\t'))
      line_end = memchr(line_end + 1, '\n', (size_t)(end - line_end - 1));
    if (!line_end)
      break; /* a truncated last header is dropped */
    char *colon = memchr(p, ':', (size_t)(line_end - p));
    if (colon) {
      *colon = 0;
      char *v = colon + 1, *w = v;
      while (v < line_end && (*v == ' ' || *v == '\t'))
        v++;
      for (char *r = v; r < line_end; r++) /* unfold: drop CR and LF */
        if (*r != '\r' && *r != '\n')
          *w++ = *r;
      size_t vl = (size_t)(w - (colon + 1));
      *w = 0;
      h->hdr[h->nhdr].name = p;
      h->hdr[h->nhdr].value = colon + 1;
      h->hdr[h->nhdr].value_len = vl;
      h->nhdr++;
    }
    p = line_end + 1;
  }
}

static void load_headers(struct luam_spool_msg *h)
{
  h->hdr_loaded = 1;
  if (!h->sp)
    return;
  size_t want = h->msg->body_size < LUAM_SPOOL_MAX_HEADER_BYTES ? (size_t)h->msg->body_size
                                                                : LUAM_SPOOL_MAX_HEADER_BYTES;
  size_t flen;
  const uint8_t *file = spool_ingest_bytes(h->sp, h->msg, &flen);
  if (file) { /* the ingest hook: the pickup file is in memory */
    if (h->msg->body_off + want > flen)
      want = h->msg->body_off < flen ? flen - (size_t)h->msg->body_off : 0;
    h->hdr_block = util_xmalloc(want + 1);
    memcpy(h->hdr_block, file + h->msg->body_off, want);
    h->hdr_block[want] = 0;
    parse_headers(h, want);
    return;
  }
  int fd = spool_open_body(h->sp, h->msg);
  if (fd < 0)
    return;
  h->hdr_block = util_xmalloc(want + 1);
  size_t got = 0;
  while (got < want) {
    ssize_t n = pread(fd, h->hdr_block + got, want - got, (off_t)(h->msg->body_off + got));
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  spool_close_body(h->sp, fd);
  h->hdr_block[got] = 0;
  parse_headers(h, got);
}

static const char *s_header(void *arg, const char *name, size_t i, size_t *len)
{
  struct luam_spool_msg *h = arg;
  if (!h->hdr_loaded)
    load_headers(h);
  size_t seen = 0;
  for (size_t k = 0; k < h->nhdr; k++)
    if (strcasecmp(h->hdr[k].name, name) == 0 && seen++ == i) {
      *len = h->hdr[k].value_len;
      return h->hdr[k].value;
    }
  return NULL;
}

void luam_spool_msg_done(struct luam_spool_msg *h)
{
  if (!h)
    return;
  free(h->hdr_block);
  free(h->hdr);
  h->hdr_block = NULL;
  h->hdr = NULL;
  h->nhdr = 0;
  h->hdr_loaded = 0;
}

static const char *s_binding(void *arg)
{
  return ((struct luam_spool_msg *)arg)->msg->binding;
}

static const char *s_binding_group(void *arg)
{
  return ((struct luam_spool_msg *)arg)->msg->binding_group;
}

static int s_set_binding(void *arg, const char *name)
{
  struct luam_spool_msg *h = arg;
  if (h->conf && strcmp(name, "default") != 0 && conf_binding_id(h->conf, name) < 0)
    return -ENOENT;
  spool_msg_set_binding(h->msg, name);
  return 0;
}

static int s_set_binding_group(void *arg, const char *name)
{
  struct luam_spool_msg *h = arg;
  if (h->conf && strcmp(name, "default") != 0) {
    size_t n = conf_group_count(h->conf), i;
    for (i = 0; i < n; i++)
      if (strcmp(conf_group_name(h->conf, i), name) == 0)
        break;
    if (i == n)
      return -ENOENT;
  }
  spool_msg_set_binding_group(h->msg, name);
  return 0;
}

static const char *s_id(void *arg)
{
  struct luam_spool_msg *h = arg;
  return spool_msg_id_str(h->msg, h->id);
}

static size_t s_size(void *arg)
{
  return (size_t)((struct luam_spool_msg *)arg)->msg->body_size;
}

static void s_set_code(void *arg, int code, const char *text)
{
  struct luam_spool_msg *h = arg;
  h->code = code;
  snprintf(h->text, sizeof h->text, "%s", text);
}

/* The ingest hook only: the pickup file is in memory. */
static int s_dkim_sign(void *arg, const char *const *kv, size_t npairs, char *why, size_t whylen)
{
  struct luam_spool_msg *h = arg;
  size_t flen;
  const uint8_t *file = spool_ingest_bytes(h->sp, h->msg, &flen);
  if (!file || h->msg->body_off + h->msg->body_size > flen) {
    snprintf(why, whylen, "msys.validate.opendkim.sign works in the ingest hooks only");
    return -ENOTSUP;
  }
  return signing_lua(h->msg, file + h->msg->body_off, (size_t)h->msg->body_size, kv, npairs, why,
                     whylen);
}

const struct luam_msg_ops luam_spool_ops = {
  .ctx_get = s_ctx_get,
  .ctx_set = s_ctx_set,
  .ctx_delete = s_ctx_delete,
  .mailfrom = s_mailfrom,
  .rcptto = s_rcptto,
  .header = s_header,
  .binding = s_binding,
  .set_binding = s_set_binding,
  .binding_group = s_binding_group,
  .set_binding_group = s_set_binding_group,
  .id = s_id,
  .size = s_size,
  .set_code = s_set_code,
  .dkim_sign = s_dkim_sign,
};
