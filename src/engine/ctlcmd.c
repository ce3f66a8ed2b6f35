/* ctlcmd.c owns the console's command grammar (ctlcmd.h): which words
 * make a command and how many arguments each takes, and the scope words
 * of `config eval`. ctl.c dispatches only lines this accepts;
 * impetus-ctl checks before it connects; impetus --eval-config parses
 * with ctlcmd_eval_args.
 * Must never: do I/O, allocate, or know what a command does.
 * Threads: any (pure). */
#include "ctlcmd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char ctlcmd_usage[] =
  "  summary                              concurrency, queue sizes, counters, rates, uptime\n"
  "  mailq [-d DOMAIN] [-b BINDING] [-p PAGE] [-n PER_PAGE]   queued units, paged\n"
  "  showqueue [binding NAME] DOMAIN      one queue and its units\n"
  "  binding summary [NAME]               per binding: queues, connections, counters\n"
  "  domain NAME                          route, hosts, credentials (masked), queue\n"
  "  message details ID | message retry ID | message fail ID\n"
  "  flush domain NAME | flush binding NAME          retry delayed units now\n"
  "  suspend domain NAME | suspend binding NAME [domain NAME]\n"
  "  resume domain NAME | resume binding NAME [domain NAME]\n"
  "  config eval [binding_group G] [binding B] [domain D] OPTION\n"
  "  config reload                        like SIGHUP, after checking the file\n"
  "  adaptive [list] [binding B] [domain D | provider P]   adjustments in force\n"
  "  adaptive clear (all | [binding B] [domain D | provider P]) | adaptive rules\n"
  "  adaptive warmup [BINDING [AGE]]      bindings' warm-up ages (set one)\n"
  "  reopen logs                          like SIGUSR1 (log rotation)\n"
  "  cluster [FILTER]                     cluster-wide limits: Redis, nodes, caps, throttles\n"
  "  version | shutdown\n";

static const char *const verbs[] = {"summary", "mailq",   "showqueue", "binding", "domain",
                                    "message", "flush",   "suspend",   "resume",  "config",
                                    "reopen",  "version", "shutdown", "adaptive", "cluster"};

static int bad(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t n, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, n, fmt, ap);
  va_end(ap);
  return -EINVAL;
}

static bool is(const char *a, const char *w)
{
  return a && !strcasecmp(a, w);
}

