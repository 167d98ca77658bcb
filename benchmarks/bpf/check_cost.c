/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cost of policy_filter_check(), run by benchmarks/bench_scale.py with BPF_PROG_TEST_RUN
 * (the program runs once per call, in the calling task, so bpf_get_current_cgroup_id()
 * is the cgroup the benchmark process moved itself into).
 *
 * One run times TPF_BENCH_N calls between two bpf_ktime_get_ns() and stores the time and
 * the number of "applies" answers. TPF_BENCH_MODE:
 *   0  an empty loop (the overhead subtracted from the others)
 *   1  policy_filter_check() from bpf/policy_filter.h (what programs run)
 *   2  the design not chosen, for comparison: a descendant map (child cgroup -> container
 *      cgroup, as a cgroup_mkdir tracker would fill it; filled here by the benchmark)
 *      looked up after a miss of the exact lookup
 *   3  bpf_get_ns_current_pid_tgid() alone: what telling a container's own process from
 *      the node's adds to a match ("applies" counts the calls that found the node's
 *      PID namespace)
 */
#include "policy_filter.h"

#ifndef TPF_BENCH_N
#define TPF_BENCH_N 32
#endif

BPF_F_TABLE("hash", u64, u64, bench_descendants, 4096, BPF_F_NO_PREALLOC);
BPF_ARRAY(bench_out, u64, 2);

static __always_inline bool check_with_descendant_map(u32 policy_id)
{
	void *inner;
	u64 cgroup_id, *container;

	if (policy_id == 0)
		return true;
	inner = policy_filter_maps.lookup(&policy_id);
	if (!inner)
		return false;
	cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(inner, &cgroup_id))
		return true;
	container = bench_descendants.lookup(&cgroup_id);
	if (!container)
		return false;
	cgroup_id = *container;
	return bpf_map_lookup_elem(inner, &cgroup_id) != NULL;
}

int bench_checks(struct bpf_raw_tracepoint_args *ctx)
{
	u64 start, elapsed, hits = 0;
	u32 policy_id = TPF_BENCH_POLICY, k0 = 0, k1 = 1;
	int i;

	start = bpf_ktime_get_ns();
	for (i = 0; i < TPF_BENCH_N; i++) {
#if TPF_BENCH_MODE == 0
		asm volatile("" : "+r"(hits)); /* keeps the empty loop a loop */
#elif TPF_BENCH_MODE == 1
		hits += policy_filter_check(policy_id);
#elif TPF_BENCH_MODE == 3
		struct bpf_pidns_info ns;

		hits += !bpf_get_ns_current_pid_tgid(TPF_NODE_PIDNS_DEV, TPF_NODE_PIDNS_INO, &ns,
						     sizeof(ns));
#else
		hits += check_with_descendant_map(policy_id);
#endif
	}
	elapsed = bpf_ktime_get_ns() - start;
	bench_out.update(&k0, &elapsed);
	bench_out.update(&k1, &hits);
	return 0;
}
