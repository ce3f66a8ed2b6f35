/* listener: Momentum's ESMTP_Listener, SMTP injection into the spool.
 * Sessions run the server core (smtps); accepted messages go to the spool
 * with spool_submit and are answered 250 only once the group commit that
 * holds them is durable. One thread owns every socket and session; the
 * spool's threads only hand completions back. See docs/listener.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct conf;
struct spool;
struct logs;
struct listener;
struct policy;

/* Bind the sockets of every enabled Listen of the ESMTP_Listener stanza
 * (call as root, before dropping privileges). NULL with err set on an
 * unusable configuration or address; NULL with err[0] == 0 when the
 * configuration has no listener. Keeps a reference to c. */
struct listener *listener_open(struct conf *c, struct spool *sp, const char *hostname,
                               struct logs *logs, char *err, size_t errlen);
/* Start the thread; 0 or -errno. policy (may be NULL): the Lua scripts;
 * the thread makes its own state of them for the inbound hooks, counted in
 * counters slot counters_slot. */
int listener_start(struct listener *l, struct policy *policy, unsigned counters_slot);
/* A reload (main thread): the listener thread takes c up between events:
 * Listen sockets added or removed, Peer / Relay_Hosts / limits for new
 * sessions (running ones keep theirs). Options read only at start (TLS,
 * Auth_Password_File, AuthLoginParameters) need a restart. Keeps a
 * reference to c. */
void listener_reload(struct listener *l, struct conf *c);
/* Stop accepting, end idle sessions with 421, let messages waiting for
 * their commit get their reply (up to a deadline), close everything and
 * join the thread. The spool must still be running. */
void listener_stop(struct listener *l);
/* Free; accepts NULL. */
void listener_free(struct listener *l);
/* Sessions now (for the console). */
size_t listener_sessions(const struct listener *l);

/* Proxy_Protocol: what a HAProxy PROXY header says. */
struct listener_proxy {
  bool local;                  /* LOCAL / UNKNOWN / a non-IP family: keep the real address */
  struct sockaddr_storage src; /* else the client */
};
/* Parse a PROXY header (version 1 text or version 2 binary, told apart by
 * the first byte) at the start of p[0..n). Returns its length (> 0), 0
 * when more bytes are needed, -EBADMSG when malformed (why says how).
 * Sans-I/O; any thread. */
int listener_proxy_parse(const uint8_t *p, size_t n, struct listener_proxy *out, const char **why);