/* Levenshtein distance of two short words, capped (for "did you mean"). */
static unsigned distance(const char *a, const char *b)
{
  size_t la = strlen(a), lb = strlen(b);
  if (la > 31 || lb > 31)
    return 99;
  unsigned row[32];
  for (size_t j = 0; j <= lb; j++)
    row[j] = (unsigned)j;
  for (size_t i = 1; i <= la; i++) {
    unsigned diag = row[0];
    row[0] = (unsigned)i;
    for (size_t j = 1; j <= lb; j++) {
      unsigned up = row[j];
      unsigned cost = (a[i - 1] | 0x20) == (b[j - 1] | 0x20) ? 0 : 1;
      unsigned best = diag + cost;
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* `words` (the command so far) takes exactly `k` words: any more is wrong */
static int no_more(int ac, char *const *av, int k, char *why, size_t n)
{
  if (ac <= k)
    return 0;
  return bad(why, n, "unexpected '%s' after '%s%s%s'", av[k], av[0], k > 1 ? " " : "",
             k > 1 ? av[1] : "");
}

static int need(int ac, char *const *av, int k, const char *what, char *why, size_t n)
{
  if (ac > k)
    return 0;
  return bad(why, n, "'%s%s%s' needs %s", av[0], k > 1 ? " " : "", k > 1 ? av[1] : "", what);
}

static int sub(char *const *av, const char *choices, char *why, size_t n)
{
  return bad(why, n, "unknown '%s %s': expected %s", av[0], av[1], choices);
}

int ctlcmd_eval_args(int argc, char *const *argv, struct ctlcmd_eval *out, char *why,
                     size_t whylen)
{
  memset(out, 0, sizeof *out);
  for (int i = 0; i < argc; i++) {
    const char **slot = is(argv[i], "binding_group") ? &out->group
                        : is(argv[i], "binding")     ? &out->binding
                        : is(argv[i], "domain")      ? &out->domain
                                                     : NULL;
    if (slot) {
      if (i + 1 >= argc)
        return bad(why, whylen, "'%s' needs a name", argv[i]);
      *slot = argv[++i];
    } else if (i + 1 == argc) {
      out->option = argv[i];
    } else {
      return bad(why, whylen, "unexpected '%s' (expected binding_group, binding or domain)",
                 argv[i]);
    }
  }
  if (out->option == NULL)
    return bad(why, whylen, "no OPTION: [binding_group G] [binding B] [domain D] OPTION");
  return 0;
}

/* A command whose second word must be `word`, `max` words in all. */
static int with_word(int ac, char *const *av, const char *word, int max, char *why, size_t n)
{
  char quoted[32];
  snprintf(quoted, sizeof quoted, "'%s'", word);
  int rc = need(ac, av, 1, quoted, why, n);
  if (rc < 0)
    return rc;
  return is(av[1], word) ? no_more(ac, av, max, why, n) : sub(av, quoted, why, n);
}

static int check_mailq(int ac, char *const *av, char *why, size_t n)
{
  for (int i = 1; i < ac; i++) {
    const char *f = av[i];
    if (strcmp(f, "-d") && strcmp(f, "-b") && strcmp(f, "-p") && strcmp(f, "-n"))
      return bad(why, n, "mailq: unexpected '%s' (expected -d, -b, -p or -n)", f);
    if (i + 1 == ac)
      return bad(why, n, "mailq: '%s' needs a value", f);
    const char *v = av[++i];
    if (!strcmp(f, "-p") || !strcmp(f, "-n")) {
      char *end;
      unsigned long x = strtoul(v, &end, 10);
      if (!*v || *end || x == 0 || v[0] == '-')
        return bad(why, n, "mailq: '%s %s': a positive number is needed", f, v);
    }
  }
  return 0;
}

int ctlcmd_check(int ac, char *const *av, char *why, size_t n)
{
  if (ac == 0)
    return bad(why, n, "no command");
  const char *v = av[0];
  int rc;
  if (is(v, "summary") || is(v, "version") || is(v, "shutdown"))
    return no_more(ac, av, 1, why, n);
  if (is(v, "cluster"))
    return no_more(ac, av, 2, why, n);
  if (is(v, "reopen"))
    return with_word(ac, av, "logs", 2, why, n);
  if (is(v, "config")) {
    if ((rc = need(ac, av, 1, "'eval' or 'reload'", why, n)) < 0)
      return rc;
    if (is(av[1], "reload"))
      return no_more(ac, av, 2, why, n);
    if (!is(av[1], "eval"))
      return sub(av, "'eval' or 'reload'", why, n);
    struct ctlcmd_eval e;
    char inner[256];
    if (ctlcmd_eval_args(ac - 2, av + 2, &e, inner, sizeof inner) < 0)
      return bad(why, n, "config eval: %s", inner);
    return 0;
  }
  if (is(v, "binding"))
    return with_word(ac, av, "summary", 3, why, n);
  if (is(v, "domain")) {
    if ((rc = need(ac, av, 1, "a NAME", why, n)) < 0)
      return rc;
    return no_more(ac, av, 2, why, n);
  }
  if (is(v, "showqueue")) {
    if ((rc = need(ac, av, 1, "a DOMAIN", why, n)) < 0)
      return rc;
    if (is(av[1], "binding")) {
      if (ac < 4)
        return bad(why, n, "'showqueue binding' needs a binding NAME and a DOMAIN");
      return ac > 4 ? bad(why, n, "unexpected '%s' after the DOMAIN", av[4]) : 0;
    }
    return no_more(ac, av, 2, why, n);
  }
  if (is(v, "mailq"))
    return check_mailq(ac, av, why, n);
  if (is(v, "message")) {
    if ((rc = need(ac, av, 1, "'details', 'retry' or 'fail'", why, n)) < 0)
      return rc;
    if (!is(av[1], "details") && !is(av[1], "retry") && !is(av[1], "fail"))
      return sub(av, "'details', 'retry' or 'fail'", why, n);
    if ((rc = need(ac, av, 2, "a message ID", why, n)) < 0)
      return rc;
    return no_more(ac, av, 3, why, n);
  }
  if (is(v, "flush") || is(v, "suspend") || is(v, "resume")) {
    if ((rc = need(ac, av, 1, "'domain' or 'binding'", why, n)) < 0)
      return rc;
    if (!is(av[1], "domain") && !is(av[1], "binding"))
      return sub(av, "'domain' or 'binding'", why, n);
    if ((rc = need(ac, av, 2, "a NAME", why, n)) < 0)
      return rc;
    if (!is(v, "flush") && is(av[1], "binding") && ac > 3) {
      if (!is(av[3], "domain"))
        return bad(why, n, "unexpected '%s' (expected 'domain NAME')", av[3]);
      if (ac == 4)
        return bad(why, n, "'%s binding %s domain' needs a NAME", v, av[2]);
      return ac > 5 ? bad(why, n, "unexpected '%s'", av[5]) : 0;
    }
    return no_more(ac, av, 3, why, n);
  }
  if (is(v, "adaptive")) {
    /* the filters and values are checked by the engine (ctl_adaptive.c) */
    if (ac > 1 && !is(av[1], "list") && !is(av[1], "clear") && !is(av[1], "rules") &&
        !is(av[1], "warmup") && !is(av[1], "binding") && !is(av[1], "domain") &&
        !is(av[1], "provider"))
      return sub(av, "'list', 'clear', 'rules' or 'warmup'", why, n);
    return 0;
  }
  const char *best = NULL;
  unsigned bd = 3;
  for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
    unsigned d = distance(v, verbs[i]);
    if (d < bd) {
      bd = d;
      best = verbs[i];
    }
  }
  if (best)
    return bad(why, n, "unknown command '%s' (did you mean '%s'?)", v, best);
  return bad(why, n, "unknown command '%s'", v);
}
