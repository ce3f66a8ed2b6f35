/* fifo: a singly-linked first-in first-out queue of any struct with a
 * `next` pointer, kept as a head and a tail pointer that the caller owns
 * (both NULL: empty). Macros, so one rule serves every element type. No
 * locking (the caller holds whatever lock guards head and tail); never
 * allocates. */
#pragma once

/* Append it (its next is cleared). */
#define FIFO_PUSH(head, tail, it)                                                                  \
  do {                                                                                             \
    (it)->next = NULL;                                                                             \
    if (tail)                                                                                      \
      (tail)->next = (it);                                                                         \
    else                                                                                           \
      (head) = (it);                                                                               \
    (tail) = (it);                                                                                 \
  } while (0)

/* Take the first element into out (the queue must not be empty). */
#define FIFO_POP(head, tail, out)                                                                  \
  do {                                                                                             \
    (out) = (head);                                                                                \
    (head) = (out)->next;                                                                          \
    if (!(head))                                                                                   \
      (tail) = NULL;                                                                               \
  } while (0)
