/* metrics.c owns the Prometheus text rendering: metric names, help texts,
 * the top-N cut of (binding, domain) labels. Never does I/O, never logs.
 * Control thread only. */
#include "metrics.h"

#include "adaptive.h"
#include "buf.h"
#include "counters.h"
#include "histo.h"
#include "luam.h"
#include "panic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pair {
  char binding[COUNTERS_NAME_MAX], domain[COUNTERS_NAME_MAX];
  uint64_t c[COUNTERS_KINDS], total;
};

struct pairs {
  struct pair *p;
  size_t n, cap;
};

static void collect(void *arg, const char *binding, const char *domain, const uint64_t c[])
{
  struct pairs *ps = arg;
  for (size_t i = 0; i < ps->n; i++)
    if (!strcmp(ps->p[i].binding, binding) && !strcmp(ps->p[i].domain, domain)) {
      for (unsigned k = 0; k < COUNTERS_KINDS; k++) {
        ps->p[i].c[k] += c[k];
        ps->p[i].total += c[k];
      }
      return;
    }
  UTIL_GROW(ps->p, ps->n, ps->cap, 64);
  struct pair *x = &ps->p[ps->n++];
  memset(x, 0, sizeof *x);
  snprintf(x->binding, sizeof x->binding, "%s", binding);
  snprintf(x->domain, sizeof x->domain, "%s", domain);
  for (unsigned k = 0; k < COUNTERS_KINDS; k++) {
    x->c[k] = c[k];
    x->total += c[k];
  }
}

static int by_total(const void *a, const void *b)
{
  const struct pair *x = a, *y = b;
  if (x->total != y->total)
    return x->total < y->total ? 1 : -1;
  int c = strcmp(x->domain, y->domain);
  return c ? c : strcmp(x->binding, y->binding);
}

