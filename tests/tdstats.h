/* tdstats.h - statistics shared by the tests that check sampling rules are exact. */
#ifndef TD_TDSTATS_H
#define TD_TDSTATS_H

#include "model/model.h"
#include "model/sampler.h"

/* Regularized upper incomplete gamma Q(a, x). */
double td_gamma_q(double a, double x);

/* Survival function of the chi-square distribution with df degrees of freedom at stat. */
double td_chi2_sf(double stat, int df);

/* Chi-square goodness of fit of counts obs[n] to probabilities expp[n] over total draws. Cells
 * with expected count < 5 are pooled; an observation in a zero-probability cell gives p = 0.
 * Returns the p-value; *df_out (optional) the degrees of freedom. */
double td_chisq_pvalue(const long *obs, const double *expp, int n, long total, int *df_out);

/* The exact joint distribution of the first two tokens v samples after prompt[np] under sp:
 * cells (t1s[i], t2s[i]) with probability pj[i], *n of them (every pair with p > 0; the arrays
 * need room for that many). The reference the exactness tests compare generated pairs with. */
void td_exact_joint2(td_model_t *v, const td_sampling_t *sp, const int32_t *prompt, int np,
                     int32_t *t1s, int32_t *t2s, double *pj, int *n);

#endif
