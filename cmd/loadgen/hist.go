package main

import (
	"math/bits"
	"sync/atomic"
)

// histSubBits sets the histogram's precision: 2^histSubBits buckets per power
// of two, so a recorded value is known to within 1/128 (0.8 %).
const histSubBits = 7

// histBuckets covers every non-negative int64.
const histBuckets = (64 - histSubBits) << histSubBits

// histogram is a fixed-size, log-linear (HDR-style) histogram of non-negative
// int64 values (nanoseconds here). record is lock-free and allocation-free, so
// every receiving goroutine can call it on each delivery; memory stays fixed
// however long a run is.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Int64
}

// histIndex maps v >= 0 to its bucket. Values below 2^(histSubBits+1) get a
// bucket each; above, each power of two is split into 2^histSubBits buckets.
func histIndex(v int64) int { return logIndex(v, histSubBits) }

// histBounds returns the smallest and largest value of bucket i.
func histBounds(i int) (lo, hi int64) { return logBounds(i, histSubBits) }

// logIndex maps v >= 0 to its bucket in a log-linear histogram with 2^sub
// buckets per power of two.
func logIndex(v int64, sub int) int {
	u := uint64(v)
	n := bits.Len64(u)
	if n <= sub+1 {
		return int(u)
	}
	shift := n - sub - 1
	m := u >> shift // in [2^sub, 2^(sub+1))
	return (shift+1)<<sub + int(m) - 1<<sub
}

// logBounds returns the smallest and largest value of bucket i of a
// log-linear histogram with 2^sub buckets per power of two.
func logBounds(i, sub int) (lo, hi int64) {
	if i < 2<<sub {
		return int64(i), int64(i)
	}
	shift := i>>sub - 1
	m := uint64(i&(1<<sub-1) + 1<<sub)
	lo = int64(m << shift)
	hi = int64((m+1)<<shift - 1)
	return lo, hi
}

// record adds one value; negative values count as 0.
func (h *histogram) record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// count returns how many values were recorded.
func (h *histogram) count() uint64 { return h.total.Load() }

// mean returns the mean of the recorded values, or 0.
func (h *histogram) mean() float64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// quantile returns an estimate of the q-quantile (0 < q <= 1): the midpoint of
// the bucket holding it, capped at the exact maximum. It returns 0 when empty.
// Call it once recording has stopped.
func (h *histogram) quantile(q float64) int64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			lo, hi := histBounds(i)
			v := lo + (hi-lo)/2
			if m := h.max.Load(); v > m {
				v = m
			}
			return v
		}
	}
	return h.max.Load()
}
