/* suspend: the process-wide table of deliveries suspended by the operator
 * (impetus-ctl suspend/resume), part of the queue layer: the console
 * writes it, the workers read it when they load a queue's limits, and
 * neither calls the other.
 *
 * Threads: any (one mutex; read only when a queue's limits are reloaded,
 * never per message). */
#pragma once

#include <stdbool.h>

#define SUSPEND_MAX 256 /* suspended (binding, domain) entries */

/* Add (on) or remove (off) a suspension; "" means any binding / any
 * domain. 0, -ENOSPC (table full) or -ENOENT (off: not suspended). */
int suspend_set(const char *binding, const char *domain, bool on);
/* Is delivery suspended for (binding, domain)? binding NULL = "default". */
bool suspend_active(const char *binding, const char *domain);
