/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test program for policy_filter_check(): on every exec, record its answer for policy
 * IDs 0..TPF_TEST_MAX_POLICY and the exec'ing task's cgroup, so the test can ask "what
 * did the filter say for a process in cgroup X about policy P?".
 *
 * Compiled with tpfilter.bpfsrc.cflags(pin_dir) plus -DTPF_TEST_MAX_POLICY=N.
 */
#include "policy_filter.h"

#ifndef TPF_TEST_MAX_POLICY
#define TPF_TEST_MAX_POLICY 4
#endif

struct check_key {
	u64 cgroup_id;
	u32 policy_id;
	u32 pad; /* explicit, so userspace and BPF agree on the 16-byte key */
};

/*
 * Value 1 = "does not apply", 2 = "applies", so that "no record" (0 / absent) cannot be
 * mistaken for a "false" answer. LRU: execs elsewhere on the machine must not fill it.
 */
BPF_TABLE("lru_hash", struct check_key, u8, check_results, 4096);

/*
 * sched_process_exec runs in the context of the task after exec, in its cgroup; a raw
 * tracepoint needs no tracepoint struct layout from the (older) kernel headers.
 */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	struct check_key key = {};
	u8 answer;

	key.cgroup_id = bpf_get_current_cgroup_id();
#pragma unroll
	for (u32 id = 0; id <= TPF_TEST_MAX_POLICY; id++) {
		key.policy_id = id;
		answer = policy_filter_check(id) ? 2 : 1;
		check_results.update(&key, &answer);
	}
	return 0;
}
