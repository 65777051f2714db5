/* tdproc.h - helpers shared by the tests that run tandem's programs as real processes
 * (test_faults, test_selfspec, test_planned, test_dflash, test_fingerprint...). */
#ifndef TD_TDPROC_H
#define TD_TDPROC_H

#include <stddef.h>
#include <sys/types.h>

#include "bridge/pair.h"

/* Starts the worker program NAME (td_test_bin: "tandem-drafter", "tandem-verifier") as
 * `NAME --model MODEL --bind EP --threads 1 EXTRA...` with TD_LOG=error; EXTRA is a
 * NULL-terminated list of further arguments, or NULL for none (at most 8). Returns the child's
 * pid, or -1 when fork failed. */
pid_t td_test_spawn_worker(const char *name, const char *model, const char *ep,
                           const char *const *extra);

/* Sends SIG to the process PID and waits for it; nothing when pid <= 0. */
void td_test_stop(pid_t pid, int sig);

/* Removes DIR and everything below it (rm -rf); returns 0, or -1 (reported on stderr). */
int td_test_rmtree(const char *dir);

/* td_pair_open(PAIR, VDIR, EP, PO) again every 100 ms until it succeeds, at most TRIES times (a
 * worker that is still starting); returns TD_OK, or the last error (in ERR; PAIR closed). */
int td_test_pair_open_retry(td_pair_t *pair, const char *vdir, const char *ep,
                            const td_pair_opts_t *po, int tries, td_err_t *err);

/* td_test_run(CMD) again every 100 ms until it exits 0, at most TRIES times (a worker that is
 * still starting); returns the last exit status. */
int td_test_run_retry(const char *cmd, char *out, size_t cap, int tries);

/* Checks (as CHECK does, failing the current case) that the JSON outputs A and B of two
 * `tandem generate` runs parse and carry the same "tokens" array, printed longer than MIN_LEN
 * characters. */
void td_test_check_same_tokens(const char *a, const char *b, size_t min_len);

/* Flips the lowest bit of the byte FROM_END bytes before the end of DIR/NAME (a corrupted
 * checkpoint); returns 0, or -1 when the file cannot be opened or read. */
int td_test_flip_byte(const char *dir, const char *name, long from_end);

#endif
