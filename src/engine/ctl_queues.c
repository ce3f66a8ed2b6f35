/* ctl_queues.c owns the console commands about queues and messages:
 * binding summary, domain (route, hosts, queues), mailq / showqueue
 * pages, message details, retry and flush, message fail, suspend and
 * resume. Each asks the workers through ctl_ask.c and answers through
 * ctl_out.c. Must never: walk messages to count them (counters.c keeps
 * totals; listings page and stop at the page), print a secret (the
 * AUTH password shows as ********), or block a worker. Control thread
 * only. */
#include "ctl_internal.h"

#include "buf.h"
#include "conf.h"
#include "counters.h"
#include "suspend.h"
#include "worker.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static void emit_qrow(struct ctl_out *o, const struct ctl_qrow *x)
{
  ctl_out_row_open(o);
  ctl_out_str(o, "binding", x->binding);
  ctl_out_str(o, "domain", x->domain);
  ctl_out_u64(o, "active", x->ready);
  ctl_out_u64(o, "delayed", x->deferred);
  ctl_out_u64(o, "connections", x->conns);
  ctl_out_u64(o, "idle", x->idle);
  ctl_out_bool(o, "suspended", x->suspended);
  ctl_out_row_close(o);
}

/* counters for a binding and/or domain */
struct csum {
  const char *binding, *domain;
  uint64_t c[COUNTERS_KINDS];
};

static void csum_add(void *arg, const char *binding, const char *domain, const uint64_t c[])
{
  struct csum *s = arg;
  if ((s->binding && strcmp(s->binding, binding)) || (s->domain && strcasecmp(s->domain, domain)))
    return;
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    s->c[k] += c[k];
}

static void emit_counts(struct ctl_out *o, const char *binding, const char *domain)
{
  struct csum s = {.binding = binding, .domain = domain};
  counters_foreach(csum_add, &s);
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    ctl_out_u64(o, counters_kind_name(k), s.c[k]);
}

/* Ask every worker op about what matches binding, domain and id (NULL:
 * any), at most limit rows each (0: CTL_PAGE_MAX). NULL, with the request
 * failed, when a worker did not answer in time. */
static struct ctl_wq *ask(struct ctl_req *r, enum ctl_wop op, const char *binding,
                          const char *domain, const char *id, size_t limit)
{
  struct ctl_wq *q = ctl_wq_new(r->sh, op);
  if (binding)
    snprintf(q->binding, sizeof q->binding, "%s", binding);
  if (domain)
    snprintf(q->domain, sizeof q->domain, "%s", domain);
  if (id)
    snprintf(q->id, sizeof q->id, "%s", id);
  if (limit)
    q->limit = limit;
  if (ctl_wq_run(q) < 0) {
    ctl_wq_unref(q);
    ctl_fail(r, "workers did not answer within %d ms", CTL_WORKER_WAIT_MS);
    return NULL;
  }
  return q;
}

/* How many units or queues the workers acted on; releases q. */
static size_t acted_on(struct ctl_wq *q)
{
  size_t n = 0;
  for (unsigned i = 0; i < q->nparts; i++)
    n += q->parts[i].hastened;
  ctl_wq_unref(q);
  return n;
}

int ctl_cmd_binding_summary(struct ctl_req *r, const char *name)
{
  struct ctl_wq *q = ask(r, CTL_WOP_QUEUES, name, NULL, NULL, 0);
  if (!q)
    return -EINVAL;
  /* group queue rows by binding */
  struct brow {
    const char *name;
    uint64_t queues, ready, deferred, conns;
  } *b = NULL;
  size_t nb = 0;
  struct conf *c = conf_ref(atomic_load(&r->sh->conf));
  size_t nconf = conf_binding_count(c);
  b = util_xcalloc(nconf + 1 + 64, sizeof *b);
  size_t cap = nconf + 1 + 64;
  if (!name || !strcmp(name, "default"))
    b[nb++].name = "default";
  for (size_t i = 0; i < nconf; i++) {
    const char *bn = conf_binding_name(c, (int)i);
    if (bn && strcmp(bn, "default") && (!name || !strcmp(name, bn)))
      b[nb++].name = bn;
  }
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nq; j++) {
      struct ctl_qrow *x = &q->parts[i].qrows[j];
      size_t k;
      for (k = 0; k < nb; k++)
        if (!strcmp(b[k].name, x->binding))
          break;
      if (k == nb) {
        if (nb == cap)
          continue;
        b[nb++].name = x->binding;
      }
      b[k].queues++;
      b[k].ready += x->ready;
      b[k].deferred += x->deferred;
      b[k].conns += x->conns;
    }
  if (name && nb == 0) {
    free(b);
    conf_unref(c);
    ctl_wq_unref(q);
    return ctl_fail(r, "no binding '%s'", name);
  }
  struct ctl_out *o = &r->o;
  ctl_out_open(o, "bindings", true);
  for (size_t k = 0; k < nb; k++) {
    ctl_out_row_open(o);
    ctl_out_str(o, "binding", b[k].name);
    int id = conf_binding_id(c, b[k].name);
    ctl_out_str(o, "group", id >= 0 ? conf_binding_group(c, id) : NULL);
    ctl_out_u64(o, "queues", b[k].queues);
    ctl_out_u64(o, "active", b[k].ready);
    ctl_out_u64(o, "delayed", b[k].deferred);
    ctl_out_u64(o, "connections", b[k].conns);
    emit_counts(o, b[k].name, NULL);
    ctl_out_bool(o, "suspended", suspend_active(b[k].name, ""));
    ctl_out_row_close(o);
  }
  ctl_out_close(o, true);
  free(b);
  conf_unref(c);
  ctl_wq_unref(q);
  return 0;
}

