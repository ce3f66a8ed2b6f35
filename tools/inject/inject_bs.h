/* inject_bs.h: `impetus-inject -bs`, SMTP on standard input and output
 * (as `sendmail -bs`), for mailers that speak SMTP to a local program. */
#pragma once

/* Run one SMTP session on fds 0 and 1; each accepted message becomes a
 * durable pickup file in pickup_dir before its 250. Returns the exit code
 * (0, or 74 when the standard output fails). */
int inject_bs(const char *pickup_dir);
