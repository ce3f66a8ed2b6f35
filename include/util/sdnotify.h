/* sdnotify: systemd's readiness protocol (sd_notify(3)) without libsystemd:
 * one datagram to $NOTIFY_SOCKET. Without NOTIFY_SOCKET (not started by
 * systemd with Type=notify) it does nothing. Any thread; never blocks. */
#pragma once

/* Send state lines, e.g. "READY=1\nSTATUS=running". 0, or -errno (which
 * the caller may ignore: systemd then times the start out). */
int sdnotify(const char *state);