int ctl_cmd_domain(struct ctl_req *r, const char *binding, const char *name)
{
  struct ctl_wq *q = ask(r, CTL_WOP_QUEUES, binding, name, NULL, 0);
  if (!q)
    return -EINVAL;
  struct conf *c = conf_ref(atomic_load(&r->sh->conf));
  const struct conf_view *v = conf_view_get(c, binding, name);
  if (v == NULL)
    v = conf_view_get(c, NULL, name);
  struct ctl_out *o = &r->o;
  ctl_out_str(o, "domain", name);
  struct conf_addr gw = conf_addr(v, CONF_GATEWAY);
  char route[300];
  if (gw.host) {
    snprintf(route, sizeof route, "%s:%u", gw.host, gw.port ? gw.port : 25);
    ctl_out_str(o, "route", "gateway");
    ctl_out_open(o, "hosts", true);
    ctl_out_key(o, NULL);
    if (o->json)
      ctl_json_str(o->b, route);
    else
      buf_printf(o->b, "  - %s\n", route);
    ctl_out_close(o, true);
  } else {
    ctl_out_str(o, "route", "mx");
    struct ctl_wq *mq = ctl_wq_new(r->sh, CTL_WOP_MX);
    snprintf(mq->domain, sizeof mq->domain, "%s", name);
    int rc = ctl_wq_run(mq);
    ctl_out_open(o, "hosts", true);
    if (rc < 0) {
      ctl_out_key(o, NULL);
      if (o->json)
        ctl_json_str(o->b, "! DNS did not answer in time");
      else
        buf_append_str(o->b, "  - ! DNS did not answer in time\n");
    } else {
      buf_append(&mq->parts[0].mx, "", 1);
      char *save = NULL;
      for (char *l = strtok_r((char *)mq->parts[0].mx.data, "\n", &save); l;
           l = strtok_r(NULL, "\n", &save)) {
        ctl_out_key(o, NULL);
        if (o->json)
          ctl_json_str(o->b, l);
        else
          buf_printf(o->b, "  - %s\n", l);
      }
    }
    ctl_out_close(o, true);
    ctl_wq_unref(mq);
  }
  ctl_out_str(o, "auth_type", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_TYPE)); /* the table's word */
  ctl_out_str(o, "auth_user", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_USER));
  ctl_out_str(o, "auth_pass", conf_str(v, CONF_OUTBOUND_SMTP_AUTH_PASS) ? "********" : NULL);
  ctl_out_u64(o, "max_outbound_connections", (uint64_t)conf_int(v, CONF_MAX_OUTBOUND_CONNECTIONS));
  uint64_t ready = 0, deferred = 0, conns = 0;
  ctl_out_open(o, "queues", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nq; j++) {
      struct ctl_qrow *x = &q->parts[i].qrows[j];
      ready += x->ready;
      deferred += x->deferred;
      conns += x->conns;
      emit_qrow(o, x);
    }
  ctl_out_close(o, true);
  ctl_out_u64(o, "active", ready);
  ctl_out_u64(o, "delayed", deferred);
  ctl_out_u64(o, "connections", conns);
  emit_counts(o, binding, name);
  ctl_out_bool(o, "suspended", suspend_active(binding ? binding : "default", name));
  conf_unref(c);
  ctl_wq_unref(q);
  return 0;
}

