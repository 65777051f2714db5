/* sampler.h - the sampling API for the model layer and above: kernels/sampler.h (moved there so
 * that kernels/ includes nothing from model/; td_op_sample uses it as its reference). */
#ifndef TD_MODEL_SAMPLER_H
#define TD_MODEL_SAMPLER_H

#include "kernels/sampler.h"

#endif
