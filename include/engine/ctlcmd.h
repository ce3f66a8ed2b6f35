/* ctlcmd: the console's command grammar, in one place for the engine
 * (which runs the commands) and impetus-ctl (which refuses a wrong
 * command line itself, so no running engine is needed to learn of a
 * typo), and the scope words of `config eval` / `impetus --eval-config`.
 * Pure functions: no I/O, no allocation. Any thread. */
#pragma once

#include <stddef.h>

/* The commands, one per line, for usage texts. */
extern const char ctlcmd_usage[];

/* Check a command line (the words after the options). 0 when it is one
 * of the console's commands with the right arguments; -EINVAL with a
 * reason naming the wrong word in why otherwise. */
int ctlcmd_check(int argc, char *const *argv, char *why, size_t whylen);

struct ctlcmd_eval {
  const char *group, *binding, *domain, *option;
};

/* Parse `[binding_group G] [binding B] [domain D] OPTION` (the scope words
 * in any order, case-insensitive). 0, or -EINVAL with the reason in why. */
int ctlcmd_eval_args(int argc, char *const *argv, struct ctlcmd_eval *out, char *why,
                     size_t whylen);
