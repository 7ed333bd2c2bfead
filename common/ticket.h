/* Session-ticket keys of a TLS server (RFC 5077): what lets a returning client skip the
 * public-key work of a full handshake.
 *
 * A ticket is the server's own state (here: what tls.c needs to resume a session),
 * sealed with ChaCha20-Poly1305 under the current ticket key and handed to the client,
 * which gives it back when it reconnects:
 *
 *   name[4] | nonce[12] | u16 length | sealed (u64 start | state) | tag[16]
 *
 * with name|nonce|length as the AEAD's additional data, integers big-endian.  `start`
 * is when the session's full handshake took place: a ticket opens only while start is
 * less than `lifetime` seconds ago, however often the session was resumed since, so a
 * client authenticates with its private key at least once per lifetime.
 *
 * Rotation: the current key seals for `lifetime` seconds, then a new one takes over; the
 * old one still opens tickets for another lifetime (every ticket it sealed expires
 * within that), then it is forgotten.  So at most two keys exist at a time.
 *
 * Persistence: with a key file the keys survive a restart, so clients resume with the
 * restarted server.  It is read at creation (made when missing) and rewritten at every
 * rotation, atomically, mode 0600; a file that others may read is refused.  Format:
 *   magic "FLTKEYS1" | u32 count | count x (name[4] | u64 created | key[32]) | u32 CRC-32
 * little-endian.  Whoever holds the file can open every ticket of its keys' lifetime:
 * keep it with the server's private key, never in version control.
 *
 * Threads: every function may be called from any thread (one mutex guards the keys;
 * sealing and opening work on a copy of a key outside it).  Ownership: the caller owns
 * the fl_ticket_keys and frees it after every connection that may use it is gone. */
#ifndef FL_TICKET_H
#define FL_TICKET_H

#include <stddef.h>
#include <stdint.h>

#define FL_TICKET_OVERHEAD (4 + 12 + 2 + 8 + 16) /* ticket bytes beyond the state */
#define FL_TICKET_MAX_LIFETIME (7u * 86400)        /* as TLS 1.3 caps it (RFC 8446) */

typedef struct fl_ticket_keys fl_ticket_keys;

/* Random bytes for keys and nonces (mbedTLS's f_rng signature); 0 on success. */
typedef int (*fl_ticket_rng)(void *ctx, unsigned char *out, size_t len);
/* Seconds since the epoch (tests give their own clock). */
typedef uint64_t (*fl_ticket_clock)(void *ctx);

/* lifetime_s from 1 to FL_TICKET_MAX_LIFETIME.  path NULL: keys in memory only.  A key
 * file that cannot be read, is malformed or may be read by others is an error naming
 * the file; a missing one is created.  clock NULL: the system clock. */
int fl_ticket_keys_create(const char *path, uint32_t lifetime_s, fl_ticket_rng rng,
                          void *rng_ctx, fl_ticket_clock clock, void *clock_ctx,
                          fl_ticket_keys **out, char *err, size_t errlen);
void fl_ticket_keys_free(fl_ticket_keys *k);
uint32_t fl_ticket_lifetime(const fl_ticket_keys *k);
/* The keys' clock: seconds since the epoch. */
uint64_t fl_ticket_now(const fl_ticket_keys *k);

/* Seals start and state[len] into out[cap] (FL_TICKET_OVERHEAD + len bytes, *olen),
 * rotating the key first when it is due.  FL_ETOOBIG when cap is short or len above
 * 65535 - 8; FL_EIO when no random bytes could be had. */
int fl_ticket_seal(fl_ticket_keys *k, uint64_t start, const uint8_t *state, size_t len,
                   uint8_t *out, size_t cap, size_t *olen);
/* Opens a ticket in place (untrusted bytes): *state points into buf, *start is the
 * session's start.  FL_EFORMAT: not one of our tickets, tampered with, or sealed by a
 * key already forgotten; FL_ETIMEDOUT: older than the lifetime (or from the future). */
int fl_ticket_open(fl_ticket_keys *k, uint8_t *buf, size_t len, uint64_t *start,
                   uint8_t **state, size_t *state_len);

#endif
