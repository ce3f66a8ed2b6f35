/* dlist: an intrusive doubly-linked list (the node lives in the listed
 * struct). All-zero is an empty list and an unlinked node. No locking: a
 * list belongs to one thread (the worker's sessions and messages, a dq's
 * active queues). Never allocates. */
#pragma once

#include <stddef.h>

struct dlist_node {
  struct dlist_node *prev, *next;
};

struct dlist {
  struct dlist_node *head, *tail;
};

/* The struct of type `type` whose member `member` is node n. */
#define DLIST_ENTRY(n, type, member) ((type *)(void *)((char *)(n) - offsetof(type, member)))

static inline void dlist_push_back(struct dlist *l, struct dlist_node *n)
{
  n->next = NULL;
  n->prev = l->tail;
  if (l->tail)
    l->tail->next = n;
  else
    l->head = n;
  l->tail = n;
}

static inline void dlist_push_front(struct dlist *l, struct dlist_node *n)
{
  n->prev = NULL;
  n->next = l->head;
  if (l->head)
    l->head->prev = n;
  else
    l->tail = n;
  l->head = n;
}

/* Unlink n from a list kept as a bare head pointer (*headp) of structs
 * with their own prev and next fields; n's links are left as they were. */
#define DLIST_UNLINK_HEAD(headp, n)                                                                \
  do {                                                                                             \
    if ((n)->prev)                                                                                 \
      (n)->prev->next = (n)->next;                                                                 \
    else                                                                                           \
      *(headp) = (n)->next;                                                                        \
    if ((n)->next)                                                                                 \
      (n)->next->prev = (n)->prev;                                                                 \
  } while (0)

/* Unlink n (which must be on l). */
static inline void dlist_remove(struct dlist *l, struct dlist_node *n)
{
  if (n->prev)
    n->prev->next = n->next;
  else
    l->head = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    l->tail = n->prev;
  n->prev = n->next = NULL;
}
