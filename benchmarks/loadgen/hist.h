/* Log-linear latency histogram (HDR-style): exact below 64 ns, then 32 sub-buckets per power of
 * two (relative error <= 1/64 when reporting bucket midpoints).  Fixed size, no allocation. */
#ifndef RINGNET_LOADGEN_HIST_H
#define RINGNET_LOADGEN_HIST_H

#include <stdint.h>
#include <string.h>

#define RN_HIST_SUB_BITS 5u
#define RN_HIST_SUB (1u << RN_HIST_SUB_BITS)                        /* 32 */
#define RN_HIST_LINEAR (2u * RN_HIST_SUB)                           /* 64 exact buckets */
#define RN_HIST_BUCKETS (RN_HIST_LINEAR + (64u - 6u) * RN_HIST_SUB) /* 1920 */

typedef struct rn_hist {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t buckets[RN_HIST_BUCKETS];
} rn_hist;

static inline void rn_hist_reset(rn_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

static inline unsigned rn_hist_index(uint64_t v)
{
    if (v < RN_HIST_LINEAR)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 6 */
    unsigned sub = (unsigned)(v >> (e - RN_HIST_SUB_BITS)) - (unsigned)RN_HIST_SUB;
    return RN_HIST_LINEAR + (e - 6u) * (unsigned)RN_HIST_SUB + sub;
}

static inline uint64_t rn_hist_lower(unsigned idx, uint64_t *width)
{
    if (idx < RN_HIST_LINEAR) {
        *width = 1;
        return idx;
    }
    unsigned k = idx - RN_HIST_LINEAR;
    unsigned e = k / (unsigned)RN_HIST_SUB + 6u;
    uint64_t sub = k % (unsigned)RN_HIST_SUB;
    *width = (uint64_t)1 << (e - RN_HIST_SUB_BITS);
    return ((uint64_t)RN_HIST_SUB + sub) << (e - RN_HIST_SUB_BITS);
}

static inline void rn_hist_add(rn_hist *h, uint64_t v)
{
    h->count++;
    h->sum += v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->buckets[rn_hist_index(v)]++;
}

/* Value at quantile q (0..1): midpoint of the bucket holding the ceil(q*count)-th sample,
 * clamped to [min, max]. 0 when empty. */
static inline uint64_t rn_hist_quantile(const rn_hist *h, double q)
{
    if (h->count == 0)
        return 0;
    double t = q * (double)h->count;
    uint64_t target = (uint64_t)t;
    if ((double)target < t)
        target++;
    if (target < 1)
        target = 1;
    if (target > h->count)
        target = h->count;
    uint64_t cum = 0;
    for (unsigned i = 0; i < RN_HIST_BUCKETS; i++) {
        cum += h->buckets[i];
        if (cum >= target) {
            uint64_t w;
            uint64_t lo = rn_hist_lower(i, &w);
            uint64_t v = lo + w / 2;
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}

#endif
