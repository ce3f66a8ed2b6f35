/* ctl_out.c owns the console's answer emitter: one set of calls that
 * writes either JSON or the indented "key: value" text (an array's objects
 * one "- k=v k=v" line each), so a command handler says what it answers
 * once. It never does I/O and never sees a request; it only appends to
 * the buffer it is given. Control thread only. */
#include "ctl_internal.h"

#include "buf.h"

#include <string.h>

void ctl_json_str(struct buf *b, const char *s)
{
  buf_append_str(b, "\"");
  if (s)
    buf_append_json(b, s, strlen(s), 0);
  buf_append_str(b, "\"");
}

void ctl_out_key(struct ctl_out *o, const char *key)
{
  if (o->json) {
    if (o->comma[o->depth])
      buf_append_str(o->b, ",");
    o->comma[o->depth] = true;
    if (key) {
      ctl_json_str(o->b, key);
      buf_append_str(o->b, ":");
    }
    return;
  }
  /* text form: an unnamed value (an array element) is shown as "-" */
  if (o->row[o->depth]) {
    buf_printf(o->b, " %s=", key ? key : "-");
    return;
  }
  for (int i = 1; i < o->depth; i++)
    buf_append_str(o->b, "  ");
  buf_printf(o->b, "%s: ", key ? key : "-");
}

static void out_end_scalar(struct ctl_out *o)
{
  if (!o->json && !o->row[o->depth])
    buf_append_str(o->b, "\n");
}

void ctl_out_str(struct ctl_out *o, const char *key, const char *v)
{
  ctl_out_key(o, key);
  if (o->json)
    ctl_json_str(o->b, v ? v : "");
  else
    buf_append_str(o->b, v && *v ? v : "-");
  out_end_scalar(o);
}

void ctl_out_u64(struct ctl_out *o, const char *key, uint64_t v)
{
  ctl_out_key(o, key);
  buf_printf(o->b, "%llu", (unsigned long long)v);
  out_end_scalar(o);
}

void ctl_out_dbl(struct ctl_out *o, const char *key, double v)
{
  ctl_out_key(o, key);
  buf_printf(o->b, "%.1f", v);
  out_end_scalar(o);
}

void ctl_out_bool(struct ctl_out *o, const char *key, bool v)
{
  ctl_out_key(o, key);
  buf_append_str(o->b, v ? (o->json ? "true" : "yes") : (o->json ? "false" : "no"));
  out_end_scalar(o);
}

void ctl_out_open(struct ctl_out *o, const char *key, bool array)
{
  ctl_out_key(o, key);
  if (o->json)
    buf_append_str(o->b, array ? "[" : "{");
  else
    buf_append_str(o->b, "\n");
  o->depth++;
  o->comma[o->depth] = false;
  o->row[o->depth] = false;
}

void ctl_out_close(struct ctl_out *o, bool array)
{
  if (o->json)
    buf_append_str(o->b, array ? "]" : "}");
  o->depth--;
}

/* An object inside an array: one text line. */
void ctl_out_row_open(struct ctl_out *o)
{
  if (o->json) {
    ctl_out_key(o, NULL);
    buf_append_str(o->b, "{");
  } else {
    for (int i = 1; i < o->depth; i++)
      buf_append_str(o->b, "  ");
    buf_append_str(o->b, "-");
  }
  o->depth++;
  o->comma[o->depth] = false;
  o->row[o->depth] = true;
}

void ctl_out_row_close(struct ctl_out *o)
{
  o->row[o->depth] = false;
  o->depth--;
  buf_append_str(o->b, o->json ? "}" : "\n");
}
