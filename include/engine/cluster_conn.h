/* cluster_conn (prefix clconn_): one synchronous connection to Redis for
 * the cluster's client thread, plaintext or TLS (rediss://), with a
 * deadline per command. hiredis serves only as the RESP codec (Debian 12's
 * hiredis 0.14 has no TLS); the TLS session is src/net/tls.c's, so the
 * server's certificate is checked against the context's CA store and,
 * with TLS_VERIFY_HOST, the host name of the URL.
 *
 * Threads: a connection and its tls_ctx belong to one thread. */
#pragma once

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

struct tls_ctx;
struct clconn;

struct clconn_params {
  const char *host;    /* name or address; also the TLS name checked */
  uint16_t port;
  struct tls_ctx *tls; /* NULL: plaintext */
  unsigned timeout_ms; /* connect + handshake; then each command */
};

/* Connect (and shake hands). NULL with the reason in err: "connect:
 * Connection refused", "TLS handshake: certificate verify failed: ...". */
struct clconn *clconn_open(const struct clconn_params *p, char *err, size_t errlen);
/* Send one command and read its reply (freeReplyObject it). NULL with the
 * reason in err when the connection failed (time-out, closed, protocol or
 * TLS error): free it then. A Redis error reply is a reply. */
redisReply *clconn_command(struct clconn *k, int argc, const char **argv, const size_t *lens,
                           char *err, size_t errlen);
void clconn_free(struct clconn *k);
