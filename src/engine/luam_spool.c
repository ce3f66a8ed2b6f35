/* luam_spool.c owns nothing: it adapts a spooled message to luam's message
 * operations. It never logs; a failed context load is remembered in the
 * handle (load_error) and the context reads as empty. Owner thread only. */
#include "luam_spool.h"

#include "conf.h"
#include "ctx.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

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

const struct luam_msg_ops luam_spool_ops = {
  .ctx_get = s_ctx_get,
  .ctx_set = s_ctx_set,
  .ctx_delete = s_ctx_delete,
  .mailfrom = s_mailfrom,
  .rcptto = s_rcptto,
  .header = NULL,
  .binding = s_binding,
  .set_binding = s_set_binding,
  .binding_group = s_binding_group,
  .set_binding_group = s_set_binding_group,
  .id = s_id,
  .size = s_size,
  .set_code = s_set_code,
};
