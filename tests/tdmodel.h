/* tdmodel.h - model fixtures shared by the tests that load a checkpoint on the CPU backend. */
#ifndef TD_TDMODEL_H
#define TD_TDMODEL_H

#include "kernels/backend.h"
#include "model/model.h"

/* Loads the checkpoint DIR on a new CPU backend of THREADS threads (REFERENCE: the plain C
 * kernels) into *BE and returns the model; on failure fails the current case naming DIR and the
 * error, and returns NULL with *BE destroyed. */
td_model_t *td_test_load_cpu(const char *dir, int threads, int reference, td_backend_t **be);

/* td_test_load_cpu of the fixture checkpoint td_test_data()/models/NAME ("qwen2", "dream"...). */
td_model_t *td_test_load_fixture(const char *name, int threads, int reference, td_backend_t **be);

#endif
