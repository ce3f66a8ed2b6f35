/* ctl_adaptive (prefix ctl_adaptive_): the console's `adaptive` commands,
 * served by the control thread (ctl.c hands the words over):
 *
 *   adaptive [list] [binding B] [domain D | provider P]   adjustments in force
 *   adaptive clear (all | [binding B] [domain D | provider P])  end them now
 *   adaptive rules                                        the rule set and sources
 *   adaptive warmup [BINDING [AGE]]                       bindings' warm-up ages
 *
 * Writes JSON members (inside the reply's object) or text to out; on a bad
 * request returns -EINVAL with the reason in err. Control thread only. */
#pragma once

#include <stdbool.h>

struct buf;
struct engine_shared;

int ctl_adaptive(struct engine_shared *sh, bool json, int ac, char **av, struct buf *out,
                 struct buf *err);
