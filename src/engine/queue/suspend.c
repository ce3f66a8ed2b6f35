/* suspend.c owns the table of operator suspensions (binding, domain;
 * "" = any), behind one mutex.
 *
 * Must never: be read per message (workers read it when a queue's limits
 * are loaded; the console forces that reload); block longer than a scan
 * of SUSPEND_MAX entries.
 * Threads: any. */
#include "suspend.h"

#include "counters.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static pthread_mutex_t suspend_mu = PTHREAD_MUTEX_INITIALIZER;
static struct suspension {
  char binding[COUNTERS_NAME_MAX]; /* "" = any */
  char domain[COUNTERS_NAME_MAX];  /* "" = any */
} suspended[SUSPEND_MAX];
static unsigned nsuspended;

bool suspend_active(const char *binding, const char *domain)
{
  bool yes = false;
  if (binding == NULL)
    binding = "default";
  pthread_mutex_lock(&suspend_mu);
  for (unsigned i = 0; i < nsuspended && !yes; i++)
    yes = (!suspended[i].binding[0] || !strcmp(suspended[i].binding, binding)) &&
          (!suspended[i].domain[0] || !strcasecmp(suspended[i].domain, domain ? domain : ""));
  pthread_mutex_unlock(&suspend_mu);
  return yes;
}

int suspend_set(const char *binding, const char *domain, bool on)
{
  int rc = on ? 0 : -ENOENT;
  pthread_mutex_lock(&suspend_mu);
  unsigned i;
  for (i = 0; i < nsuspended; i++)
    if (!strcmp(suspended[i].binding, binding) && !strcasecmp(suspended[i].domain, domain))
      break;
  if (on && i == nsuspended) {
    if (nsuspended == SUSPEND_MAX) {
      rc = -ENOSPC;
    } else {
      snprintf(suspended[i].binding, sizeof suspended[i].binding, "%s", binding);
      snprintf(suspended[i].domain, sizeof suspended[i].domain, "%s", domain);
      nsuspended++;
    }
  } else if (!on && i < nsuspended) {
    suspended[i] = suspended[--nsuspended];
    rc = 0;
  }
  pthread_mutex_unlock(&suspend_mu);
  return rc;
}
