/* tlskeys.h: the client certificates and keys (TLS_Certificate,
 * TLS_Key) read once at start-up, as root, before the engine leaves root,
 * so they may stay readable by root only. Keys are held in secmem. */
#pragma once

#include <stddef.h>

struct conf;

/* Read every file any scope names in TLS_Certificate or TLS_Key ("none"
 * excepted). Main thread, before the workers start. A file that cannot be
 * read is skipped (its name and reason go to `bad`, called once per
 * file): the worker then tries the path itself and logs its failure.
 * Returns the number of files read. */
int tlskeys_preload(struct conf *c, void (*bad)(void *arg, const char *path, const char *why),
                    void *arg);
/* The contents read for path (NUL-terminated; *len without the NUL), or
 * NULL when it was not read at start-up (for example a file first named
 * by a reload). Any thread, between preload and tlskeys_free. */
const char *tlskeys_get(const char *path, size_t *len);
/* Wipe and release everything (after the workers stopped). */
void tlskeys_free(void);
