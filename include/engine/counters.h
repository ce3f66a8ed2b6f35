/* counters: the engine's operating counters for the console (impetus-ctl)
 * and the Prometheus endpoint. Kept incrementally, never computed by
 * walking queues: each writer thread (a worker, or the ingest thread) owns
 * one slot and bumps relaxed atomics in it; readers sum the slots.
 *
 * Per-(binding, domain) counts live in a bounded table per slot
 * (COUNTERS_KEYS entries); once it is full, new pairs count under the
 * domain "other", so label cardinality is bounded whatever the traffic.
 *
 * Threads: counters_add/counters_event from the slot's one writer thread;
 * readers from any thread. Before counters_init (unit tests that run a
 * worker without the engine) every call is a no-op. */
#pragma once

#include <stddef.h>
#include <stdint.h>

enum counters_kind {
  COUNTERS_RECEIVED,  /* recipients accepted into the queue (R) */
  COUNTERS_DELIVERED, /* D */
  COUNTERS_TRANSIENT, /* T */
  COUNTERS_PERMANENT, /* P (including expiry and admin fail) */
  COUNTERS_KINDS
};

enum counters_event {
  COUNTERS_CONN_OPENED,   /* outbound connections attempted */
  COUNTERS_CONN_FAILED,   /* ... that failed before SMTP */
  COUNTERS_TLS_OK,        /* STARTTLS handshakes completed */
  COUNTERS_TLS_FAILED,    /* STARTTLS handshakes failed */
  COUNTERS_AUTH_OK,       /* AUTH accepted (235) */
  COUNTERS_AUTH_FAILED,   /* AUTH refused */
  COUNTERS_LUA_ERRORS,    /* Lua hook failures (errors, budget aborts, memory limit) */
  COUNTERS_EVENTS
};

#define COUNTERS_KEYS 512         /* (binding, domain) pairs per slot */
#define COUNTERS_LUA_HOOKS 16     /* Lua hooks counted (>= LUAM_HOOK_COUNT) */
#define COUNTERS_LUA_EVENTS 4     /* per hook: calls and failures (>= LUAM_EV_COUNT) */
#define COUNTERS_NAME_MAX 128     /* binding or domain bytes kept */

/* Make nslots slots (workers + 1 for the ingest thread). 0 or -ENOMEM. */
int counters_init(unsigned nslots);
/* Free the slots (after every writer has stopped). */
void counters_done(void);

/* Count n recipients of kind k for (binding, domain) in slot. Never fails;
 * a NULL binding counts as "default". */
void counters_add(unsigned slot, const char *binding, const char *domain, enum counters_kind k,
                  uint64_t n);
/* Count one event in slot. */
void counters_event(unsigned slot, enum counters_event e);

/* Count one Lua event (luam's enum luam_hook, enum luam_event) in slot;
 * every event but the call (0) also counts as COUNTERS_LUA_ERRORS. */
void counters_lua(unsigned slot, unsigned hook, unsigned ev);
/* Sum over slots of one (hook, event) pair. */
uint64_t counters_lua_total(unsigned hook, unsigned ev);

/* Totals over every slot. */
void counters_totals(uint64_t out[COUNTERS_KINDS]);
uint64_t counters_event_total(enum counters_event e);

/* Visit every (binding, domain) pair with its counts summed over slots
 * (a pair seen by several slots is visited once per slot: callers sum).
 * Reader side; any thread. */
void counters_foreach(void (*fn)(void *arg, const char *binding, const char *domain,
                                 const uint64_t c[COUNTERS_KINDS]),
                      void *arg);
/* Names for logs and metrics ("received", "conn_opened", ...). */
const char *counters_kind_name(enum counters_kind k);
const char *counters_event_name(enum counters_event e);