/* Label values: escape backslash, quote and newline. */
static void label(struct buf *b, const char *s)
{
  for (; *s; s++) {
    if (*s == '\\' || *s == '"')
      buf_printf(b, "\\%c", *s);
    else if (*s == '\n')
      buf_append_str(b, "\\n");
    else
      buf_append(b, s, 1);
  }
}

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
  buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_render(struct buf *b, const struct metrics_input *in)
{
  /* recipients by outcome, binding, domain: top N pairs + other */
  struct pairs ps = {0};
  counters_foreach(collect, &ps);
  if (ps.n)
    qsort(ps.p, ps.n, sizeof *ps.p, by_total);
  struct pair other = {.binding = "other", .domain = "other"};
  bool have_other = false;
  for (size_t i = METRICS_TOP_N; i < ps.n; i++) {
    for (unsigned k = 0; k < COUNTERS_KINDS; k++)
      other.c[k] += ps.p[i].c[k];
    have_other = true;
  }
  size_t top = ps.n < METRICS_TOP_N ? ps.n : METRICS_TOP_N;
  head(b, "impetus_recipients_total", "counter",
       "Recipients by outcome (received, delivered, transient, permanent), binding and domain; "
       "pairs beyond the top " "20" " are summed under binding=\"other\",domain=\"other\".");
  for (unsigned k = 0; k < COUNTERS_KINDS; k++) {
    for (size_t i = 0; i <= top; i++) {
      const struct pair *x = i < top ? &ps.p[i] : &other;
      if (i == top && !have_other)
        break;
      buf_printf(b, "impetus_recipients_total{outcome=\"%s\",binding=\"", counters_kind_name(k));
      label(b, x->binding);
      buf_append_str(b, "\",domain=\"");
      label(b, x->domain);
      buf_printf(b, "\"} %llu\n", (unsigned long long)x->c[k]);
    }
  }
  free(ps.p);
  uint64_t t[COUNTERS_KINDS];
  counters_totals(t);
  head(b, "impetus_recipients_all_total", "counter", "Recipients by outcome, all bindings and domains.");
  for (unsigned k = 0; k < COUNTERS_KINDS; k++)
    buf_printf(b, "impetus_recipients_all_total{outcome=\"%s\"} %llu\n", counters_kind_name(k),
               (unsigned long long)t[k]);

  uint64_t ready = 0, deferred = 0, queues = 0, sessions = 0;
  for (unsigned i = 0; i < in->nworkers; i++) {
    ready += in->w[i].ready;
    deferred += in->w[i].deferred;
    queues += in->w[i].queues;
    sessions += in->w[i].sessions;
  }
  head(b, "impetus_queue_units", "gauge", "Delivery units queued: active (due now) or delayed.");
  buf_printf(b, "impetus_queue_units{state=\"active\"} %llu\n", (unsigned long long)ready);
  buf_printf(b, "impetus_queue_units{state=\"delayed\"} %llu\n", (unsigned long long)deferred);
  head(b, "impetus_queues", "gauge", "(binding, domain) queues known to the workers.");
  buf_printf(b, "impetus_queues %llu\n", (unsigned long long)queues);
  head(b, "impetus_connections", "gauge", "Outbound SMTP sessions open or opening.");
  buf_printf(b, "impetus_connections %llu\n", (unsigned long long)sessions);

  static const struct {
    const char *name, *help, *ok;
    enum counters_event ok_ev, failed_ev;
  } results[] = {
    {"impetus_connections_total", "Outbound connection attempts by result.", "opened",
     COUNTERS_CONN_OPENED, COUNTERS_CONN_FAILED},
    {"impetus_tls_total", "STARTTLS handshakes by result.", "ok", COUNTERS_TLS_OK,
     COUNTERS_TLS_FAILED},
    {"impetus_auth_total", "Outbound SMTP AUTH by result.", "ok", COUNTERS_AUTH_OK,
     COUNTERS_AUTH_FAILED},
  };
  for (size_t i = 0; i < UTIL_ARRAY_LEN(results); i++) {
    head(b, results[i].name, "counter", results[i].help);
    buf_printf(b, "%s{result=\"%s\"} %llu\n", results[i].name, results[i].ok,
               (unsigned long long)counters_event_total(results[i].ok_ev));
    buf_printf(b, "%s{result=\"failed\"} %llu\n", results[i].name,
               (unsigned long long)counters_event_total(results[i].failed_ev));
  }
  head(b, "impetus_lua_hook_calls_total", "counter", "Lua hook calls (a registered module has the hook).");
  for (unsigned h = 0; h < LUAM_HOOK_COUNT; h++)
    buf_printf(b, "impetus_lua_hook_calls_total{hook=\"%s\"} %llu\n", luam_hook_name(h),
               (unsigned long long)counters_lua_total(h, LUAM_EV_CALL));
  head(b, "impetus_lua_hook_errors_total", "counter",
       "Lua hook calls that failed (treated as CONT) by hook and cause: error (raised), budget "
       "(instruction or time budget exceeded), memory (state memory limit; state recreated).");
  for (unsigned h = 0; h < LUAM_HOOK_COUNT; h++)
    for (unsigned ev = LUAM_EV_ERROR; ev < LUAM_EV_COUNT; ev++)
      buf_printf(b, "impetus_lua_hook_errors_total{hook=\"%s\",cause=\"%s\"} %llu\n",
                 luam_hook_name(h), luam_event_name(ev),
                 (unsigned long long)counters_lua_total(h, ev));

  head(b, "impetus_spool_ingested_total", "counter", "Messages made durable from pickup.");
  buf_printf(b, "impetus_spool_ingested_total %llu\n", (unsigned long long)in->spool.ingested);
  head(b, "impetus_spool_rejected_total", "counter", "Pickup files moved to bad/.");
  buf_printf(b, "impetus_spool_rejected_total %llu\n", (unsigned long long)in->spool.rejected);
  head(b, "impetus_spool_batches_total", "counter", "Ingest rounds (group commits) that made messages durable.");
  buf_printf(b, "impetus_spool_batches_total %llu\n", (unsigned long long)in->spool.batches);
  head(b, "impetus_spool_syncs_total", "counter", "fsync/fdatasync/syncfs calls of the spool.");
  buf_printf(b, "impetus_spool_syncs_total %llu\n", (unsigned long long)in->spool.syncs);
  head(b, "impetus_spool_sync_seconds", "histogram",
       "Duration of each fsync/fdatasync/syncfs call of the spool (ingest and queue updates).");
  const struct histo_snap *hs = &in->spool.sync_latency;
  for (unsigned i = 0; i < HISTO_BUCKETS; i++)
    buf_printf(b, "impetus_spool_sync_seconds_bucket{le=\"%g\"} %llu\n",
               (double)histo_bounds_ns[i] / 1e9, (unsigned long long)hs->le[i]);
  buf_printf(b, "impetus_spool_sync_seconds_bucket{le=\"+Inf\"} %llu\n",
             (unsigned long long)hs->le[HISTO_BUCKETS]);
  buf_printf(b, "impetus_spool_sync_seconds_sum %.9f\n", (double)hs->sum_ns / 1e9);
  buf_printf(b, "impetus_spool_sync_seconds_count %llu\n", (unsigned long long)hs->le[HISTO_BUCKETS]);

  if (in->adaptive) { /* adaptive delivery (adaptive.c) */
    head(b, "impetus_adaptive_adjustments_total", "counter",
         "Adaptive adjustments made, by action (each also logged once to the paniclog).");
    for (unsigned k = 0; k < ADAPTIVE_ACT__COUNT; k++)
      buf_printf(b, "impetus_adaptive_adjustments_total{action=\"%s\"} %llu\n",
                 adaptive_action_name((enum adaptive_action)k),
                 (unsigned long long)adaptive_made_total(in->adaptive, (enum adaptive_action)k));
    head(b, "impetus_adaptive_in_force", "gauge", "Adaptive adjustments in force now.");
    buf_printf(b, "impetus_adaptive_in_force %zu\n", adaptive_in_force(in->adaptive));
  }

  head(b, "impetus_ring_ops_inflight", "gauge", "io_uring operations in flight per worker.");
  for (unsigned i = 0; i < in->nworkers; i++)
    buf_printf(b, "impetus_ring_ops_inflight{worker=\"%u\"} %llu\n", i,
               (unsigned long long)in->w[i].ring_inflight);
  head(b, "impetus_ring_timers", "gauge", "Armed timers per worker ring.");
  for (unsigned i = 0; i < in->nworkers; i++)
    buf_printf(b, "impetus_ring_timers{worker=\"%u\"} %llu\n", i,
               (unsigned long long)in->w[i].ring_timers);
  head(b, "impetus_workers_answered", "gauge", "1 when every worker answered this scrape in time.");
  buf_printf(b, "impetus_workers_answered %d\n", in->workers_answered ? 1 : 0);
  head(b, "impetus_worker_threads", "gauge", "Delivery worker threads.");
  buf_printf(b, "impetus_worker_threads %u\n", in->nworkers);
  head(b, "impetus_uptime_seconds", "gauge", "Seconds since the engine started.");
  buf_printf(b, "impetus_uptime_seconds %llu\n", (unsigned long long)in->uptime_s);
}
