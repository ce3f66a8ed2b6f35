/* clock: monotonic and wall time in one place, so tests can see where
 * time enters. Protocol code never calls these; it is handed the time. */
#pragma once

#include <stdint.h>

/* Monotonic nanoseconds (CLOCK_MONOTONIC). */
uint64_t clock_mono_ns(void);
/* Wall-clock milliseconds since the epoch (CLOCK_REALTIME). */
uint64_t clock_wall_ms(void);