static void fmt_time(char *out, size_t n, uint64_t ms)
{
  if (ms == 0) {
    snprintf(out, n, "now");
    return;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void emit_mrow(struct ctl_out *o, const struct ctl_mrow *m)
{
  char due[40], created[40];
  fmt_time(due, sizeof due, m->deferred ? m->due_ms : 0);
  fmt_time(created, sizeof created, m->created_ms);
  ctl_out_row_open(o);
  ctl_out_str(o, "id", m->id);
  ctl_out_str(o, "binding", m->binding);
  ctl_out_str(o, "domain", m->domain);
  ctl_out_str(o, "from", m->sender);
  ctl_out_str(o, "to", m->rcpt);
  ctl_out_u64(o, "recipients", m->nrcpt);
  ctl_out_u64(o, "attempts", m->attempts);
  ctl_out_str(o, "state", m->deferred ? "delayed" : "active");
  ctl_out_str(o, "next_attempt", due);
  ctl_out_str(o, "received", created);
  ctl_out_u64(o, "size", m->size);
  ctl_out_row_close(o);
}

/* mailq / showqueue: page `page` (from 1) of `per` rows. */
int ctl_cmd_list_units(struct ctl_req *r, const char *binding, const char *domain, const char *id,
                       size_t page, size_t per)
{
  if (per == 0 || per > CTL_PAGE_MAX)
    per = CTL_PAGE_MAX > 100 ? 100 : CTL_PAGE_MAX;
  if (page == 0)
    page = 1;
  size_t skip = (page - 1) * per;
  if (skip + per > 100000)
    return ctl_fail(r, "page too far: at most 100000 rows are listed; filter by domain or binding");
  struct ctl_wq *q = ask(r, CTL_WOP_UNITS, binding, domain, id, skip + per + 1);
  if (!q)
    return -EINVAL;
  struct ctl_out *o = &r->o;
  size_t seen = 0, shown = 0;
  bool more = false;
  ctl_out_u64(o, "page", page);
  ctl_out_u64(o, "per_page", per);
  ctl_out_open(o, "messages", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nm; j++, seen++) {
      if (seen < skip)
        continue;
      if (shown == per) {
        more = true;
        break;
      }
      emit_mrow(o, &q->parts[i].mrows[j]);
      shown++;
    }
  ctl_out_close(o, true);
  ctl_out_u64(o, "shown", shown);
  ctl_out_bool(o, "more", more);
  ctl_wq_unref(q);
  return 0;
}

int ctl_cmd_message_details(struct ctl_req *r, const char *id)
{
  struct ctl_wq *q = ask(r, CTL_WOP_UNITS, NULL, NULL, id, 0);
  if (!q)
    return -EINVAL;
  const struct ctl_mrow *first = NULL;
  for (unsigned i = 0; i < q->nparts && !first; i++)
    if (q->parts[i].nm)
      first = &q->parts[i].mrows[0];
  if (first == NULL) {
    ctl_wq_unref(q);
    return ctl_fail(r, "message %s is not queued (unknown, done, or in a session right now)", id);
  }
  struct ctl_out *o = &r->o;
  char created[40];
  fmt_time(created, sizeof created, first->created_ms);
  ctl_out_str(o, "id", id);
  ctl_out_str(o, "from", first->sender);
  ctl_out_str(o, "received", created);
  ctl_out_u64(o, "size", first->size);
  ctl_out_open(o, "units", true);
  for (unsigned i = 0; i < q->nparts; i++)
    for (size_t j = 0; j < q->parts[i].nm; j++)
      emit_mrow(o, &q->parts[i].mrows[j]);
  ctl_out_close(o, true);
  ctl_wq_unref(q);
  return 0;
}

int ctl_cmd_hasten(struct ctl_req *r, const char *binding, const char *domain, const char *id)
{
  struct ctl_wq *q = ask(r, CTL_WOP_HASTEN, binding, domain, id, 0);
  if (!q)
    return -EINVAL;
  ctl_out_u64(&r->o, "rescheduled", acted_on(q));
  return 0;
}

int ctl_cmd_message_fail(struct ctl_req *r, const char *id)
{
  struct ctl_wq *q = ask(r, CTL_WOP_FAIL, NULL, NULL, id, 0);
  if (!q)
    return -EINVAL;
  size_t n = acted_on(q);
  if (n == 0)
    return ctl_fail(r, "message %s has no queued unit (unknown, done, or in a session right now)",
                    id);
  ctl_out_str(&r->o, "id", id);
  ctl_out_u64(&r->o, "failed_units", n);
  return 0;
}

int ctl_cmd_suspend(struct ctl_req *r, bool on, const char *binding, const char *domain)
{
  int rc = suspend_set(binding ? binding : "", domain ? domain : "", on);
  if (rc == -ENOSPC)
    return ctl_fail(r, "too many suspensions (%d)", SUSPEND_MAX);
  if (rc == -ENOENT)
    return ctl_fail(r, "%s%s%s%s is not suspended from the console", binding ? "binding " : "",
                    binding ? binding : "", binding && domain ? " domain " : domain ? "domain " : "",
                    domain ? domain : "");
  struct ctl_wq *q = ask(r, CTL_WOP_LIMITS, binding, domain, NULL, 0);
  if (!q)
    return -EINVAL;
  size_t n = acted_on(q);
  ctl_out_str(&r->o, "binding", binding ? binding : "*");
  ctl_out_str(&r->o, "domain", domain ? domain : "*");
  ctl_out_bool(&r->o, "suspended", on);
  ctl_out_u64(&r->o, "queues", n);
  return 0;
}

