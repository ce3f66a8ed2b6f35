/* ctl_internal.h: between ctl.c (the console's commands and the metrics
 * page) and ctlsrv.c (the control thread's event loop that serves them).
 * Control thread only. */
#pragma once

#include "ctl.h"

struct buf;

#define CTL_IO_TIMEOUT_MS 2000 /* to send a request; of silence while answered */
#define CTLSRV_CLIENTS_MAX 512 /* connections held at once (both sockets) */

/* Answer one console request line (without its LF): "OK\n" or "ERR\n"
 * and the body are appended to out. */
void ctl_answer(char *line, struct buf *out);
/* Answer one HTTP request (its first line at least): the whole response,
 * status line and headers included, is appended to out. */
void ctl_http_answer(const char *req, struct buf *out);
/* Once a second: the delivery-rate sample. */
void ctl_tick(void);

/* Serve both listening sockets (http_fd may be -1) until stop_fd becomes
 * readable. */
void ctlsrv_run(int stop_fd, int ctl_fd, int http_fd);
